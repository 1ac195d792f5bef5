"""Tests for mnv2_det.ops.matching (OD API argmax matcher + force match)."""

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.ops import anchors as anchors_lib
from mnv2_det.ops import box_coder
from mnv2_det.ops import matching

# Two anchors that split the image's top-left / bottom-right quarters.
QUARTER_ANCHORS = np.array([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]], np.float32)


def _numpy(result):
  return {k: v.numpy() for k, v in result.items()}


def _iou(box_a, box_b):
  inter_h = max(0.0, min(box_a[2], box_b[2]) - max(box_a[0], box_b[0]))
  inter_w = max(0.0, min(box_a[3], box_b[3]) - max(box_a[1], box_b[1]))
  inter = inter_h * inter_w
  area_a = (box_a[2] - box_a[0]) * (box_a[3] - box_a[1])
  area_b = (box_b[2] - box_b[0]) * (box_b[3] - box_b[1])
  return 0.0 if inter == 0 else inter / (area_a + area_b - inter)


def _reference_match(anchors, gt_boxes, gt_classes, match_t, unmatched_t, force):
  """OD API ArgMaxMatcher, one anchor / ground truth at a time. Returns row per anchor."""
  valid = [r for r in range(len(gt_classes)) if gt_classes[r] >= 1]
  result = np.full(len(anchors), matching.UNMATCHED)
  if not valid:
    return result
  iou = np.array([[_iou(a, gt_boxes[r]) for r in valid] for a in anchors])  # [N, M']
  for n in range(len(anchors)):
    best = int(np.argmax(iou[n]))  # first maximum, like tf.argmax
    if iou[n, best] >= match_t:
      result[n] = valid[best]
    elif iou[n, best] >= unmatched_t:
      result[n] = matching.IGNORED
  if force:
    # Walk gts from last to first so that the lowest gt index wins a shared anchor.
    for k in reversed(range(len(valid))):
      result[int(np.argmax(iou[:, k]))] = valid[k]
  return result


def test_force_match_below_threshold():
  # gt [0, 0, 0.3, 0.3] vs anchor 0: IoU = 0.09 / 0.25 = 0.36 < 0.5; vs anchor 1: 0.
  gt_boxes = np.array([[0.0, 0.0, 0.3, 0.3]], np.float32)
  gt_classes = np.array([7], np.int32)
  forced = _numpy(matching.assign_targets(QUARTER_ANCHORS, gt_boxes, gt_classes))
  np.testing.assert_array_equal(forced['cls_targets'], [7, matching.BACKGROUND_CLASS])
  np.testing.assert_array_equal(forced['positive_mask'], [1.0, 0.0])
  np.testing.assert_array_equal(forced['matched_gt_index'], [0, matching.UNMATCHED])
  # Box target of anchor 0 (centre 0.25, size 0.5) for the gt (centre 0.15, size 0.3):
  # ty = tx = 10 * (0.15 - 0.25) / 0.5 = -2; th = tw = 5 * log(0.3 / 0.5) = -2.5541281.
  np.testing.assert_allclose(forced['box_targets'],
                             [[-2.0, -2.0, -2.5541281, -2.5541281], [0, 0, 0, 0]],
                             atol=1e-5)
  unforced = _numpy(matching.assign_targets(
      QUARTER_ANCHORS, gt_boxes, gt_classes, force_match=False))
  np.testing.assert_array_equal(unforced['positive_mask'], [0.0, 0.0])
  np.testing.assert_array_equal(unforced['cls_targets'], [0, 0])


