"""Early stopping of `train_and_eval` on a validation metric (`trainer.early_stopping`).

`EarlyStopping` tracks the metric over evaluations; `EarlyStoppingController` is the
orbit Controller that cli/train.py hands Model Garden's train_lib (`controller_cls`):
orbit's own `train_and_evaluate` loop runs unchanged, and after an evaluation (its
summaries, actions and MG's best-checkpoint export done) that leaves the metric
without improvement for `patience` evaluations the controller leaves the loop, saves the
checkpoint of that step as orbit does at the end of a run, and prints one line saying
why and where. The best checkpoint (`trainer.best_checkpoint_export_subdir`) is not
touched. The count lives in the process: a resumed run starts it afresh.
"""

import functools
import os
from typing import Any, Callable, Dict, Optional

from absl import logging
import numpy as np
import orbit

METRIC_COMPS = ('higher', 'lower')
_FIELD = 'trainer.early_stopping'


class EarlyStopping:
  """Patience on one eval metric.

  An evaluation improves when its `metric` beats the best so far by more than
  `min_delta` (above it for 'higher', below for 'lower'); the first always does.
  `update` returns True once `patience` evaluations in a row did not improve.
  """

  def __init__(self, patience: int, metric: str = 'AP', metric_comp: str = 'higher',
               min_delta: float = 0.0):
    if patience < 1:
      raise ValueError(f'{_FIELD}.patience must be >= 1 to stop early (0 turns it off), '
                       f'got {patience}')
    if metric_comp not in METRIC_COMPS:
      raise ValueError(f'{_FIELD}.metric_comp must be one of {METRIC_COMPS}, got '
                       f'{metric_comp!r}')
    if not min_delta >= 0.0:
      raise ValueError(f'{_FIELD}.min_delta must be >= 0, got {min_delta}')
    if not metric:
      raise ValueError(f'{_FIELD}.metric must name an eval metric, e.g. AP')
    self.patience, self.metric = int(patience), metric
    self.metric_comp, self.min_delta = metric_comp, float(min_delta)
    self.best: Optional[float] = None
    self.best_step: Optional[int] = None
    self.evals_without_improvement = 0

  def _improves(self, value: float) -> bool:
    if self.best is None:
      return True
    if self.metric_comp == 'higher':
      return value > self.best + self.min_delta
    return value < self.best - self.min_delta

  def update(self, logs: Dict[str, Any], step: int) -> bool:
    """Takes one evaluation's logs; True when training should stop."""
    if self.metric not in logs:
      shown = ', '.join(sorted(k for k in logs if np.ndim(logs[k]) == 0)[:20])
      raise ValueError(f'{_FIELD}.metric {self.metric!r} is not among the eval metrics '
                       f'({shown})')
    value = float(logs[self.metric])
    if not np.isfinite(value):
      raise ValueError(f'{_FIELD}.metric {self.metric!r} is {value} at step {step}')
    if self._improves(value):
      self.best, self.best_step, self.evals_without_improvement = value, step, 0
    else:
      self.evals_without_improvement += 1
    return self.evals_without_improvement >= self.patience

  def reason(self, step: int) -> str:
    """The one line printed when stopping at `step`."""
    delta = f' by more than {self.min_delta:g}' if self.min_delta else ''
    return (f'early stopping at step {step}: {self.metric} has not improved{delta} on '
            f'its best {self.best:.4f} (step {self.best_step}) for '
            f'{self.evals_without_improvement} evaluation(s) '
            f'({_FIELD}.patience {self.patience})')


def from_config(params) -> Optional[EarlyStopping]:
  """The trainer config's EarlyStopping, or None (patience 0, or a trainer config
  without the field, e.g. Model Garden's own experiments)."""
  config = getattr(params.trainer, 'early_stopping', None)
  if config is None or config.patience == 0:
    return None
  if config.patience < 0:
    raise ValueError(f'{_FIELD}.patience must be >= 0, got {config.patience}')
  return EarlyStopping(config.patience, config.metric, config.metric_comp,
                       config.min_delta)


class _Stop(Exception):
  """Leaves orbit's train_and_evaluate loop after an evaluation."""

  def __init__(self, output):
    super().__init__()
    self.output = output


class EarlyStoppingController(orbit.Controller):
  """orbit.Controller whose `train_and_evaluate` ends once `stopper` says so."""

  def __init__(self, *args, stopper: EarlyStopping, best_dir: Optional[str] = None,
               printer: Callable[..., None] = print, **kwargs):
    super().__init__(*args, **kwargs)
    self._stopper = stopper
    self._best_dir = best_dir
    self._printer = printer
    self._train_steps: Optional[int] = None  # set inside train_and_evaluate only

  def evaluate(self, steps: int = -1):
    output = super().evaluate(steps)
    if self._train_steps is not None:
      step = int(self.global_step.numpy())
      # After the last scheduled evaluation the run ends anyway: no early-stop line.
      if self._stopper.update(output, step) and step < self._train_steps:
        raise _Stop(output)
    return output

  def train_and_evaluate(self, train_steps: int, eval_steps: int = -1,
                         eval_interval: Optional[int] = None):
    self._train_steps = int(train_steps)
    try:
      return super().train_and_evaluate(train_steps, eval_steps, eval_interval)
    except _Stop as stop:
      step = int(self.global_step.numpy())
      # As orbit ends a train_and_evaluate run: the checkpoint of the last step.
      self._maybe_save_checkpoint(check_interval=False)
      self._sync_on_async_checkpointing()
      where = ''
      if self._best_dir and os.path.isdir(self._best_dir):
        where = f'; best checkpoint: {self._best_dir}'
      line = self._stopper.reason(step) + where
      logging.info(line)
      self._printer(line, flush=True)
      return stop.output
    finally:
      self._train_steps = None


def controller_cls(params, model_dir: str, printer: Callable[..., None] = print):
  """What cli/train.py passes train_lib as `controller_cls`: orbit.Controller, or the
  EarlyStoppingController bound to the config's EarlyStopping."""
  stopper = from_config(params)
  if stopper is None:
    return orbit.Controller
  subdir = params.trainer.best_checkpoint_export_subdir
  return functools.partial(EarlyStoppingController, stopper=stopper,
                           best_dir=os.path.join(model_dir, subdir) if subdir else None,
                           printer=printer)
