"""COCO box evaluation of any detector with pycocotools: the library behind tools/eval.py
and the evaluation benchmarks.

One way in: `evaluate_images(detect_image_fn, annotation_file, image_dir)` feeds each
ORIGINAL image of the annotation file (uint8 `[h, w, 3]`, decoded as the pipeline
decodes) to `detect_image_fn`, which returns DATASET ids: any
`inference.detector.Detector` (checkpoint, SavedModel, .tflite), which resizes with the
same `serving_inputs.prepare_image` as the eval pipeline, so a checkpoint and its fp32
exports score the same. Training-time validation uses Model Garden's COCOEvaluator;
tests/test_coco_agreement.py shows both score the same detections alike.
`run_cocoeval` returns the finished COCOeval itself, for evaluation/curves.py (PR curves
from its eval['precision'], the F1-vs-score-threshold curve from its matches: every
report carries the best-F1 threshold under 'f1') and evaluation/plots.py.
pycocotools' traps are handled (docs/reference.md, "pycocotools COCOeval facts"):
  * an empty result list makes `COCO.loadRes` raise IndexError: we build an empty
    result set instead, so every stat is 0 (or -1 where there is no ground truth);
  * results carry the DATASET category ids (category_map) and absolute [x, y, w, h];
  * ground truth without `area` / `iscrowd` gets `area = w * h`, `iscrowd = 0`;
  * an unknown image id is a ValueError naming the annotation file;
  * an area range (or class) with no ground truth gives pycocotools' -1, which we
    keep but list under `stats_without_groundtruth` / mark in the printed table.
"""

import contextlib
import copy
import io
import json
import os
import time
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

from absl import logging
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import tensorflow as tf

from mnv2_det.data import image_check
from mnv2_det.data import preprocess
from mnv2_det.data.category_map import UNKNOWN, CategoryMap
from mnv2_det.evaluation import curves
from mnv2_det.ops import postprocess

# COCOeval.stats order (docs/reference.md, "COCOeval stats order").
STAT_NAMES = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl',
              'ARmax1', 'ARmax10', 'ARmax100', 'ARs', 'ARm', 'ARl')
# pycocotools' value for "no ground truth in this range / class".
NO_GROUNDTRUTH = -1.0
NO_GROUNDTRUTH_NOTE = ('-1 = no ground truth in this area range / class '
                       '(pycocotools convention), not a score')
_MIN_SECONDS = 1e-9  # guards images/s against a zero timer reading
DETECTION_KEYS = postprocess.DETECTION_KEYS

# detect_image_fn(image uint8 [h, w, 3] RGB, original size) -> dict with DETECTION_KEYS
# at batch 1: boxes [1, K, 4] original pixels [ymin, xmin, ymax, xmax], scores [1, K],
# classes [1, K] DATASET category ids (-1 = padding / no id), num_detections [1]. The
# `serving_default` contract of exported models (export/saved_model.py, tflite.py).
ImageDetectFn = Callable[[np.ndarray], Mapping[str, Any]]
# analyze(finished COCOeval, COCO result dicts) -> what to add to the report.
AnalyzeFn = Callable[[COCOeval, List[Dict[str, Any]]], Mapping[str, Any]]


