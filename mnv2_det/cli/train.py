"""The logic behind tools/train.py: Model Garden's train_lib with mnv2_det's guards.

Training itself is `official.core.train_lib.run_experiment` (orbit Controller,
tf.distribute, checkpoint manager that resumes from the latest checkpoint in model_dir,
best-checkpoint export by AP, TensorBoard summaries of every loss term and the learning
rate). On top of it this module adds:
  - a refusal to train into a model_dir that holds another experiment's checkpoint;
  - a progress line every `steps_per_loop` steps with loss, images/s and ETA (also
    written to TensorBoard as `images_per_second`);
  - a stop with a clear message on a NaN/inf loss, naming the steps, before the bad
    weights are checkpointed (the last good checkpoint stays the latest);
  - one clear `error: ...` line and exit code 2 for user errors, never a traceback;
  - early stopping on a validation metric (`trainer.early_stopping`, cli/early_stopping.py);
  - PR curves, confusion matrix and F1 curve after every evaluation
    (`trainer.eval_plots`, evaluation/train_plots.py) in MODEL_DIR/plots/step_N/ and
    TensorBoard.
"""

import hashlib
import os
import sys
import time
from typing import Any, Dict, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import yaml

from official.common import distribute_utils
from official.core import task_factory
from official.core import train_lib
from official.core import train_utils
from official.modeling import performance
from official.vision.utils import summary_manager

import mnv2_det  # pylint: disable=unused-import  # registers backbone, task, experiments
from mnv2_det.cli import early_stopping
from mnv2_det.core import errors
from mnv2_det.core import model_dir as model_dir_lib
from mnv2_det.core import params as params_lib
from mnv2_det.core import seeding
from mnv2_det.evaluation import coco
from mnv2_det.evaluation import train_plots

# Model fields that may change between runs in one model_dir: they alter neither the
# variables nor their meaning (post-processing thresholds, initialization source, BN
# freezing for fine-tuning).
RESUMABLE_MODEL_FIELDS = ('task.model.detection_generator.',
                          'task.model.backbone.mnv2_det.weights',
                          'task.model.freeze_batchnorm')


class TrainingDiverged(RuntimeError):
  """The training loss became NaN or infinite."""


def define_flags():
  """Flags beyond official.common.flags (none: everything is in the config)."""


def parse_params(flag_values):
  """Experiment config from Model Garden's flags (--experiment, --config_file,
  --params_override) through the one params builder (core/params.py); validated and
  locked as Model Garden's train_utils.parse_configuration does."""
  params = params_lib.build_params(flag_values.experiment, None,
                                   flag_values.config_file or [],
                                   flag_values.params_override or '')
  params.lock()
  return params


def check_model_dir(params, model_dir: str):
  """Refuses a model_dir whose checkpoint belongs to a different model config.

  The model part of `params.yaml` (written by an earlier run) must equal this run's,
  except RESUMABLE_MODEL_FIELDS; everything else (schedule, data paths, eval settings)
  may change between runs.
  """
  saved = os.path.join(model_dir, params_lib.PARAMS_FILE)
  if not tf.io.gfile.exists(saved) or not tf.train.latest_checkpoint(model_dir):
    return
  with tf.io.gfile.GFile(saved) as f:
    old = yaml.safe_load(f) or {}
  old_model = (old.get('task') or {}).get('model')
  new_model = params.task.model.as_dict()
  if old_model is None:
    return
  diffs = [d for d in _dict_diff(old_model, new_model, 'task.model')
           if not d.split(' ')[0].startswith(RESUMABLE_MODEL_FIELDS)]
  if diffs:
    shown = '; '.join(diffs[:3]) + (f' (+{len(diffs) - 3} more)' if len(diffs) > 3 else '')
    raise ValueError(
        f'model_dir {model_dir} holds a checkpoint of a different model '
        f'({saved}: {shown}). Use a new --model_dir, or the original config to resume.')


