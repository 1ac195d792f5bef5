"""Initialize a MobileNetV2 backbone from local weight files.

Three layouts are read, detected from the file itself (not its extension):

* `keras_h5`: a keras.applications MobileNetV2 weights file in the Keras 2 HDF5 layout that
  tf_keras `Model.save_weights('x.h5')` writes (root attr `layer_names`; one group per
  layer whose attr `weight_names` lists datasets like `Conv1/kernel:0`). The ImageNet
  `*_no_top.h5` files have this layout. Layers we do not have (the classifier
  `predictions`, deeper blocks of a truncated backbone) are ignored.
* `tf1_slim`: a TF1 checkpoint of slim's `mobilenet_v2` (`MobilenetV2/Conv/weights`, ...).
  The scope may be nested (the OD API writes `FeatureExtractor/MobilenetV2/...`); the prefix
  is found from the `.../MobilenetV2/Conv/weights` key.
* `tf2_checkpoint`: an object-based checkpoint of this backbone, written by
  `tf.train.Checkpoint(backbone=m)`, `tf.train.Checkpoint(model=m)`, `m.save_weights(prefix)`
  or a Model Garden trainer (which stores the detector under `model` with `model/backbone`).
  Variables are matched through the checkpoint's object graph exactly as
  `tf.train.Checkpoint.restore` matches them, so every backbone variable's entry is known
  before anything is assigned.

Keras and slim kernels share layouts: conv `[kh, kw, in, out]`, depthwise `[3, 3, C, 1]`, BN
vectors `[C]`. Loading is atomic: every variable is found and shape-checked first, then all
are assigned, so a failed load leaves the model unchanged.
"""

import os
import re
from typing import Callable, Dict, List, Optional, Tuple

from absl import logging
import h5py
import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_det.modeling import object_graph

FORMAT_KERAS_H5 = 'keras_h5'
FORMAT_TF1_SLIM = 'tf1_slim'
FORMAT_TF2 = 'tf2_checkpoint'

HDF5_SIGNATURE = b'\x89HDF\r\n\x1a\n'
CHECKPOINT_INDEX_SUFFIX = '.index'
_CHECKPOINT_DATA_RE = re.compile(r'\.data-\d+-of-\d+$')
OBJECT_GRAPH_KEY = object_graph.OBJECT_GRAPH_KEY

# Keras layers every MobileNetV2 weights file has (first conv, first block's projection).
KERAS_SIGNATURE_LAYERS = ('Conv1', 'expanded_conv_project')
# slim's scope and first variable; everything before `MobilenetV2/` is an outer scope.
SLIM_FIRST_CONV = 'MobilenetV2/Conv/weights'
SLIM_FIRST_CONV_SCOPE = 'Conv/weights'
# Where a TF2 checkpoint may hold the backbone (object-graph child names from its root).
TF2_ANCHORS = ((), ('backbone',), ('model',), ('model', 'backbone'))

# The one slim name table: variable suffix under an op scope -> Keras weight name. slim's
# V2_DEF sets batch_norm center=True, scale=True (research/slim/nets/mobilenet/mobilenet_v2.py),
# so a MobileNetV2 checkpoint always has gamma and beta; a missing one is an error.
SLIM_TO_KERAS = {
    'weights': 'kernel',
    'depthwise_weights': 'depthwise_kernel',
    'BatchNorm/gamma': 'gamma',
    'BatchNorm/beta': 'beta',
    'BatchNorm/moving_mean': 'moving_mean',
    'BatchNorm/moving_variance': 'moving_variance',
}
KERAS_TO_SLIM = {keras: slim for slim, keras in SLIM_TO_KERAS.items()}

# Keras layer names that are not `<conv>_BN` / plain convs of a block.
_KERAS_BN_TO_CONV = {'bn_Conv1': 'Conv1', 'Conv_1_bn': 'Conv_1'}
_KERAS_CONV_TO_SLIM = {'Conv1': 'Conv', 'Conv_1': 'Conv_1'}
_KERAS_BLOCK_RE = re.compile(r'(?:expanded_conv|block_(\d+))_(expand|depthwise|project)')

# (layer name, weight name) -> (name in the source file, value or None when absent).
_Lookup = Callable[[str, str, tf.Variable], Tuple[str, Optional[np.ndarray]]]