def to_coco_results(source_ids, detections: Mapping[str, Any],
                    category_map: Optional[CategoryMap]) -> List[Dict[str, Any]]:
  """Converts one batch of detections to COCO result dicts.

  Args:
    source_ids: `[B]` int COCO image ids.
    detections: DETECTION_KEYS arrays (numpy or eager tensors), boxes in original
      image pixels `[ymin, xmin, ymax, xmax]`, classes contiguous.
    category_map: contiguous index -> dataset category id table, or None when the
      classes already are dataset ids (exported models; negative = padding).

  Returns:
    `[{image_id, category_id (dataset id), bbox [x, y, w, h] absolute, score}]`;
    detections whose class maps to no dataset id (background, out of range) are
    dropped.
  """
  boxes = np.asarray(detections['detection_boxes'], np.float64)
  scores = np.asarray(detections['detection_scores'], np.float64)
  classes = np.asarray(detections['detection_classes']).astype(np.int64)
  counts = np.asarray(detections['num_detections']).astype(np.int64).reshape([-1])
  results = []
  for b, image_id in enumerate(np.asarray(source_ids).reshape([-1])):
    n = int(counts[b])
    cls = classes[b, :n]
    if category_map is None:
      ids = np.where(cls >= 0, cls, UNKNOWN)
    else:
      to_dataset = category_map.to_dataset
      valid = (cls >= 0) & (cls < len(to_dataset))
      ids = np.full(cls.shape, UNKNOWN, np.int64)
      ids[valid] = to_dataset[cls[valid]]
    for k in np.flatnonzero(ids != UNKNOWN):
      ymin, xmin, ymax, xmax = boxes[b, k]
      results.append({'image_id': int(image_id), 'category_id': int(ids[k]),
                      'bbox': [float(xmin), float(ymin), float(xmax - xmin),
                               float(ymax - ymin)],
                      'score': float(scores[b, k])})
  return results


def load_groundtruth(annotation_file: str) -> COCO:
  """Reads a COCO JSON, filling missing `area` (w * h) and `iscrowd` (0)."""
  if not os.path.isfile(annotation_file):
    raise ValueError(f'annotation file {annotation_file!r} does not exist')
  with open(annotation_file, 'r', encoding='utf-8') as f:
    data = json.load(f)
  return groundtruth_from_dataset(data, annotation_file)


def groundtruth_from_dataset(data: Dict[str, Any], source: str = 'ground truth') -> COCO:
  """A COCO index over an instances dict (`images`, `annotations`, `categories`),
  filling missing `area` (w * h) and `iscrowd` (0); `source` names it in errors."""
  for key in ('images', 'annotations', 'categories'):
    if key not in data:
      raise ValueError(f'{source}: not a COCO instances file (no {key!r})')
  for ann in data['annotations']:
    ann.setdefault('iscrowd', 0)
    if 'area' not in ann:
      ann['area'] = float(ann['bbox'][2] * ann['bbox'][3])
  coco = COCO()
  coco.dataset = data
  with contextlib.redirect_stdout(io.StringIO()):
    coco.createIndex()
  return coco


def run_cocoeval(groundtruth: COCO, results: List[Dict[str, Any]],
                 image_ids: Sequence[int], annotation_file: str = '') -> COCOeval:
  """COCOeval (bbox) on `image_ids`, evaluated, accumulated and summarized (quietly).

  Its `eval['precision']` `[T, R, K, A, M]` and `evalImgs` feed `evaluation.curves`.
  """
  known = set(groundtruth.getImgIds())
  unknown = sorted(({int(i) for i in image_ids} - known) |
                   ({r['image_id'] for r in results} - known))
  if unknown:
    raise ValueError(f'{annotation_file or "ground truth"}: image ids {unknown[:10]} are '
                     'not in the annotation file')
  if results:
    with contextlib.redirect_stdout(io.StringIO()):
      detections = groundtruth.loadRes(copy.deepcopy(results))
  else:  # loadRes([]) raises IndexError: an empty, well-formed result set instead.
    detections = COCO()
    detections.dataset = {'images': list(groundtruth.dataset['images']),
                          'categories': copy.deepcopy(groundtruth.dataset['categories']),
                          'annotations': []}
    with contextlib.redirect_stdout(io.StringIO()):
      detections.createIndex()
  evaluator = COCOeval(groundtruth, detections, 'bbox')
  evaluator.params.imgIds = sorted(int(i) for i in image_ids)
  with contextlib.redirect_stdout(io.StringIO()):
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
  return evaluator


