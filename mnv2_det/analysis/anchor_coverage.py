"""Anchor coverage: how well an experiment's SSD anchors fit a dataset's boxes.

The boxes are those training matches: the non-crowd boxes of the reader's records
(input_pipeline.Parser drops crowd boxes from the targets), resized into the network
input frame as the parser does without augmentation (`preprocess.scaled_size` and
`preprocess.boxes_to_output_frame`, per distinct image size). Per box:

  best_iou    max IoU with any anchor, by Model Garden's `IouSimilarity` (the op
              ops/matching.py matches with);
  covered     best_iou >= the matcher's `match_threshold`;
  force_only  not covered, but the matcher itself (`matching.assign_targets` on the
              image's boxes, force match on, the task's thresholds) gives it an anchor;
  missed      not covered and no anchor at all: its best anchor went to another box.

`positives` counts, per box, the anchors the matcher makes positive for it.
Size buckets are COCO's (small < 32^2 <= medium < 96^2 <= large) on the box area in
network input pixels. The SSD random crop, when on, changes boxes per step and is
not modelled.
"""

import dataclasses
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from official.vision.ops import iou_similarity

from mnv2_det.data import preprocess
from mnv2_det.modeling import factory
from mnv2_det.ops import matching

# COCO area ranges (pycocotools areaRng), in pixels^2.
SMALL_MAX_AREA = 32**2
LARGE_MIN_AREA = 96**2
SIZE_BUCKETS = ('small', 'medium', 'large')
# Boxes per IoU chunk (chunk x num_anchors float32 in memory at once).
IOU_CHUNK = 4096
# Images per matcher call of positives_per_box.
MATCH_CHUNK = 64
# Edges (sqrt of box area, input pixels) of the coverage-vs-size curve: half octaves.
SIZE_BIN_EDGES = tuple(float(2**(k / 2)) for k in range(2, 23))


@dataclasses.dataclass
class GtBoxes:
  """Non-crowd ground truth of a dataset in one network input frame, a row per box.

  Attributes:
    image: `[M]` int64 index of the box's record.
    classes: `[M]` int32 contiguous class indices 1..K.
    boxes: `[M, 4]` float32 normalized `[ymin, xmin, ymax, xmax]` of the network
      input frame (as the parser's gt_boxes).
    height_px, width_px: `[M]` float32 box size in network input pixels.
  """
  image: np.ndarray
  classes: np.ndarray
  boxes: np.ndarray
  height_px: np.ndarray
  width_px: np.ndarray

  @property
  def area_px(self) -> np.ndarray:
    return self.height_px * self.width_px

  def __len__(self) -> int:
    return int(self.classes.shape[0])


def input_frame_boxes(records, input_hw: Tuple[int, int], resize_mode: str) -> GtBoxes:
  """The records' non-crowd boxes in the `input_hw` frame, as the parser maps them.

  Args:
    records: coco_reader.ImageRecord list.
    input_hw: network input `(H, W)`.
    resize_mode: 'fixed' or 'keep_aspect' (validated with the parser's rule).
  """
  out = preprocess.validate_resize(resize_mode, list(input_hw))
  keeps = [~r.is_crowd for r in records]
  counts = np.array([int(k.sum()) for k in keeps], np.int64)
  image = np.repeat(np.arange(len(records), dtype=np.int64), counts)
  if not image.size:
    empty = np.zeros([0], np.float32)
    return GtBoxes(image, np.zeros([0], np.int32), np.zeros([0, 4], np.float32), empty,
                   empty.copy())
  content = np.concatenate([r.boxes[k] for r, k in zip(records, keeps)]).astype(np.float32)
  image_hw = np.array([(r.height, r.width) for r in records], np.int32)[image]

  def one_box(args):  # the parser's two calls, on one box of one image
    box, hw = args
    size = preprocess.scaled_size(hw, out, resize_mode)
    return preprocess.boxes_to_output_frame(box[tf.newaxis], size, out)[0]

  boxes = tf.vectorized_map(one_box, (tf.constant(content), tf.constant(image_hw)))
  boxes = boxes.numpy().astype(np.float32)
  return GtBoxes(
      image=image,
      classes=np.concatenate([r.classes[k] for r, k in zip(records, keeps)]).astype(
          np.int32),
      boxes=boxes,
      height_px=(boxes[:, 2] - boxes[:, 0]) * out[0],
      width_px=(boxes[:, 3] - boxes[:, 1]) * out[1])


def best_iou(boxes: np.ndarray, anchors: np.ndarray) -> np.ndarray:
  """`[M]` float32 best IoU of each `[M, 4]` box with the `[N, 4]` anchors (same frame)."""
  similarity = iou_similarity.IouSimilarity()
  anchors = tf.constant(anchors, tf.float32)
  out = [np.zeros([0], np.float32)]
  for start in range(0, boxes.shape[0], IOU_CHUNK):
    chunk = tf.constant(boxes[start:start + IOU_CHUNK], tf.float32)
    out.append(tf.reduce_max(similarity(anchors, chunk), axis=0).numpy())  # [N, c]
  return np.concatenate(out)


