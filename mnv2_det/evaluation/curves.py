"""Precision-recall and F1-vs-score-threshold curves out of a finished pycocotools COCOeval.

Nothing is re-matched here: the PR curves ARE slices of `COCOeval.eval['precision']`
(shape `[T, R, K, A, M]`: IoU thresholds 0.50:0.05:0.95, 101 recall points, categories
in `params.catIds` order, area ranges all/small/medium/large, maxDets 1/10/100), and the
F1 curve counts COCOeval's own per-image matches (`evalImgs[...]['dtMatches']` at IoU
0.5, area 'all', the last maxDets), the same ones `accumulate` turns into `precision`.

A class whose ground truth is absent from the evaluated images has `precision == -1`
(pycocotools' convention) and is left out of the curves and of the class means.
"""

from typing import Any, Dict, List

import numpy as np
from pycocotools.cocoeval import COCOeval

# Indices into eval['precision'] [T, R, K, A, M] and evalImgs' area ranges.
IOU_50 = 0
AREA_ALL = 0
MAX_DETS_LAST = -1
NO_GROUNDTRUTH = -1.0
# Score thresholds of the F1 curve: a detection is kept when score >= t.
F1_THRESHOLDS = np.linspace(0.0, 1.0, 1001)


def _class_names(evaluator: COCOeval) -> List[str]:
  cats = evaluator.cocoGt.cats
  return [str(cats[c].get('name', c)) for c in evaluator.params.catIds]


def pr_curves(evaluator: COCOeval) -> Dict[str, Any]:
  """Per-class PR curves at IoU 0.5 and averaged over IoU 0.5:0.95 (area all, maxDets 100).

  Returns dict: `recall` `[R]` (params.recThrs), `iou_thresholds` `[T]`, `classes`
  [{name, dataset_id, precision_iou50 `[R]` = eval['precision'][0, :, k, 0, -1],
  precision_iou50_95 `[R]` = its mean over the T axis, AP50, AP}] for the classes with
  ground truth, and `mean_iou50` / `mean_iou50_95` `[R]` (mean over those classes;
  empty when none has ground truth). Arrays are float64 lists, unrounded.
  """
  precision = evaluator.eval['precision']
  classes = []
  for k, (cat_id, name) in enumerate(zip(evaluator.params.catIds, _class_names(evaluator))):
    p_all = precision[:, :, k, AREA_ALL, MAX_DETS_LAST]  # [T, R]
    if np.all(p_all == NO_GROUNDTRUTH):
      continue
    p_50 = p_all[IOU_50]
    p_50_95 = np.mean(p_all, axis=0)
    classes.append({'name': name, 'dataset_id': int(cat_id),
                    'precision_iou50': p_50.tolist(), 'precision_iou50_95': p_50_95.tolist(),
                    'AP50': float(np.mean(p_50)), 'AP': float(np.mean(p_all))})

  def mean_of(key):
    return np.mean([c[key] for c in classes], axis=0).tolist() if classes else []

  return {'recall': np.asarray(evaluator.params.recThrs, np.float64).tolist(),
          'iou_thresholds': np.asarray(evaluator.params.iouThrs, np.float64).tolist(),
          'area': 'all', 'max_detections': int(evaluator.params.maxDets[MAX_DETS_LAST]),
          'classes': classes, 'mean_iou50': mean_of('precision_iou50'),
          'mean_iou50_95': mean_of('precision_iou50_95')}


def _class_matches(evaluator: COCOeval, k: int):
  """(scores, is_tp, is_fp, num_gt) of category index k at IoU 0.5, area all, maxDets last.

  Exactly what `COCOeval.accumulate` reads: per image `dtScores[:maxDet]`,
  `dtMatches[0]` (matched, at iouThrs[0] = 0.5), `dtIgnore[0]`, `gtIgnore`.
  """
  params = evaluator.params
  num_images, num_areas = len(params.imgIds), len(params.areaRng)
  max_det = params.maxDets[MAX_DETS_LAST]
  start = k * num_areas * num_images + AREA_ALL * num_images
  scores, tps, fps, num_gt = [], [], [], 0
  for e in evaluator.evalImgs[start:start + num_images]:
    if e is None:
      continue
    matched = np.asarray(e['dtMatches'])[IOU_50, :max_det] != 0
    ignored = np.asarray(e['dtIgnore'])[IOU_50, :max_det].astype(bool)
    scores.append(np.asarray(e['dtScores'][:max_det], np.float64))
    tps.append(matched & ~ignored)
    fps.append(~matched & ~ignored)
    num_gt += int(np.count_nonzero(np.asarray(e['gtIgnore']) == 0))
  if not scores:
    return np.zeros([0]), np.zeros([0], bool), np.zeros([0], bool), num_gt
  return np.concatenate(scores), np.concatenate(tps), np.concatenate(fps), num_gt