def coco_evaluate(groundtruth: COCO, results: List[Dict[str, Any]],
                  image_ids: Sequence[int], annotation_file: str = '') -> Dict[str, Any]:
  """Runs COCOeval (bbox) on `image_ids`; returns stats and per-class AP.

  Returns dict: `stats` {STAT_NAMES: float}, `stats_without_groundtruth` [names at
  -1], `per_class` [{name, dataset_id, num_groundtruths, AP, AP50}], `f1` (the best
  score threshold by class-mean F1 at IoU 0.5 and its F1, precision, recall:
  `curves.f1_summary`).
  """
  return summarize_cocoeval(run_cocoeval(groundtruth, results, image_ids, annotation_file))


def summarize_cocoeval(evaluator: COCOeval) -> Dict[str, Any]:
  """The `coco_evaluate` dict of a finished `run_cocoeval`."""
  groundtruth = evaluator.cocoGt
  stats = {name: float(v) for name, v in zip(STAT_NAMES, evaluator.stats)}
  precision = evaluator.eval['precision']  # [T, R, K, A, M]; -1 where no gt.
  per_class = []
  for k, cat_id in enumerate(evaluator.params.catIds):
    p_all = precision[:, :, k, curves.AREA_ALL, curves.MAX_DETS_LAST]
    p_50 = precision[curves.IOU_50, :, k, curves.AREA_ALL, curves.MAX_DETS_LAST]
    num_gt = len(groundtruth.getAnnIds(imgIds=evaluator.params.imgIds, catIds=[cat_id],
                                       iscrowd=False))
    per_class.append({
        'name': groundtruth.cats[cat_id].get('name', str(cat_id)),
        'dataset_id': int(cat_id), 'num_groundtruths': num_gt,
        'AP': _mean_valid(p_all), 'AP50': _mean_valid(p_50)})
  return {'stats': stats,
          'stats_without_groundtruth': [n for n, v in stats.items() if v == NO_GROUNDTRUTH],
          'per_class': per_class,
          'f1': curves.f1_summary(curves.f1_curve(evaluator))}


def _mean_valid(values):
  valid = values[values > NO_GROUNDTRUTH]
  return float(np.mean(valid)) if valid.size else NO_GROUNDTRUTH


def read_original_images(groundtruth: COCO, image_dir: str,
                         max_images: Optional[int] = None
                         ) -> Iterable[Tuple[int, np.ndarray]]:
  """Yields `(image id, uint8 [h, w, 3] RGB)` in the annotation file's image order.

  Decoded exactly as the eval pipeline decodes (`preprocess.decode_image_rgb` of
  `image_dir/file_name`). Files that fail `image_check` (missing, empty, corrupt, not
  the annotated size) are skipped with a warning naming them, as the checkpoint path's
  COCO reader does; `_run` reports how many were not evaluated.
  """
  for entry in groundtruth.dataset['images'][:max_images]:
    path = os.path.join(image_dir, entry['file_name'])
    reason = image_check.check_image(path, int(entry['height']), int(entry['width']))
    if reason is not None:
      logging.warning('skipped image %s (id %s): %s', path, entry['id'], reason)
      continue
    yield int(entry['id']), preprocess.decode_image_rgb(tf.io.read_file(path)).numpy()