def test_exactly_half_iou_is_positive():
  anchors = np.array([[0.0, 0.0, 1.0, 1.0],    # IoU with gt = 0.5 / 1 = 0.5 exactly
                      [0.0, 0.0, 1.0, 0.5]],   # IoU = 0.25 / 0.75 = 1/3
                     np.float32)
  gt_boxes = np.array([[0.0, 0.0, 0.5, 1.0]], np.float32)  # dyadic: exact in float32
  result = _numpy(matching.assign_targets(anchors, gt_boxes, np.array([2], np.int32),
                                          force_match=False))
  np.testing.assert_array_equal(result['positive_mask'], [1.0, 0.0])
  np.testing.assert_array_equal(result['cls_targets'], [2, 0])
  np.testing.assert_array_equal(result['matched_gt_index'], [0, matching.UNMATCHED])


def test_between_thresholds_is_ignored():
  # Anchor 1 has IoU 1/3 with the gt: ignored for thresholds (0.5, 0.3), negative for
  # the default (0.5, 0.5).
  anchors = np.array([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 0.5]], np.float32)
  gt_boxes = np.array([[0.0, 0.0, 0.5, 1.0]], np.float32)
  result = _numpy(matching.assign_targets(anchors, gt_boxes, np.array([2], np.int32),
                                          unmatched_threshold=0.3))
  np.testing.assert_array_equal(result['matched_gt_index'], [0, matching.IGNORED])
  np.testing.assert_array_equal(result['cls_weights'], [1.0, 0.0])
  np.testing.assert_array_equal(result['cls_targets'], [2, matching.BACKGROUND_CLASS])
  np.testing.assert_array_equal(result['box_targets'][1], [0, 0, 0, 0])
  with pytest.raises(ValueError, match='unmatched_threshold=0.6'):
    matching.assign_targets(anchors, gt_boxes, [2], unmatched_threshold=0.6)


@pytest.mark.parametrize('num_padded', [0, 3])
def test_no_ground_truth_is_all_background(num_padded):
  # M = 0, or M = 3 rows that are all padding (class 0 / -1) sitting on the anchors.
  gt_boxes = np.tile(QUARTER_ANCHORS[:1], (num_padded, 1)).reshape(-1, 4)
  gt_classes = np.array([0, -1, 0][:num_padded], np.int32)
  result = _numpy(matching.assign_targets(QUARTER_ANCHORS, gt_boxes, gt_classes))
  np.testing.assert_array_equal(result['cls_targets'], [0, 0])
  np.testing.assert_array_equal(result['positive_mask'], [0.0, 0.0])
  np.testing.assert_array_equal(result['cls_weights'], [1.0, 1.0])
  np.testing.assert_array_equal(result['box_targets'], np.zeros([2, 4]))
  np.testing.assert_array_equal(result['matched_gt_index'], [-1, -1])


def test_padded_rows_ignored_and_indices_kept():
  # Row 0 is padding that coincides with anchor 0 (would be IoU 1); row 1 is padding
  # too; row 2 is a real gt equal to anchor 1. Only anchor 1 may match, to row 2.
  gt_boxes = np.array([QUARTER_ANCHORS[0], [0.0, 0.0, 0.0, 0.0], QUARTER_ANCHORS[1]],
                      np.float32)
  gt_classes = np.array([0, -1, 5], np.int32)
  result = _numpy(matching.assign_targets(QUARTER_ANCHORS, gt_boxes, gt_classes))
  np.testing.assert_array_equal(result['cls_targets'], [0, 5])
  np.testing.assert_array_equal(result['matched_gt_index'], [matching.UNMATCHED, 2])
  np.testing.assert_allclose(result['box_targets'], np.zeros([2, 4]), atol=1e-5)


def test_shared_best_anchor_goes_to_lowest_gt_index():
  # Two identical gts whose best anchor (anchor 0, IoU 0.36) is below threshold: the
  # force match gives anchor 0 to gt 0 only, as the OD API does.
  gt_boxes = np.array([[0.0, 0.0, 0.3, 0.3], [0.0, 0.0, 0.3, 0.3]], np.float32)
  result = _numpy(matching.assign_targets(QUARTER_ANCHORS, gt_boxes,
                                          np.array([3, 4], np.int32)))
  np.testing.assert_array_equal(result['matched_gt_index'], [0, matching.UNMATCHED])
  np.testing.assert_array_equal(result['cls_targets'], [3, 0])