def _count_at_least(scores: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """`[len(thresholds)]` number of `scores` >= each threshold."""
  ordered = np.sort(scores)
  return len(ordered) - np.searchsorted(ordered, thresholds, side='left')


def f1_curve(evaluator: COCOeval, thresholds: np.ndarray = F1_THRESHOLDS) -> Dict[str, Any]:
  """F1 against the score threshold at IoU 0.5, per class and averaged over classes.

  At threshold t a class keeps its detections with score >= t: TP(t) and FP(t) count
  COCOeval's matched / unmatched non-ignored ones, G its non-ignored ground truth, and
  F1 = 2 TP / (TP + FP + G) (= 2PR / (P + R); 0 when TP = 0). `mean_f1` averages the
  classes with ground truth (as the PR curves do). The best threshold is the lowest t
  reaching max(mean_f1): the value for `tools/export.py --score_threshold`.

  Returns dict: `iou_threshold` 0.5, `thresholds` `[N]`, `mean_f1` / `mean_precision` /
  `mean_recall` `[N]`, `classes` [{name, dataset_id, num_groundtruths, f1 `[N]`}], and
  `best_score_threshold`, `best_f1`, `precision`, `recall` (class means at that
  threshold); with no ground truth at all: the curves empty and the best values None.
  """
  thresholds = np.asarray(thresholds, np.float64)
  classes, f1s, precisions, recalls = [], [], [], []
  for k, (cat_id, name) in enumerate(zip(evaluator.params.catIds, _class_names(evaluator))):
    scores, tps, fps, num_gt = _class_matches(evaluator, k)
    if num_gt == 0:
      continue
    tp = _count_at_least(scores[tps], thresholds).astype(np.float64)
    fp = _count_at_least(scores[fps], thresholds).astype(np.float64)
    f1 = 2.0 * tp / (tp + fp + num_gt)
    precisions.append(np.divide(tp, tp + fp, out=np.zeros_like(tp), where=tp + fp > 0))
    recalls.append(tp / num_gt)
    f1s.append(f1)
    classes.append({'name': name, 'dataset_id': int(cat_id), 'num_groundtruths': num_gt,
                    'f1': f1.tolist()})
  result = {'iou_threshold': float(evaluator.params.iouThrs[IOU_50]),
            'thresholds': thresholds.tolist(), 'classes': classes}
  if not classes:
    return {**result, 'mean_f1': [], 'mean_precision': [], 'mean_recall': [],
            'best_score_threshold': None, 'best_f1': None, 'precision': None,
            'recall': None}
  mean_f1 = np.mean(f1s, axis=0)
  mean_precision, mean_recall = np.mean(precisions, axis=0), np.mean(recalls, axis=0)
  best = int(np.argmax(mean_f1))  # the first (lowest) threshold of the maximum
  return {**result, 'mean_f1': mean_f1.tolist(), 'mean_precision': mean_precision.tolist(),
          'mean_recall': mean_recall.tolist(),
          'best_score_threshold': float(thresholds[best]), 'best_f1': float(mean_f1[best]),
          'precision': float(mean_precision[best]), 'recall': float(mean_recall[best])}


def f1_summary(curve: Dict[str, Any]) -> Dict[str, Any]:
  """The scalar part of `f1_curve` (for the JSON report)."""
  keys = ('iou_threshold', 'best_score_threshold', 'best_f1', 'precision', 'recall')
  return {k: curve[k] for k in keys}