def evaluate_images(detect_image_fn: ImageDetectFn, annotation_file: str,
                    image_dir: str, max_images: Optional[int] = None,
                    detections_file: Optional[str] = None,
                    analyze: Optional[AnalyzeFn] = None) -> Dict[str, Any]:
  """Runs `detect_image_fn` on every original image of `annotation_file`, then COCOeval.

  Args:
    detect_image_fn: see ImageDetectFn (classes are DATASET ids), e.g. a
      `inference.detector.Detector`.
    annotation_file: COCO JSON; its `images` are read from `image_dir`.
    image_dir: folder the images' `file_name`s are relative to.
    max_images: evaluate only the first N images of the file (None: all).
    detections_file: optional path to write the COCO results JSON.
    analyze: optional `analyze(evaluator, results)` called with the finished COCOeval
      and the COCO results (e.g. `evaluation.plots.write_plots`); the dict it returns
      is added to the report under 'analysis'.

  Returns:
    dict: the `coco_evaluate` keys plus annotation_file, num_images,
    images_not_evaluated (images of the file, or of its first `max_images`, that were
    unreadable and skipped: their warnings name them; COCOeval scores the rest),
    num_detections, detect_seconds and images_per_second (per single-image call,
    the first, which includes tracing, excluded when there are more).
  """
  if max_images is not None and max_images < 1:
    raise ValueError(f'max_images must be >= 1, got {max_images}')
  groundtruth = load_groundtruth(annotation_file)
  results, image_ids, times = [], [], []
  for image_id, image in read_original_images(groundtruth, image_dir, max_images):
    start = time.perf_counter()
    outputs = detect_image_fn(image)
    outputs = {k: np.asarray(outputs[k]) for k in DETECTION_KEYS}
    times.append(time.perf_counter() - start)
    results.extend(to_coco_results([image_id], outputs, None))
    image_ids.append(image_id)
  if not image_ids:
    raise ValueError(f'{annotation_file}: no image could be read from {image_dir} (see '
                     'the warnings)')
  timed = times[1:] if len(times) > 1 else times
  expected = len(groundtruth.dataset['images'][:max_images])
  report = {'annotation_file': annotation_file, 'num_images': len(image_ids),
            'images_not_evaluated': max(expected - len(image_ids), 0),
            'num_detections': len(results)}
  evaluator = run_cocoeval(groundtruth, results, image_ids, annotation_file)
  report.update(summarize_cocoeval(evaluator))
  if analyze is not None:
    report['analysis'] = dict(analyze(evaluator, results))
  report['detect_seconds'] = sum(times)
  report['images_per_second'] = len(timed) / max(sum(timed), _MIN_SECONDS)
  report['note'] = NO_GROUNDTRUTH_NOTE
  if detections_file:
    with open(detections_file, 'w', encoding='utf-8') as f:
      json.dump(results, f)
  return report


def _fmt(value):
  return f'{value:7.3f}' + ('  (no ground truth)' if value == NO_GROUNDTRUTH else '')


def format_stats(stats: Mapping[str, float]) -> List[str]:
  """One `NAME value` line per COCO stat (-1 marked as no ground truth)."""
  return [f'{name:9s}{_fmt(float(value))}' for name, value in stats.items()]


def format_report(report: Mapping[str, Any]) -> str:
  """Human-readable stats by name, per-class table and speed."""
  lines = [f'{report["num_images"]} images, {report["num_detections"]} detections, '
           f'{report["images_per_second"]:.2f} images/s']
  if report.get('images_not_evaluated'):
    lines.append(f'skipped {report["images_not_evaluated"]} unreadable image(s) of '
                 f'{report["annotation_file"]} (named in the warnings); stats cover the rest')
  lines += format_stats(report['stats'])
  lines.append(f'{"class":16s}{"id":>5s}{"#gt":>6s}{"AP":>8s}{"AP50":>8s}')
  for row in report['per_class']:
    mark = '  (no ground truth)' if row['AP'] == NO_GROUNDTRUTH else ''
    lines.append(f'{row["name"][:16]:16s}{row["dataset_id"]:5d}{row["num_groundtruths"]:6d}'
                 f'{row["AP"]:8.3f}{row["AP50"]:8.3f}{mark}')
  lines += format_f1(report.get('f1'))
  if report['stats_without_groundtruth']:
    lines.append(f'note: {NO_GROUNDTRUTH_NOTE}')
  return '\n'.join(lines)


def format_f1(f1: Optional[Mapping[str, Any]]) -> List[str]:
  """The best-F1 score threshold line (none without ground truth)."""
  if not f1 or f1.get('best_score_threshold') is None:
    return []
  return [f'best F1 {f1["best_f1"]:.3f} at score threshold '
          f'{f1["best_score_threshold"]:.3f} (IoU {f1["iou_threshold"]:g}; class means: '
          f'precision {f1["precision"]:.3f}, recall {f1["recall"]:.3f}); for '
          f'tools/export.py --score_threshold']