def keras_layer_to_slim_scope(layer_name: str) -> str:
  """slim op scope (under `MobilenetV2/`) of a keras.applications MobileNetV2 layer.

  `Conv1`/`bn_Conv1` -> `Conv`; `Conv_1`/`Conv_1_bn` -> `Conv_1`;
  `expanded_conv_{op}[_BN]` -> `expanded_conv/{op}`; `block_k_{op}[_BN]` ->
  `expanded_conv_k/{op}` (keras block k is slim `layer_{k+2}`), op in expand/depthwise/project.
  """
  conv = _KERAS_BN_TO_CONV.get(layer_name)
  if conv is None:
    conv = layer_name[:-len('_BN')] if layer_name.endswith('_BN') else layer_name
  if conv in _KERAS_CONV_TO_SLIM:
    return _KERAS_CONV_TO_SLIM[conv]
  match = _KERAS_BLOCK_RE.fullmatch(conv)
  if match is None:
    raise ValueError(f'backbone layer {layer_name!r} has no slim MobileNetV2 counterpart')
  block = int(match.group(1) or 0)
  op_scope = 'expanded_conv' if block == 0 else f'expanded_conv_{block}'
  return f'{op_scope}/{match.group(2)}'


def slim_variable_name(layer_name: str, weight_name: str, root: str = 'MobilenetV2/') -> str:
  """Full slim variable name of Keras weight `layer_name/weight_name` (e.g. `bn_Conv1/gamma`)."""
  if weight_name not in KERAS_TO_SLIM:
    raise ValueError(f'weight {layer_name}/{weight_name} has no slim counterpart; known '
                     f'weights are {sorted(KERAS_TO_SLIM)}')
  return f'{root}{keras_layer_to_slim_scope(layer_name)}/{KERAS_TO_SLIM[weight_name]}'


def load_backbone_weights(backbone: tf_keras.Model, path: str,
                          slim_root: Optional[str] = None) -> Dict[str, object]:
  """Loads local MobileNetV2 weights into every variable of `backbone`, atomically.

  `backbone` is a built `MobileNetV2Backbone` (or any model with keras.applications
  layer names; a truncated one reads only its layers). `path` is a `.h5` file, a
  checkpoint prefix (or its `.index` / `.data-*` file) or a folder (its latest
  checkpoint). `slim_root` picks one of several slim scopes (e.g.
  `'FeatureExtractor/MobilenetV2/'`; detected when None). Returns `{'format', 'path',
  'scope', 'num_variables' (assigned), 'num_unused' (file entries not used)}`.
  ValueError, with the model unchanged, when the path is missing or not MobileNetV2
  weights, or a variable is missing or misshaped (naming the first: its name in the
  file, our layer/weight and both shapes).
  """
  fmt, resolved = _resolve(path)
  targets = _target_variables(backbone)
  if fmt == FORMAT_KERAS_H5:
    lookup, scope, num_entries = _keras_h5_source(resolved)
  else:
    reader = _checkpoint_reader(resolved)
    keys = reader.get_variable_to_shape_map()
    roots = _slim_roots(keys)
    if roots:
      fmt = FORMAT_TF1_SLIM
      lookup, scope, num_entries = _slim_source(reader, keys, roots, slim_root, resolved)
    elif OBJECT_GRAPH_KEY in keys:
      fmt = FORMAT_TF2
      lookup, scope, num_entries = _tf2_source(backbone, targets, reader, resolved)
    else:
      raise ValueError(f'{resolved} is not a MobileNetV2 checkpoint: it has neither slim '
                       f'variables (no key ending in {SLIM_FIRST_CONV!r}) nor a TF2 object '
                       f'graph; first keys: {sorted(keys)[:5]}')
  count = _validate_and_assign(targets, lookup, resolved)
  report = dict(format=fmt, path=resolved, scope=scope, num_variables=count,
                num_unused=max(num_entries - count, 0))
  logging.info('Loaded backbone weights: %s', report)
  return report


