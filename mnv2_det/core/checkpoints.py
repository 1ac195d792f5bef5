"""Checkpoints: resolve a model dir or prefix, walk the object graph, restore.

  * `resolve_checkpoint`: a model_dir (latest or best_ckpt/) or a prefix ->
    (prefix, params.yaml or None);
  * `model_variable_keys` / `model_variable_paths`: the checkpoint's and a live
    model's variables by child-name path (the one object-graph walk of the package);
  * `restore_model`: reads a tf.train.Checkpoint(model=...) (the Model Garden
    trainer's) into a built model after checking every variable path and shape;
  * `restore_matching`: the fine-tuning start (variables whose path and shape match).
"""

import os
from typing import Dict, Optional, Tuple

import tensorflow as tf
from google.protobuf import message

from mnv2_det.core.errors import first_line
from mnv2_det.core.params import PARAMS_FILE
from mnv2_det.modeling import object_graph

BEST_CKPT_SUBDIR = 'best_ckpt'
CHECKPOINT_MODEL_KEY = 'model'  # Model Garden trainer: tf.train.Checkpoint(model=...)
# What reading a damaged checkpoint raises: a truncated .data file IndexError from the
# reader, a garbage .index DataLossError (OpError), a damaged object graph DecodeError.
UNREADABLE_CHECKPOINT_ERRORS = (tf.errors.OpError, OSError, IndexError, EOFError,
                                message.DecodeError, UnicodeDecodeError)


def resolve_checkpoint(path: str, best: bool = False) -> Tuple[str, Optional[str]]:
  """Checkpoint prefix and params.yaml (or None) for a model_dir or a prefix.

  A model_dir gives its latest checkpoint (or `best_ckpt/`'s with `best`) and its
  params.yaml. A prefix (e.g. `run/ckpt-60`) gives the params.yaml of its folder,
  or of the parent folder for a prefix inside `best_ckpt/`.
  """
  if tf.io.gfile.isdir(path):
    model_dir = path
    folder = os.path.join(path, BEST_CKPT_SUBDIR) if best else path
    if best and not tf.io.gfile.isdir(folder):
      raise ValueError(f'--best: {path} has no {BEST_CKPT_SUBDIR}/ folder')
    prefix = tf.train.latest_checkpoint(folder)
    if not prefix:
      raise ValueError(f'{folder} holds no checkpoint (no "checkpoint" index file)')
  elif tf.io.gfile.exists(path + '.index'):
    prefix, model_dir = path, model_dir_of(path)
  else:
    raise ValueError(f'checkpoint {path} does not exist (neither a folder nor a '
                     f'checkpoint prefix with {path}.index)')
  params_file = os.path.join(model_dir, PARAMS_FILE)
  return prefix, (params_file if tf.io.gfile.exists(params_file) else None)


def model_dir_of(prefix: str) -> str:
  """The model dir of a checkpoint prefix (`run/ckpt-5` or `run/best_ckpt/ckpt-5`)."""
  folder = os.path.dirname(os.path.abspath(prefix))
  if os.path.basename(folder) == BEST_CKPT_SUBDIR:
    return os.path.dirname(folder)
  return folder


def model_variable_keys(prefix: str) -> Dict[Tuple[str, ...], str]:
  """`{child-name path from the checkpoint's 'model' object: tensor key}` of variables."""
  try:
    graph = object_graph.read_object_graph(tf.train.load_checkpoint(prefix))
  except ValueError as e:
    raise ValueError(f'checkpoint {prefix} is {e}') from e
  root = object_graph.follow(graph, [CHECKPOINT_MODEL_KEY])
  if root is None:
    raise ValueError(f'checkpoint {prefix} has no {CHECKPOINT_MODEL_KEY!r} object '
                     '(not written by tf.train.Checkpoint(model=...))')
  return {path: key for path, (key, _) in
          object_graph.checkpoint_variables(graph, root).items()}


def model_variable_paths(model) -> Dict[Tuple[str, ...], tf.Variable]:
  """`{child-name path from `model`: variable}`, the paths `model_variable_keys` reads."""
  return object_graph.live_variables(model)


def restore_matching(model, prefix: str) -> Tuple[int, list]:
  """Fine-tuning start: reads every variable of a Checkpoint(model=...) whose path and
  shape match `model`; the others (e.g. a class predictor for another class count)
  keep their initial values. Atomic: all values are read before any is assigned.

  Returns:
    (number restored, sorted '/'-joined paths of the model variables left fresh).

  Raises:
    ValueError: unreadable checkpoint, or one that matches no variable at all.
  """
  try:
    keys = model_variable_keys(prefix)
    reader = tf.train.load_checkpoint(prefix)
    shapes = reader.get_variable_to_shape_map()
    values, fresh = [], []
    for path, variable in model_variable_paths(model).items():
      key = keys.get(path)
      if key is not None and list(shapes[key]) == variable.shape.as_list():
        values.append((variable, reader.get_tensor(key)))
      else:
        fresh.append('/'.join(path))
  except UNREADABLE_CHECKPOINT_ERRORS as e:
    raise ValueError(f'checkpoint {prefix} cannot be read: {first_line(e)}') from e
  if not values:
    raise ValueError(f'init checkpoint {prefix} matches none of the model\'s variables')
  for variable, value in values:
    variable.assign(value)
  return len(values), sorted(fresh)


def restore_model(model, prefix: str) -> None:
  """Reads `model` from a Checkpoint(model=...) (e.g. the Model Garden trainer's).

  Raises ValueError naming `prefix` when the checkpoint holds a different
  architecture (a variable missing, extra or of another shape), checked before
  reading so nothing is half-restored, or when its files cannot be read.
  """
  try:
    _restore_model(model, prefix)
  except UNREADABLE_CHECKPOINT_ERRORS as e:
    raise ValueError(f'checkpoint {prefix} cannot be read (corrupt or truncated?): '
                     f'{first_line(e)}') from e


def _restore_model(model, prefix: str) -> None:
  keys = model_variable_keys(prefix)
  shapes = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
  live = model_variable_paths(model)
  hint = ': a different architecture (check --experiment, --params_override, params.yaml)'
  missing = [p for p in live if p not in keys]
  if missing:
    raise ValueError(f'checkpoint {prefix} lacks {len(missing)} model variables, e.g. '
                     f'{"/".join(missing[0])}{hint}')
  if len(keys) != len(live):
    raise ValueError(f'checkpoint {prefix} holds {len(keys)} model variables, the '
                     f'configured model {len(live)}{hint}')
  for path, variable in live.items():
    if list(shapes[keys[path]]) != variable.shape.as_list():
      raise ValueError(f'checkpoint {prefix}: {"/".join(path)} has shape '
                       f'{shapes[keys[path]]}, the configured model '
                       f'{variable.shape.as_list()}{hint}')
  status = tf.train.Checkpoint(**{CHECKPOINT_MODEL_KEY: model}).read(prefix)
  status.expect_partial().assert_existing_objects_matched()