def _dict_diff(old, new, prefix):
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _dict_diff(old.get(key), new.get(key), f'{prefix}.{key}')
    return out
  if isinstance(old, (list, tuple)) and isinstance(new, (list, tuple)):
    old, new = list(old), list(new)
  if old != new and not (_is_number(old) and _is_number(new) and np.isclose(old, new)):
    return [f'{prefix} was {old!r}, now {new!r}']
  return []


def _is_number(x):
  return isinstance(x, (int, float)) and not isinstance(x, bool)


class ProgressAction:
  """Orbit train action: a progress line and images/s after each train loop."""

  def __init__(self, trainer, params, model_dir: Optional[str], printer=print):
    self._trainer = trainer
    self._batch = params.task.train_data.global_batch_size
    self._total = params.trainer.train_steps
    self._printer = printer
    self._last_step = int(trainer.global_step.numpy())
    self._last_time = time.perf_counter()
    self._writer = (tf.summary.create_file_writer(os.path.join(model_dir, 'train'))
                    if model_dir else None)

  def __call__(self, output: Dict[str, Any]):
    step = int(self._trainer.global_step.numpy())
    now = time.perf_counter()
    steps = max(step - self._last_step, 1)
    seconds_per_step = (now - self._last_time) / steps
    images_per_second = self._batch / seconds_per_step if seconds_per_step > 0 else 0.0
    eta = max(self._total - step, 0) * seconds_per_step
    loss = float(output.get('total_loss', output.get('training_loss', np.nan)))
    parts = [f'step {step}/{self._total}', f'loss {loss:.4f}']
    terms = [f'{k} {float(output[k]):.4f}' for k in ('cls_loss', 'box_loss') if k in output]
    if terms:
      parts[-1] += f' ({", ".join(terms)})'
    if 'learning_rate' in output:
      parts.append(f'lr {float(output["learning_rate"]):.3g}')
    parts += [f'{images_per_second:.1f} img/s', f'ETA {_format_seconds(eta)}']
    self._printer(' | '.join(parts), flush=True)
    if self._writer is not None:
      with self._writer.as_default():
        tf.summary.scalar('images_per_second', images_per_second, step=step)
      self._writer.flush()
    self._last_step, self._last_time = step, now


class DivergenceGuard:
  """Orbit train action: stops on a NaN/inf (or above `loss_upper_bound`) loss before
  the diverged weights are checkpointed."""

  def __init__(self, trainer, steps_per_loop: int, model_dir: Optional[str],
               loss_upper_bound: float = np.inf):
    self._trainer = trainer
    self._steps_per_loop = steps_per_loop
    self._model_dir = model_dir
    self._bound = loss_upper_bound

  def __call__(self, output: Dict[str, Any]):
    bad = {k: float(v) for k, v in output.items()
           if k.endswith('loss') and np.ndim(v) == 0 and
           not (np.isfinite(float(v)) and float(v) <= self._bound)}
    if not bad:
      return
    step = int(self._trainer.global_step.numpy())
    first = max(step - self._steps_per_loop + 1, 1)
    last_good = tf.train.latest_checkpoint(self._model_dir) if self._model_dir else None
    raise TrainingDiverged(
        f'training stopped: non-finite loss (or above trainer.loss_upper_bound '
        f'{self._bound:g}) {bad} in steps {first}..{step}; the weights '
        f'of step {step} were not saved; last good checkpoint: {last_good or "none"}. '
        'Lower the learning rate or check the data.')


def weights_fingerprint(model) -> str:
  """sha256 over every variable's bytes, in model order."""
  digest = hashlib.sha256()
  for variable in model.variables:
    digest.update(np.ascontiguousarray(variable.numpy()).tobytes())
  return digest.hexdigest()


def _format_seconds(seconds: float) -> str:
  seconds = int(round(seconds))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f'{hours}h{minutes:02d}m{secs:02d}s' if hours else f'{minutes}m{secs:02d}s'