@pytest.mark.parametrize('thresholds,force', [((0.5, 0.5), True), ((0.5, 0.4), True),
                                              ((0.5, 0.5), False)])
def test_matches_brute_force_reference(thresholds, force):
  anchors = anchors_lib.generate_ssd_anchors(
      anchors_lib.ssd_feature_map_shapes((128, 128)))  # 330 anchors
  rng = np.random.default_rng(3)
  # Rows 0-3: random boxes (mostly below 0.5 IoU with every anchor); rows 4-7: anchors
  # jittered by <= 0.01 (IoU well above 0.5 with their anchor).
  yx = rng.uniform(0.0, 0.7, size=(4, 2))
  random_boxes = np.concatenate([yx, yx + rng.uniform(0.05, 0.3, size=(4, 2))], -1)
  near_anchor = anchors[[10, 100, 250, 300]] + rng.uniform(-0.01, 0.01, size=(4, 4))
  gt_boxes = np.concatenate([random_boxes, near_anchor]).astype(np.float32)
  gt_classes = np.array([3, 0, 1, 9, -1, 2, 2, 4], np.int32)  # rows 1, 4 padding
  result = _numpy(matching.assign_targets(anchors, gt_boxes, gt_classes, *thresholds,
                                          force_match=force))
  rows = _reference_match(anchors.astype(np.float64), gt_boxes.astype(np.float64),
                          gt_classes, *thresholds, force)
  np.testing.assert_array_equal(result['matched_gt_index'], rows)
  positive = rows >= 0
  # Every real gt gets an anchor under force match; without it the jittered ones do.
  must_match = {0, 2, 3, 5, 6, 7} if force else {5, 6, 7}
  assert must_match <= set(rows[positive])
  np.testing.assert_array_equal(result['positive_mask'], positive.astype(np.float32))
  np.testing.assert_array_equal(result['cls_targets'],
                                np.where(positive, gt_classes[rows], 0))
  np.testing.assert_array_equal(result['cls_weights'], (rows != matching.IGNORED) * 1.0)
  expected_boxes = box_coder.encode(gt_boxes[np.maximum(rows, 0)], anchors).numpy()
  expected_boxes[~positive] = 0.0
  np.testing.assert_allclose(result['box_targets'], expected_boxes, atol=1e-5)


def test_inside_tf_data_map():
  anchors = anchors_lib.generate_ssd_anchors(
      anchors_lib.ssd_feature_map_shapes((128, 128)))
  images = [
      (np.zeros([0, 4], np.float32), np.zeros([0], np.int32)),
      (np.array([[0.1, 0.1, 0.4, 0.5]], np.float32), np.array([1], np.int32)),
      (np.array([[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.6], [0, 0, 0, 0]], np.float32),
       np.array([2, 3, 0], np.int32)),
  ]

  def generator():
    yield from images

  dataset = tf.data.Dataset.from_generator(generator, output_signature=(
      tf.TensorSpec([None, 4], tf.float32), tf.TensorSpec([None], tf.int32)))
  dataset = dataset.map(lambda boxes, classes: matching.assign_targets(
      anchors, boxes, classes))
  assert dataset.element_spec['cls_targets'].shape == (330,)
  assert dataset.element_spec['box_targets'].shape == (330, 4)
  outputs = list(dataset.as_numpy_iterator())
  assert len(outputs) == 3
  for (boxes, classes), got in zip(images, outputs):
    expected = _numpy(matching.assign_targets(anchors, boxes, classes))
    for key, value in expected.items():
      np.testing.assert_array_equal(got[key], value)
  assert outputs[0]['positive_mask'].sum() == 0
  assert outputs[1]['positive_mask'].sum() >= 1
  assert set(outputs[2]['matched_gt_index'][outputs[2]['positive_mask'] > 0]) == {0, 1}
