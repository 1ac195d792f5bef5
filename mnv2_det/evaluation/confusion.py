"""Detection confusion matrix at one IoU and one score threshold, with a background class.

Rows are the ground-truth class, columns the predicted class; the last row and column
are background. Per image, detections with score >= the score threshold are matched to
non-crowd ground truth one-to-one, detections in descending score order (mergesort, as
COCOeval), in two passes:
  1. same class: each detection takes the unmatched ground truth of its own class with
     the highest IoU >= the IoU threshold (COCOeval's matching at that IoU): the
     diagonal;
  2. across classes: each detection still unmatched takes the unmatched ground truth of
     any class with the highest IoU >= the threshold: `[true class, predicted class]`.
Then every ground truth left is missed, `[its class, background]`; every detection left
is spurious, `[background, its class]`, unless it overlaps a crowd region by the IoU
threshold (COCO's crowd IoU: intersection over the detection's area), when it is
counted in `crowd_ignored` instead (COCOeval ignores those too). Boxes are COCO
absolute `[x, y, width, height]`; IoU is pycocotools' `maskUtils.iou`.
"""

from typing import Any, Dict, List, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO

from mnv2_det.data.category_map import BACKGROUND_NAME


def _iou(detection_boxes: np.ndarray, gt_boxes: np.ndarray, crowd: Sequence[int]):
  """`[D, G]` IoU (pycocotools), zeros when either side is empty."""
  if len(detection_boxes) == 0 or len(gt_boxes) == 0:
    return np.zeros([len(detection_boxes), len(gt_boxes)])
  return np.asarray(mask_utils.iou(detection_boxes.tolist(), gt_boxes.tolist(),
                                   list(crowd)), np.float64).reshape(
                                       [len(detection_boxes), len(gt_boxes)])


def _match(iou: np.ndarray, det_classes, gt_classes, iou_threshold: float, same_class: bool,
           det_free: np.ndarray, gt_free: np.ndarray) -> List[tuple]:
  """Greedy pass in detection order; marks matches in the free masks; returns pairs."""
  pairs = []
  for d in np.flatnonzero(det_free):
    candidates = gt_free & (iou[d] >= iou_threshold)
    if same_class:
      candidates &= gt_classes == det_classes[d]
    if not candidates.any():
      continue
    g = int(np.argmax(np.where(candidates, iou[d], -1.0)))
    det_free[d], gt_free[g] = False, False
    pairs.append((int(d), g))
  return pairs


def confusion_matrix(groundtruth: COCO, results: Sequence[Mapping[str, Any]],
                     image_ids: Sequence[int], score_threshold: float,
                     iou_threshold: float = 0.5) -> Dict[str, Any]:
  """Counts of the module docstring's matching over `image_ids`.

  Args:
    groundtruth: COCO index (evaluation.coco.load_groundtruth); its categories, sorted
      by id, are the classes.
    results: COCO result dicts `{image_id, category_id, bbox [x, y, w, h], score}`;
      categories not in `groundtruth` are ignored (as COCOeval ignores them).
    image_ids: the evaluated images (results of other images are ignored).
    score_threshold: detections with score >= it take part.
    iou_threshold: the matching IoU.

  Returns dict: `labels` [K class names + 'background'], `dataset_ids` [K], `matrix`
  `[(K + 1), (K + 1)]` int lists (rows ground truth, columns prediction), `rows`,
  `columns`, `score_threshold`, `iou_threshold`, `crowd_ignored` (detections not
  counted because they fall on a crowd region).
  """
  cat_ids = sorted(groundtruth.getCatIds())
  index = {c: i for i, c in enumerate(cat_ids)}
  background = len(cat_ids)
  matrix = np.zeros([background + 1, background + 1], np.int64)
  wanted = {int(i) for i in image_ids}
  by_image: Dict[int, list] = {i: [] for i in wanted}
  for r in results:
    if (int(r['image_id']) in wanted and r['category_id'] in index and
        float(r['score']) >= score_threshold):
      by_image[int(r['image_id'])].append(r)
  crowd_ignored = 0
  for image_id in sorted(wanted):
    anns = [a for a in groundtruth.imgToAnns.get(image_id, []) if a['category_id'] in index]
    gts = [a for a in anns if not a.get('iscrowd', 0)]
    crowds = [a for a in anns if a.get('iscrowd', 0)]
    dets = by_image[image_id]
    order = np.argsort([-float(r['score']) for r in dets], kind='mergesort')
    dets = [dets[i] for i in order]
    det_boxes = np.asarray([r['bbox'] for r in dets], np.float64).reshape([-1, 4])
    det_classes = np.asarray([index[r['category_id']] for r in dets], np.int64)
    gt_boxes = np.asarray([a['bbox'] for a in gts], np.float64).reshape([-1, 4])
    gt_classes = np.asarray([index[a['category_id']] for a in gts], np.int64)
    iou = _iou(det_boxes, gt_boxes, [0] * len(gts))
    det_free = np.ones([len(dets)], bool)
    gt_free = np.ones([len(gts)], bool)
    for same_class in (True, False):
      for d, g in _match(iou, det_classes, gt_classes, iou_threshold, same_class,
                         det_free, gt_free):
        matrix[gt_classes[g], det_classes[d]] += 1
    for g in np.flatnonzero(gt_free):
      matrix[gt_classes[g], background] += 1
    crowd_boxes = np.asarray([a['bbox'] for a in crowds], np.float64).reshape([-1, 4])
    on_crowd = (_iou(det_boxes, crowd_boxes, [1] * len(crowds)) >= iou_threshold).any(1)
    for d in np.flatnonzero(det_free):
      if on_crowd[d]:
        crowd_ignored += 1
      else:
        matrix[background, det_classes[d]] += 1
  names = [str(groundtruth.cats[c].get('name', c)) for c in cat_ids]
  return {'labels': names + [BACKGROUND_NAME], 'dataset_ids': [int(c) for c in cat_ids],
          'rows': 'ground truth', 'columns': 'prediction',
          'matrix': matrix.tolist(), 'score_threshold': float(score_threshold),
          'iou_threshold': float(iou_threshold), 'crowd_ignored': int(crowd_ignored)}
