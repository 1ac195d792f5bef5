"""The logic behind tools/train.py, importable and testable."""

from absl import flags
from absl import logging
import tensorflow as tf

from official.common import distribute_utils
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance

import mnv2_det  # pylint: disable=unused-import  # registers backbone, task, experiments


def define_flags():
  """Flags beyond official.common.flags (none yet)."""


def run(flag_values):
  params = train_utils.parse_configuration(flag_values)
  model_dir = flag_values.model_dir
  if 'train' in flag_values.mode:
    train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=params.runtime.distribution_strategy,
      all_reduce_alg=params.runtime.all_reduce_alg,
      num_gpus=params.runtime.num_gpus,
      tpu_address=params.runtime.tpu)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
  _, logs = train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode=flag_values.mode,
      params=params, model_dir=model_dir)
  logging.info('Final logs: %s', logs)
  return 0
