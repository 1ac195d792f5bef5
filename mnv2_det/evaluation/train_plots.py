"""Evaluation plots after every training-time evaluation (`trainer.eval_plots`).

An orbit eval action (cli/train.py adds it in `train_and_eval` / `eval` modes): after
each evaluation it takes what the task's COCO metric scored (tasks/coco_metric.py,
`RecordingCOCOEvaluator.last`: the same detections and ground truth Model Garden's
COCOEvaluator scored), runs pycocotools on them once more (evaluation/coco.py,
`run_cocoeval`, whose stats equal the logged ones: tests/test_coco_agreement.py) and
writes evaluation/plots.py's files into `MODEL_DIR/plots/step_N/`, the PNGs as
`tf.summary.image` (`plots/NAME`) and the best-F1 threshold and F1 as scalars
(`plots/best_f1_score_threshold`, `plots/best_f1`) into the eval TensorBoard logs.
"""

import os
from typing import Any, Callable, Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from official.vision.evaluation import coco_utils

from mnv2_det.evaluation import coco
from mnv2_det.evaluation import plots as plots_lib
from mnv2_det.tasks import coco_metric

PLOTS_SUBDIR = 'plots'
_PREDICTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes',
                    'num_detections')


def step_dir(model_dir: str, step: int) -> str:
  """MODEL_DIR/plots/step_N."""
  return os.path.join(model_dir, PLOTS_SUBDIR, f'step_{step}')


def coco_results(last: coco_metric.LastEvaluation):
  """(COCO result dicts, evaluated image ids) of a LastEvaluation (dataset ids already)."""
  predictions = last.predictions
  results, image_ids = [], []
  for b, source_ids in enumerate(predictions['source_id']):
    batch = {k: predictions[k][b] for k in _PREDICTION_KEYS}
    results.extend(coco.to_coco_results(source_ids, batch, None))
    image_ids.extend(int(i) for i in np.asarray(source_ids).reshape([-1]))
  return results, sorted(set(image_ids))


class EvalPlotsAction:
  """Orbit eval action: the plots of each evaluation, on disk and in TensorBoard."""

  def __init__(self, metric: coco_metric.RecordingCOCOEvaluator, model_dir: str,
               eval_summary_dir: str, step_fn: Callable[[], int],
               score_threshold: Optional[float] = None,
               label_map: Optional[Dict[int, str]] = None, printer=print):
    """`step_fn()` is the global step; `label_map` ({dataset id: name}) names the
    classes when the ground truth comes from the pipeline (TFRecords)."""
    if score_threshold is not None:
      plots_lib.check_score_threshold(
          score_threshold, 'trainer.eval_plots.confusion_score_threshold')
    self._metric = metric
    metric.keep_last = True
    self._model_dir = model_dir
    self._summary_dir = eval_summary_dir
    self._step_fn = step_fn
    self._score_threshold = score_threshold
    self._label_map = label_map
    self._printer = printer
    self._groundtruth = None  # of the annotation file, read once
    self._writer = None

  def _groundtruth_of(self, last: coco_metric.LastEvaluation):
    if last.annotation_file:
      if self._groundtruth is None:
        self._groundtruth = coco.load_groundtruth(last.annotation_file)
      return self._groundtruth
    dataset = coco_utils.convert_groundtruths_to_coco_dataset(last.groundtruths,
                                                              self._label_map)
    return coco.groundtruth_from_dataset(dataset, 'validation ground truth')

  def __call__(self, output: Dict[str, Any]) -> None:
    last, self._metric.last = self._metric.last, None
    if last is None:
      return
    step = int(self._step_fn())
    results, image_ids = coco_results(last)
    evaluator = coco.run_cocoeval(self._groundtruth_of(last), results, image_ids,
                                  last.annotation_file or '')
    plots = plots_lib.make_plots(evaluator, results, self._score_threshold)
    out_dir = step_dir(self._model_dir, step)
    plots_lib.write_plots(plots, out_dir)
    self._write_summaries(plots, step)
    f1 = plots.data[plots_lib.F1]
    if f1['best_score_threshold'] is None:
      line = f'eval plots of step {step} in {out_dir} (no ground truth: no F1)'
    else:
      line = (f'eval plots of step {step} in {out_dir}; best F1 {f1["best_f1"]:.3f} at '
              f'score threshold {f1["best_score_threshold"]:.3f}')
    self._printer(line, flush=True)

  def _write_summaries(self, plots: plots_lib.Plots, step: int) -> None:
    if self._writer is None:
      self._writer = tf.summary.create_file_writer(self._summary_dir)
    with self._writer.as_default():
      for name in plots_lib.PLOT_NAMES:
        image = tf.image.decode_png(plots.pngs[name], channels=3)
        tf.summary.image(f'{PLOTS_SUBDIR}/{name}', image[tf.newaxis], step=step)
      f1 = plots.data[plots_lib.F1]
      if f1['best_score_threshold'] is not None:
        tf.summary.scalar(f'{PLOTS_SUBDIR}/best_f1_score_threshold',
                          f1['best_score_threshold'], step=step)
        tf.summary.scalar(f'{PLOTS_SUBDIR}/best_f1', f1['best_f1'], step=step)
    self._writer.flush()


def maybe_build(params, task, trainer, model_dir: str, should_write: bool,
                printer=print) -> List[EvalPlotsAction]:
  """[EvalPlotsAction] when `trainer.eval_plots.enabled`, the task has a
  RecordingCOCOEvaluator (mnv2_det's task) and this worker writes (the chief); else []."""
  config = getattr(params.trainer, 'eval_plots', None)
  metric = getattr(task, 'coco_metric', None)
  if not (config and config.enabled and should_write and
          isinstance(metric, coco_metric.RecordingCOCOEvaluator)):
    if config and config.enabled and should_write:
      logging.info('trainer.eval_plots: the task has no RecordingCOCOEvaluator; no plots')
    return []
  category_map = getattr(task, 'category_map', None)
  return [EvalPlotsAction(
      metric, model_dir, os.path.join(model_dir, params.trainer.validation_summary_subdir),
      lambda: trainer.global_step.numpy(), config.confusion_score_threshold,
      label_map=category_map.label_map() if category_map is not None else None,
      printer=printer)]
