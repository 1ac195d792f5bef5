"""The suite's own setup: the `slow` marker is registered and CI's plain
`python -m pytest -q tests` still runs the slow end-to-end tests."""

import configparser
import importlib
import os
import shlex

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SLOW_MODULES = ('test_e2e_shapes', 'test_multi_worker', 'test_sync_bn', 'test_train_tool')


def test_slow_marker_is_registered(pytestconfig):
  assert any(line.split(':')[0].strip() == 'slow'
             for line in pytestconfig.getini('markers'))


def test_default_options_do_not_deselect_slow_tests():
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  addopts = shlex.split(config.get('tool:pytest', 'addopts', fallback=''))
  assert not any(a.startswith('-m') for a in addopts), addopts  # no marker selection
  assert not any('slow' in a for a in addopts)


def test_two_workers_keep_each_file_together():
  """`python -m pytest -q tests` runs on 2 xdist workers, a test file per worker, so a
  module's fixtures (trained models, exports) are built once."""
  config = configparser.ConfigParser()
  config.read(os.path.join(ROOT, 'setup.cfg'))
  addopts = shlex.split(config.get('tool:pytest', 'addopts', fallback=''))
  assert addopts[addopts.index('-n') + 1] == '2' and '--dist' in addopts
  assert addopts[addopts.index('--dist') + 1] == 'loadfile'
  assert 'pytest-xdist' in config.get('options.extras_require', 'test')


@pytest.mark.parametrize('module', SLOW_MODULES)
def test_end_to_end_modules_are_marked_slow(module):
  imported = importlib.import_module(module)
  marks = imported.pytestmark if isinstance(imported.pytestmark, list) else [
      imported.pytestmark]
  assert 'slow' in [m.name for m in marks]