def _resolve(path) -> Tuple[str, str]:
  """(format guess, path): `keras_h5` for HDF5 files, else `checkpoint` with its prefix."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isdir(path):
    latest = tf.train.latest_checkpoint(path)
    if latest is None:
      raise ValueError(f'weights path {path} is a directory without a TF checkpoint in it')
    path = latest
  if os.path.isfile(path):
    if _is_hdf5(path):
      return FORMAT_KERAS_H5, path
    prefix = _CHECKPOINT_DATA_RE.sub('', path)
    if prefix.endswith(CHECKPOINT_INDEX_SUFFIX):
      prefix = prefix[:-len(CHECKPOINT_INDEX_SUFFIX)]
    if prefix == path or not os.path.isfile(prefix + CHECKPOINT_INDEX_SUFFIX):
      raise ValueError(f'weights file {path} is neither HDF5 (Keras .h5) nor part of a '
                       'TensorFlow checkpoint (no matching .index file)')
    path = prefix
  if not os.path.isfile(path + CHECKPOINT_INDEX_SUFFIX):
    raise ValueError(f'weights path {path} does not exist (no such file, directory or '
                     f'checkpoint prefix with {CHECKPOINT_INDEX_SUFFIX})')
  return 'checkpoint', path


def _is_hdf5(path: str) -> bool:
  with open(path, 'rb') as f:
    if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
      return True
  return h5py.is_hdf5(path)  # also finds the signature after a user block


def _checkpoint_reader(prefix: str):
  try:
    return tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'cannot read TensorFlow checkpoint {prefix}: {e}') from e


def _target_variables(model) -> List[Tuple[str, str, tf.Variable]]:
  """`(layer name, weight name, variable)` for every variable of `model`, in layer order."""
  out, seen = [], set()

  def visit(layer):
    for sub in getattr(layer, 'layers', None) or []:
      visit(sub)
    if getattr(layer, 'layers', None):
      return
    for var in layer.weights:
      if id(var) not in seen:
        seen.add(id(var))
        out.append((layer.name, var.name.split('/')[-1].split(':')[0], var))

  visit(model)
  if not out:
    raise ValueError(f'model {model.name!r} has no variables to load; build it first')
  return out


def _validate_and_assign(targets, lookup: _Lookup, path: str) -> int:
  """Checks every target against the source, then assigns all; raises on the first problem."""
  problems, pairs = [], []
  for layer, weight, var in targets:
    source_name, value = lookup(layer, weight, var)
    ours, our_shape = f'{layer}/{weight}', tuple(var.shape.as_list())
    if value is None:
      problems.append(f'variable {source_name!r} (for our {ours}, shape {our_shape}) is '
                      f'missing from {path}')
    elif tuple(value.shape) != our_shape:
      problems.append(f'variable {source_name!r} in {path} has shape {tuple(value.shape)} '
                      f'but our {ours} has shape {our_shape} (a different depth_multiplier?)')
    else:
      pairs.append((var, value))
  if problems:
    more = f' ({len(problems) - 1} more problems)' if len(problems) > 1 else ''
    raise ValueError(f'cannot load backbone weights: {problems[0]}{more}; nothing was loaded')
  for var, value in pairs:
    var.assign(np.asarray(value, dtype=var.dtype.as_numpy_dtype))
  return len(pairs)


def _h5_attr_list(group, name: str) -> List[str]:
  """A string-list attribute, also in Keras' chunked form (`name0`, `name1`, ...)."""
  if name in group.attrs:
    chunks = [group.attrs[name]]
  else:
    chunks, i = [], 0
    while f'{name}{i}' in group.attrs:
      chunks.append(group.attrs[f'{name}{i}'])
      i += 1
  return [v.decode('utf8') if hasattr(v, 'decode') else str(v)
          for chunk in chunks for v in chunk]


def _keras_h5_source(path: str):
  """Reads a Keras 2 HDF5 weights file into `{(layer, weight): (dataset path, array)}`."""
  entries = {}
  try:
    h5_file = h5py.File(path, 'r')
  except OSError as e:
    raise ValueError(f'cannot open HDF5 weights file {path}: {e}') from e
  with h5_file as f:
    root = f
    if not _h5_attr_list(f, 'layer_names') and 'model_weights' in f:
      root = f['model_weights']  # a whole-model `model.save('x.h5')` file
    layer_names = _h5_attr_list(root, 'layer_names')
    if not layer_names:
      raise ValueError(f'{path} is an HDF5 file but not a Keras 2 weights file (no '
                       "'layer_names' attribute; expected the layout of tf_keras "
                       "Model.save_weights('x.h5'), e.g. keras.applications' *_no_top.h5)")
    missing = [n for n in KERAS_SIGNATURE_LAYERS if n not in layer_names]
    if missing:
      raise ValueError(f'{path} is not a MobileNetV2 weights file: it has no layers '
                       f'{missing} (its first layers are {layer_names[:5]})')
    for layer in layer_names:
      if layer not in root:
        continue
      group = root[layer]
      for weight_path in _h5_attr_list(group, 'weight_names'):
        if weight_path in group:
          weight = weight_path.split('/')[-1].split(':')[0]
          entries[(layer, weight)] = (f'/{layer}/{weight_path}', np.asarray(group[weight_path]))

  def lookup(layer, weight, unused_var):
    return entries.get((layer, weight), (f'/{layer}/{layer}/{weight}:0', None))

  return lookup, '', len(entries)