def positives_per_box(gt: GtBoxes, anchors: np.ndarray, match_threshold: float,
                      unmatched_threshold: float) -> np.ndarray:
  """`[M]` int64: anchors the matcher makes positive for each box, image by image.

  Images go to `matching.assign_targets` MATCH_CHUNK at a time (tf.map_fn), their box
  lists padded with class-0 rows, which the matcher drops as it drops the pipeline's
  padding.
  """
  anchors_t = tf.constant(anchors, tf.float32)

  def one_image(args):
    boxes, classes = args
    return matching.assign_targets(anchors_t, boxes, classes,
                                   match_threshold=match_threshold,
                                   unmatched_threshold=unmatched_threshold
                                   )['matched_gt_index']

  @tf.function(input_signature=[tf.TensorSpec([None, None, 4], tf.float32),
                                tf.TensorSpec([None, None], tf.int32)])
  def matched_index(boxes, classes):  # [B, M, 4], [B, M] -> [B, N]
    return tf.map_fn(one_image, (boxes, classes), fn_output_signature=tf.int32)

  counts = np.zeros([len(gt)], np.int64)
  starts = np.flatnonzero(np.r_[True, gt.image[1:] != gt.image[:-1]]) if len(gt) else []
  stops = np.r_[starts[1:], len(gt)].astype(np.int64) if len(gt) else []
  for c in range(0, len(starts), MATCH_CHUNK):
    spans = list(zip(starts[c:c + MATCH_CHUNK], stops[c:c + MATCH_CHUNK]))
    width = max(stop - start for start, stop in spans)
    boxes = np.zeros([len(spans), width, 4], np.float32)
    classes = np.zeros([len(spans), width], np.int32)  # 0: padding
    for j, (start, stop) in enumerate(spans):
      boxes[j, :stop - start] = gt.boxes[start:stop]
      classes[j, :stop - start] = gt.classes[start:stop]
    index = matched_index(boxes, classes).numpy()
    for j, (start, stop) in enumerate(spans):
      row = index[j]
      counts[start:stop] = np.bincount(row[row >= 0], minlength=width)[:stop - start]
  return counts


def size_bucket(area_px: np.ndarray) -> np.ndarray:
  """`[M]` int: 0 small, 1 medium, 2 large (index into SIZE_BUCKETS)."""
  return (area_px >= SMALL_MAX_AREA).astype(np.int64) + (area_px >= LARGE_MIN_AREA)


def _counts(covered, force_only, missed, best, mask) -> dict:
  n = int(mask.sum())
  share = lambda v: (float(v[mask].sum()) / n) if n else None
  return {'boxes': n, 'covered': int(covered[mask].sum()),
          'force_only': int(force_only[mask].sum()), 'missed': int(missed[mask].sum()),
          'covered_share': share(covered), 'force_only_share': share(force_only),
          'missed_share': share(missed),
          'median_best_iou': float(np.median(best[mask])) if n else None}


def summarize(gt: GtBoxes, best: np.ndarray, positives: np.ndarray,
              match_threshold: float, class_names: Sequence[str]) -> dict:
  """Coverage counts in total, per class (`class_names[i]` for index i + 1), per size
  bucket and per size bin (SIZE_BIN_EDGES, sqrt of the area in input pixels)."""
  covered = best >= match_threshold
  force_only = ~covered & (positives > 0)
  missed = ~covered & (positives == 0)
  args = (covered, force_only, missed, best)
  buckets = size_bucket(gt.area_px)
  side = np.sqrt(gt.area_px)
  edges = np.array((0.0,) + SIZE_BIN_EDGES + (np.inf,))
  bins = np.digitize(side, edges[1:-1])
  return {
      'match_threshold': float(match_threshold),
      'total': _counts(*args, np.ones(len(gt), bool)),
      'no_positive_anchor': int((positives == 0).sum()),
      'per_class': {name: _counts(*args, gt.classes == i + 1)
                    for i, name in enumerate(class_names)},
      'per_size': {name: _counts(*args, buckets == b)
                   for b, name in enumerate(SIZE_BUCKETS)},
      'by_size_bin': {'edges': [float(e) for e in edges],
                      'bins': [_counts(*args, bins == b)
                               for b in range(len(edges) - 1)]},
  }


def alternatives(records, model_config, resize_mode: str, match_threshold: float,
                 input_sizes: Sequence[Tuple[int, int]], min_scales: Sequence[float],
                 base_buckets: np.ndarray) -> List[dict]:
  """Best-IoU coverage for each (input size, anchor min_scale) of `model_config`
  (other anchor settings unchanged), total and per size bucket of the BASE input
  (`base_buckets`, so every row counts the same boxes)."""
  rows = []
  for hw in input_sizes:
    gt = input_frame_boxes(records, hw, resize_mode)
    for min_scale in min_scales:
      if not min_scale > 0:
        raise ValueError(f'min_scale must be > 0, got {min_scale}')
      config = model_config.replace(
          input_size=[int(hw[0]), int(hw[1]), 3],
          anchor=model_config.anchor.replace(min_scale=float(min_scale)))
      anchors = factory.build_anchors(config)
      covered = best_iou(gt.boxes, anchors) >= match_threshold
      share = lambda m: float(covered[m].mean()) if m.any() else None
      rows.append({
          'input_size': [int(hw[0]), int(hw[1])], 'min_scale': float(min_scale),
          'num_anchors': int(anchors.shape[0]),
          'covered_share': share(np.ones(len(gt), bool)),
          'per_size': {name: share(base_buckets == b)
                       for b, name in enumerate(SIZE_BUCKETS)}})
  return rows


def coverage(records, model_config, resize_mode: str, match_threshold: float,
             unmatched_threshold: float, class_names: Sequence[str]):
  """(GtBoxes, summary dict, anchors) for the experiment's own input and anchors."""
  hw = tuple(int(s) for s in model_config.input_size[:2])
  gt = input_frame_boxes(records, hw, resize_mode)
  anchors = factory.build_anchors(model_config)
  best = best_iou(gt.boxes, anchors)
  positives = positives_per_box(gt, anchors, match_threshold, unmatched_threshold)
  summary = summarize(gt, best, positives, match_threshold, class_names)
  summary['num_anchors'] = int(anchors.shape[0])
  return gt, summary, anchors
