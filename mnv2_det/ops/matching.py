"""SSD target assignment: IoU argmax matching with force match, then box encoding.

Semantics of the TF Object Detection API SSD (docs/reference.md, "Matcher"): ArgMaxMatcher on
IoU similarity with matched_threshold 0.5, unmatched_threshold 0.5 and
force_match_for_each_row (each ground truth claims its best anchor). Per anchor:

* best IoU >= match_threshold                      -> positive, matched to its argmax gt;
* unmatched_threshold <= best IoU < match_threshold -> ignored (only if thresholds differ);
* best IoU < unmatched_threshold                   -> negative (background);
* then force match: every gt's best anchor (first index on ties) becomes positive for
  that gt; an anchor that is the best of several gts goes to the lowest gt index.

So an IoU of exactly 0.5 is positive. The matching itself is Model Garden's
`official.vision.ops.box_matcher.BoxMatcher` (same thresholds, same tie breaks and same
force match as the OD API; its "columns" are our ground truths) on
`official.vision.ops.iou_similarity.IouSimilarity`. BoxMatcher has no notion of padded
ground truth (a padded column would still force-match an anchor), so padded rows
(class < FIRST_CLASS) are removed before matching. With no valid ground truth every anchor
is background.

Written for a tf.data map function: single image, no batch dim, graph mode, dynamic M.
"""

from typing import Dict

import tensorflow as tf

from official.vision.ops import box_matcher
from official.vision.ops import iou_similarity

from mnv2_det.ops import box_coder

# Class index of background; real classes are 1..num_classes-1 (project convention).
BACKGROUND_CLASS = 0
FIRST_CLASS = 1
# matched_gt_index values of anchors without a ground truth.
UNMATCHED = -1
IGNORED = -2
# OD API SSD thresholds (docs/reference.md, "Matcher").
MATCH_THRESHOLD = 0.5
UNMATCHED_THRESHOLD = 0.5
# Match-type indicators given to BoxMatcher, one per IoU interval:
# [-inf, unmatched), [unmatched, match), [match, inf).
_NEGATIVE = -1
_IGNORE = -2
_POSITIVE = 1


def assign_targets(
    anchors,
    gt_boxes,
    gt_classes,
    match_threshold: float = MATCH_THRESHOLD,
    unmatched_threshold: float = UNMATCHED_THRESHOLD,
    force_match: bool = True,
) -> Dict[str, tf.Tensor]:
  """Assigns classification and box-regression targets to anchors for one image.

  Args:
    anchors: float [N, 4] normalized [ymin, xmin, ymax, xmax] (N static).
    gt_boxes: float [M, 4] normalized [ymin, xmin, ymax, xmax]; M may be 0 or dynamic.
    gt_classes: int [M] contiguous class indices 1..C-1; rows with class < 1 are
      padding and ignored entirely.
    match_threshold: IoU at or above which an anchor is positive.
    unmatched_threshold: IoU below which an anchor is negative; anchors in
      [unmatched_threshold, match_threshold) are ignored. Must be <= match_threshold.
    force_match: give every valid ground truth its best anchor even below threshold
      (OD API force_match_for_each_row).

  Returns:
    dict with
      cls_targets: int32 [N], matched gt class, BACKGROUND_CLASS (0) otherwise.
      box_targets: float32 [N, 4], `box_coder.encode(matched gt box, anchor)` for
        positives ([ty, tx, th, tw], SCALE_FACTORS), zeros otherwise.
      positive_mask: float32 [N], 1.0 for positives.
      cls_weights: float32 [N], 0.0 for ignored anchors, 1.0 otherwise.
      matched_gt_index: int32 [N], row of `gt_boxes` (original indexing, padding
        included) for positives, UNMATCHED (-1) for negatives, IGNORED (-2) for ignored.
  """
  if unmatched_threshold > match_threshold:
    raise ValueError(
        f'unmatched_threshold={unmatched_threshold} must be <= '
        f'match_threshold={match_threshold}')
  anchors = tf.cast(tf.convert_to_tensor(anchors), tf.float32)
  if anchors.shape.rank != 2 or anchors.shape[-1] != box_coder.CODE_SIZE:
    raise ValueError(f'anchors must be [N, 4], got shape {anchors.shape}')
  gt_boxes = tf.reshape(tf.cast(gt_boxes, tf.float32), [-1, box_coder.CODE_SIZE])
  gt_classes = tf.reshape(tf.cast(gt_classes, tf.int32), [-1])

  # Drop padding rows; keep their original row numbers for matched_gt_index.
  valid_rows = tf.cast(tf.where(gt_classes >= FIRST_CLASS)[:, 0], tf.int32)  # [M']
  valid_boxes = tf.gather(gt_boxes, valid_rows)  # [M', 4]
  valid_classes = tf.gather(gt_classes, valid_rows)  # [M']
  num_valid = tf.shape(valid_rows)[0]

  similarity = iou_similarity.IouSimilarity()(anchors, valid_boxes)  # [N, M']
  matcher = box_matcher.BoxMatcher(
      thresholds=[float(unmatched_threshold), float(match_threshold)],
      indicators=[_NEGATIVE, _IGNORE, _POSITIVE],
      force_match_for_each_col=force_match)
  matched_col, indicator = matcher(similarity)  # [N], [N] int32
  positive = tf.equal(indicator, _POSITIVE)
  ignored = tf.equal(indicator, _IGNORE)

  # Non-positive anchors point at a sentinel row M' appended to every gathered table,
  # which keeps the gathers in range when M' == 0.
  gather_index = tf.where(positive, matched_col, num_valid)  # [N]
  matched_boxes = tf.gather(
      tf.concat([valid_boxes, tf.zeros([1, box_coder.CODE_SIZE], tf.float32)], 0),
      gather_index)  # [N, 4]
  cls_targets = tf.gather(
      tf.concat([valid_classes, [BACKGROUND_CLASS]], 0), gather_index)  # [N]
  matched_rows = tf.gather(tf.concat([valid_rows, [UNMATCHED]], 0), gather_index)
  matched_gt_index = tf.where(
      ignored, tf.constant(IGNORED, tf.int32), matched_rows)  # [N]

  encoded = box_coder.encode(matched_boxes, anchors)  # [N, 4]
  box_targets = tf.where(positive[:, tf.newaxis], encoded, tf.zeros_like(encoded))
  return {
      'cls_targets': cls_targets,
      'box_targets': box_targets,
      'positive_mask': tf.cast(positive, tf.float32),
      'cls_weights': 1.0 - tf.cast(ignored, tf.float32),
      'matched_gt_index': matched_gt_index,
  }