def _slim_roots(keys) -> List[str]:
  """Scope prefixes (ending in `MobilenetV2/`) that hold a slim MobileNetV2."""
  return sorted({k[:-len(SLIM_FIRST_CONV_SCOPE)] for k in keys
                 if k == SLIM_FIRST_CONV or k.endswith('/' + SLIM_FIRST_CONV)})


def _slim_source(reader, keys, roots: List[str], slim_root: Optional[str], path: str):
  if slim_root is None:
    if len(roots) > 1:
      raise ValueError(f'{path} holds several slim MobileNetV2 scopes {roots}; pass '
                       'slim_root to choose one')
    slim_root = roots[0]
  elif slim_root not in roots:
    raise ValueError(f'slim_root {slim_root!r} not found in {path}; it has {roots}')

  def lookup(layer, weight, unused_var):
    name = slim_variable_name(layer, weight, slim_root)
    return name, (reader.get_tensor(name) if name in keys else None)

  return lookup, slim_root, sum(1 for k in keys if k.startswith(slim_root))


def _tf2_source(backbone, targets, reader, path: str):
  """Finds the backbone in a TF2 checkpoint's object graph and maps its variables."""
  graph = object_graph.read_object_graph(reader)
  best = None
  for anchor in TF2_ANCHORS:
    node_id = object_graph.follow(graph, anchor)
    if node_id is None:
      continue
    matched = _match_variables(backbone, graph, node_id, '/'.join(anchor))
    consistent = sum(1 for layer, weight, var in targets
                     if id(var) in matched and
                     matched[id(var)][1].split('/')[-2:] == [layer, weight])
    if best is None or consistent > best[0]:
      best = (consistent, '/'.join(anchor), matched)
  if best is None or best[0] == 0:
    raise ValueError(f'{path} is not a MobileNetV2 checkpoint of this backbone: no variable '
                     "named like 'Conv1/kernel' at its root or under "
                     f'{["/".join(a) for a in TF2_ANCHORS[1:]]}')
  _, anchor, matched = best
  keys = reader.get_variable_to_shape_map()

  def lookup(layer, weight, var):
    key, full_name = matched.get(id(var), (None, None))
    if key is None or key not in keys:
      return key or f'<no object path to {layer}/{weight}>', None
    if full_name.split('/')[-2:] != [layer, weight]:
      raise ValueError(f'{path} is not a checkpoint of this backbone: entry {key!r} holds '
                       f'{full_name!r} where our {layer}/{weight} belongs')
    return key, reader.get_tensor(key)

  num_entries = sum(1 for k in keys if k.startswith(anchor) and k != OBJECT_GRAPH_KEY)
  return lookup, anchor, num_entries


def _match_variables(root, graph, anchor_id: int,
                     anchor_path: str) -> Dict[int, Tuple[str, str]]:
  """`{id(variable): (checkpoint key, saved full_name or '')}` under `root`: our and
  the checkpoint's variables matched by child-name path (`object_graph`), as
  `tf.train.Checkpoint.restore` does. A variable whose path is absent in the
  checkpoint maps to the key it would have."""
  saved = object_graph.checkpoint_variables(graph, anchor_id)
  matched = {}
  for path, variable in object_graph.live_variables(root).items():
    default = ('/'.join((anchor_path,) + path if anchor_path else path) +
               f'/.ATTRIBUTES/{object_graph.VARIABLE_VALUE_ATTR}', '')
    matched[id(variable)] = saved.get(path, default)
  return matched