def run_experiment(params, model_dir: str, mode: str):
  """Runs `mode` for `params`; returns (model, logs of the last evaluation or {})."""
  params = seeding.apply(params)  # task.seed / task.op_determinism, before any build
  controller_cls = early_stopping.controller_cls(params, model_dir)  # checks the config
  if 'train' in mode:
    check_model_dir(params, model_dir)
    train_utils.serialize_config(params, model_dir)
  if params.runtime.mixed_precision_dtype:
    performance.set_mixed_precision_policy(params.runtime.mixed_precision_dtype)
  if (params.runtime.mixed_precision_dtype == 'bfloat16' and
      os.environ.get('TF_ENABLE_ONEDNN_OPTS') != '0'):
    logging.warning('bfloat16 with oneDNN: on AVX512-BF16 / AMX CPUs its depthwise '
                    'gradients on 1x1 maps came out NaN in about half of our short runs '
                    '(TF 2.20); set TF_ENABLE_ONEDNN_OPTS=0 if the weights turn NaN')
  strategy = distribute_utils.get_distribution_strategy(
      distribution_strategy=params.runtime.distribution_strategy,
      all_reduce_alg=params.runtime.all_reduce_alg,
      num_gpus=params.runtime.num_gpus,
      tpu_address=params.runtime.tpu)
  with strategy.scope():
    task = task_factory.get_task(params.task, logging_dir=model_dir)
    trainer = train_utils.create_trainer(
        params, task, train='train' in mode, evaluate='eval' in mode,
        checkpoint_exporter=train_utils.maybe_create_best_ckpt_exporter(params, model_dir))
  train_actions = []
  if 'train' in mode and getattr(type(task), 'category_map', None) is not None:
    # The model dir carries its category table (core/model_dir.py); Model Garden's own
    # tasks (the RetinaNet peer of the benchmarks) have none.
    model_dir_lib.write_categories(os.path.join(model_dir, model_dir_lib.CATEGORIES_FILE),
                                   model_dir_lib.categories_of(task.category_map))
  if 'train' in mode:
    # These run before Model Garden's own recovery action, so a NaN stops here with
    # the steps named.
    train_actions = [DivergenceGuard(trainer, params.trainer.steps_per_loop, model_dir,
                                     params.trainer.loss_upper_bound),
                     ProgressAction(trainer, params, model_dir)]
  last_eval = LastEvalLogs()
  eval_actions = [last_eval] + train_plots.maybe_build(
      params, task, trainer, model_dir, strategy.extended.should_checkpoint)
  model, logs = train_lib.run_experiment(
      distribution_strategy=strategy, task=task, mode=mode, params=params,
      model_dir=model_dir, trainer=trainer, train_actions=train_actions,
      eval_actions=eval_actions, controller_cls=controller_cls,
      # Writes the eval images with drawn detections when task.allow_image_summary.
      eval_summary_manager=summary_manager.maybe_build_eval_summary_manager(
          params=params, model_dir=model_dir))
  # train_lib returns logs only for a post-training eval; else the last eval's.
  return model, logs or last_eval.logs


class LastEvalLogs:
  """Orbit eval action that keeps the most recent eval output."""

  def __init__(self):
    self.logs: Dict[str, Any] = {}

  def __call__(self, output: Dict[str, Any]):
    self.logs = dict(output or {})


def run(flag_values) -> int:
  """CLI entry: returns the process exit code."""
  try:
    params = parse_params(flag_values)
    model, logs = run_experiment(params, flag_values.model_dir, flag_values.mode)
  except (ValueError, TrainingDiverged) as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return errors.ERROR_EXIT_CODE
  if 'train' in flag_values.mode:
    # Equal on every worker of a synchronous run: a cheap check that replicas agree.
    print(f'final weights sha256: {weights_fingerprint(model)}', flush=True)
  if logs:
    logging.info('Final eval logs: %s', logs)
    # The 12 pycocotools stats, in COCOeval order, as tools/eval.py prints them.
    stats = {name: logs[name] for name in coco.STAT_NAMES if name in logs}
    if stats:
      print('\n'.join(['COCO metrics of the final evaluation:'] +
                      coco.format_stats(stats)), flush=True)
  return 0
