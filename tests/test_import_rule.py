"""The import rule of docs/design.md, "Import rule", checked on the import graph:

    front ends (mnv2_det/cli, tools/, benchmarks/)
      -> libraries {evaluation, export, inference, analysis, odapi}
      -> core {core, tasks}
      -> base {modeling, data, ops, configs, weights}

A module may import its own layer and the layers below it; nothing in the package
imports a front end. `mnv2_det/__init__.py` (registration of the backbone, task and
experiments: `import mnv2_det`) may be imported from anywhere. No TensorFlow here.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(ROOT, 'mnv2_det')
LAYERS = {'base': 0, 'core': 1, 'library': 2, 'front end': 3}
PACKAGE_LAYER = {
    'configs': 'base', 'data': 'base', 'modeling': 'base', 'ops': 'base',
    'core': 'core', 'tasks': 'core', 'weights': 'base',
    'evaluation': 'library', 'export': 'library', 'inference': 'library',
    'analysis': 'library', 'odapi': 'library',
    'cli': 'front end',
}


def _modules():
  """{dotted module name: file} of every module under mnv2_det/."""
  out = {}
  for folder, _, names in os.walk(PACKAGE):
    for name in names:
      if name.endswith('.py'):
        path = os.path.join(folder, name)
        rel = os.path.relpath(path, ROOT)[:-3].replace(os.sep, '.')
        out[rel[:-len('.__init__')] if rel.endswith('.__init__') else rel] = path
  return out


def _imports(path, modules):
  """Dotted mnv2_det modules `path` imports (at any depth of the file): for
  `from mnv2_det.x import y`, mnv2_det.x.y if that is a module, else mnv2_det.x."""
  tree = ast.parse(open(path, encoding='utf-8').read(), path)
  found = set()
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      found.update(a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      for a in node.names:
        child = f'{node.module}.{a.name}'
        found.add(child if child in modules else node.module)
  return {m for m in found if m == 'mnv2_det' or m.startswith('mnv2_det.')}


def layer_of(module: str):
  """The layer of a dotted mnv2_det module, None for the package root."""
  parts = module.split('.')
  if len(parts) < 2:
    return None
  if parts[1] not in PACKAGE_LAYER:
    raise KeyError(f'{module}: mnv2_det.{parts[1]} has no layer in PACKAGE_LAYER')
  return PACKAGE_LAYER[parts[1]]


def violations(modules):
  modules = dict(modules)
  problems = []
  for module, path in sorted(modules.items()):
    source = layer_of(module)
    if source is None or not path:
      continue
    for target in sorted(_imports(path, modules)):
      layer = layer_of(target)
      if layer is not None and LAYERS[layer] > LAYERS[source]:
        problems.append(f'{module} ({source}) imports {target} ({layer})')
  return problems


def test_every_package_has_a_layer():
  for module in _modules():
    layer_of(module)  # KeyError names a package missing from PACKAGE_LAYER


def test_imports_run_one_way():
  assert violations(_modules()) == []


def test_the_check_sees_an_upward_import(tmp_path):
  fake = tmp_path / 'ops_bad.py'
  fake.write_text('from mnv2_det.core import loading\nimport mnv2_det.cli.eval\n')
  assert violations({'mnv2_det.ops.bad': str(fake), 'mnv2_det.core.loading': '',
                     'mnv2_det.cli.eval': ''}) == [
                         'mnv2_det.ops.bad (base) imports mnv2_det.cli.eval (front end)',
                         'mnv2_det.ops.bad (base) imports mnv2_det.core.loading (core)']


@pytest.mark.parametrize('folder', ['tools', 'benchmarks'])
def test_front_ends_are_not_imported_by_the_package(folder):
  names = {n[:-3] for n in os.listdir(os.path.join(ROOT, folder)) if n.endswith('.py')}
  for module, path in _modules().items():
    text = open(path, encoding='utf-8').read()
    for name in names:
      assert f'from {folder} import {name}' not in text and f'import {folder}.' not in text, (
          f'{module} imports {folder}/{name}.py')
