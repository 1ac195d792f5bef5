"""The experiment config: one builder for every tool, training included.

    experiment defaults <- params.yaml (a model dir's) <- config files <- k=v overrides

A model dir's params.yaml is the trainer's full dump of the experiment, so it alone
says what the model is: with it, the experiment name may be omitted (the
BASE_EXPERIMENT's dataclasses, which every mnv2_det experiment shares, take its values).
"""

from typing import Optional, Sequence

import tensorflow as tf
import yaml

from official.core import exp_factory
from official.modeling import hyperparams

import mnv2_det  # pylint: disable=unused-import  # registers backbone, task, experiments
from mnv2_det.configs import qat as qat_configs

PARAMS_FILE = 'params.yaml'
# The config classes a params.yaml is read into when no experiment is named (one with a
# `task.quantization` entry: qat_configs.EXPERIMENT's, which add that field).
BASE_EXPERIMENT = 'ssdlite_mnv2_coco'
# Shuffle seed of `unaugmented_train_data` when train_data.seed is unset.
UNAUGMENTED_SEED = 0


def build_params(experiment: Optional[str], params_file: Optional[str] = None,
                 config_files: Sequence[str] = (), params_override: str = ''):
  """experiment defaults <- params_file <- config_files <- params_override, validated.

  Raises:
    ValueError: no experiment and no params_file, an unknown experiment, a missing
      file, or an override naming an unknown field or a wrong type (the message names
      the file or flag).
  """
  if not experiment and not params_file:
    raise ValueError('--experiment is required (no params.yaml beside the checkpoint '
                     'says which experiment it is)')
  name = experiment or _base_experiment(params_file)
  try:
    params = exp_factory.get_exp_config(name)
  except (KeyError, LookupError) as e:
    raise ValueError(f'unknown experiment {name!r}') from e
  for source in ([params_file] if params_file else []) + list(config_files or []):
    if not tf.io.gfile.exists(source):
      raise ValueError(f'config file {source} does not exist')
    params = _override(params, source, source)
  if params_override:
    params = _override(params, params_override, '--params_override')
  params.validate()
  return params


def _base_experiment(params_file: str) -> str:
  """BASE_EXPERIMENT, or the QAT experiment for a params.yaml with task.quantization."""
  try:
    with tf.io.gfile.GFile(params_file) as f:
      content = yaml.safe_load(f)
  except (tf.errors.OpError, yaml.YAMLError):
    return BASE_EXPERIMENT  # the override below names the file and the problem
  task = content.get('task') if isinstance(content, dict) else None
  quantized = isinstance(task, dict) and task.get('quantization') is not None
  return qat_configs.EXPERIMENT if quantized else BASE_EXPERIMENT


def _override(params, source, what):
  try:
    return hyperparams.override_params_dict(params, source, is_strict=True)
  except (KeyError, ValueError, TypeError, AttributeError, yaml.YAMLError) as e:
    message = e.args[0] if isinstance(e, KeyError) and e.args else e
    raise ValueError(f'{what}: {message}') from e


def unaugmented_train_data(params, global_batch_size: Optional[int] = None):
  """task.train_data with augmentation off (no flip, no SSD crop) and a fixed shuffle
  seed (train_data.seed, else UNAUGMENTED_SEED): the training images as the model
  sees them at inference (float32), for BN audits / recalibration and int8
  calibration."""
  train = params.task.train_data
  return train.replace(
      parser=train.parser.replace(aug_random_flip=False, aug_ssd_random_crop=False),
      seed=UNAUGMENTED_SEED if train.seed is None else train.seed,
      global_batch_size=global_batch_size or train.global_batch_size, dtype='float32')


def optional_int(value: Optional[int], name: str, minimum: int = 1) -> Optional[int]:
  """Validates an optional positive integer flag."""
  if value is not None and value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}')
  return value
