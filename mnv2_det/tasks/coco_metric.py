"""Model Garden's COCOEvaluator that can keep what its last evaluation scored.

The task's training-time validation metric (tasks/ssdlite.py, build_metrics). Scoring is
MG's, unchanged; with `keep_last` set (the training-time plots of
evaluation/train_plots.py set it) `evaluate()` first keeps copies of the accumulated
predictions and, without an annotation file (TFRecord validation data), of the
pipeline's ground truth, because MG's `evaluate()` converts the predictions in place and
`result()` then drops them.
"""

import dataclasses
from typing import Dict, List, Optional

import numpy as np

from official.vision.evaluation import coco_evaluator


@dataclasses.dataclass
class LastEvaluation:
  """What one evaluation scored, as the task fed COCOEvaluator.update_state.

  Attributes:
    predictions: lists (one entry per eval batch) of numpy arrays: `source_id` [B],
      `detection_boxes` [B, N, 4] float ORIGINAL pixels [ymin, xmin, ymax, xmax],
      `detection_scores` [B, N], `detection_classes` [B, N] int DATASET ids (-1 =
      padding), `num_detections` [B], `image_info` [B, 4, 2].
    groundtruths: the same for the pipeline's `groundtruths` (MG's keys), or None
      when the evaluator reads `annotation_file`.
    annotation_file: the evaluator's COCO JSON, or None.
  """
  predictions: Dict[str, List[np.ndarray]]
  groundtruths: Optional[Dict[str, List[np.ndarray]]]
  annotation_file: Optional[str]


def _copied(lists):
  return {k: [np.array(a, copy=True) for a in v] for k, v in lists.items()}


class RecordingCOCOEvaluator(coco_evaluator.COCOEvaluator):
  """COCOEvaluator whose `last` is the LastEvaluation of its latest `evaluate()` when
  `keep_last` is true (else None, and nothing is copied)."""

  keep_last = False
  last: Optional[LastEvaluation] = None

  def evaluate(self):
    if self.keep_last:
      self.last = LastEvaluation(
          predictions=_copied(self._predictions),
          groundtruths=None if self._annotation_file else _copied(self._groundtruths),
          annotation_file=self._annotation_file or None)
    return super().evaluate()
