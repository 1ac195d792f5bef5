"""Tests for mnv2_det.ops.losses: golden values, OD API mining semantics, training."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.ops import box_coder
from mnv2_det.ops import losses


def _softplus(x):
  return math.log1p(math.exp(x))


def _grid_boxes(num_boxes, cols=10):
  """Disjoint square cells of a grid: pairwise IoU 0, so mining NMS removes nothing."""
  rows = -(-num_boxes // cols)
  cell = 1.0 / max(rows, cols)
  boxes = [[r * cell, c * cell, (r + 0.8) * cell, (c + 0.8) * cell]
           for r in range(rows) for c in range(cols)]
  return np.array(boxes[:num_boxes], np.float32)


def _mine(loss, positive, boxes=None, **kwargs):
  """Runs hard_example_mining on numpy [B, N] inputs; returns the [B, N] numpy mask."""
  loss = np.asarray(loss, np.float32)
  if boxes is None:
    boxes = np.broadcast_to(_grid_boxes(loss.shape[1]), loss.shape + (4,))
  mask = losses.hard_example_mining(tf.constant(loss), tf.constant(boxes),
                                    tf.constant(positive, tf.float32), **kwargs)
  return mask.numpy()


def _top_negatives(loss, positive, count):
  negatives = [i for i in np.argsort(-loss, kind='stable') if not positive[i]]
  return set(negatives[:count])


def test_sigmoid_classification_loss_golden():
  # Target class 1 -> one-hot [0, 1, 0]; per channel CE = softplus(x) for label 0 and
  # softplus(-x) for label 1: softplus(0) + softplus(-2) + softplus(-1)
  # = 0.693147 + 0.126928 + 0.313262 = 1.133337.
  # A target of -1 (Model Garden's unmatched value) is background: one-hot [1, 0, 0]:
  # softplus(-0) + softplus(2) + softplus(-1) = 0.693147 + 2.126928 + 0.313262.
  logits = tf.constant([[[0.0, 2.0, -1.0], [0.0, 2.0, -1.0]]])
  loss = losses.sigmoid_classification_loss(logits, tf.constant([[1, -1]]))
  expected = [[_softplus(0) + _softplus(-2) + _softplus(-1),
               _softplus(0) + _softplus(2) + _softplus(-1)]]
  np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-6)
  np.testing.assert_allclose(expected[0][0], 1.133337, atol=1e-6)


def test_smooth_l1_golden():
  # |diff| = [0.5, 2, 0, 1]: 0.5*0.25 + (2 - 0.5) + 0 + 0.5*1 = 0.125 + 1.5 + 0.5 = 2.125.
  preds = tf.constant([[[0.5, -2.0, 3.0, 1.0]] * 2])
  targets = tf.constant([[[0.0, 0.0, 3.0, 0.0]] * 2])
  loss = losses.smooth_l1_localization_loss(preds, targets, tf.constant([[1.0, 0.0]]))
  np.testing.assert_allclose(loss.numpy(), [[2.125, 0.0]], rtol=1e-6)


def test_focal_loss_golden():
  # Anchor 0: logits [0, 0], class 1 -> targets [0, 1]. p = 0.5, CE = ln 2 and
  # (1 - p_t)^2 = 0.25 on both channels: 0.75*0.25*ln2 + 0.25*0.25*ln2 = 0.25 ln2.
  # Anchor 1: logits [2, -1], background -> targets [1, 0].
  #   ch0 positive: 0.25 * (1 - s(2))^2 * softplus(-2)  = 0.25*0.119203^2*0.126928
  #   ch1 negative: 0.75 * s(-1)^2 * softplus(-1)      = 0.75*0.268941^2*0.313262
  # Total 0.173287 + 0.000451 + 0.016994 = 0.190732, one match -> normalizer 1.
  sig = lambda x: 1.0 / (1.0 + math.exp(-x))
  expected = (0.25 * math.log(2.0)
              + 0.25 * (1.0 - sig(2.0)) ** 2 * _softplus(-2.0)
              + 0.75 * sig(-1.0) ** 2 * _softplus(-1.0))
  assert abs(expected - 0.190732) < 1e-6
  out = losses.ssd_loss(
      cls_logits=tf.constant([[[0.0, 0.0], [2.0, -1.0]]]),
      box_preds=tf.zeros([1, 2, 4]), cls_targets=tf.constant([[1, 0]]),
      box_targets=tf.zeros([1, 2, 4]), positive_mask=tf.constant([[1.0, 0.0]]),
      anchors=tf.constant(_grid_boxes(2)), classification='focal')
  np.testing.assert_allclose(out['cls_loss'].numpy(), expected, rtol=1e-5)
  np.testing.assert_allclose(out['box_loss'].numpy(), 0.0)
  np.testing.assert_allclose(out['num_positives'].numpy(), 1.0)


def _plain_nms_survivors(boxes, scores, iou_threshold):
  kept = tf.image.non_max_suppression(boxes, scores, len(boxes), iou_threshold)
  mask = np.zeros(len(boxes), bool)
  mask[kept.numpy()] = True
  return mask


def _clustered_boxes(rng, num_boxes):
  """Random boxes plus near-duplicate chains (IoU ~0.99), exact copies, rows sharing
  one ymin (like an anchor grid), and zero-height boxes."""
  cy, cx = rng.uniform(0.0, 1.0, (2, num_boxes))
  h, w = rng.uniform(0.02, 0.6, (2, num_boxes))
  boxes = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
  for i in range(0, num_boxes // 2, 5):  # Chains a -> a+jitter -> a+2*jitter.
    jitter = rng.uniform(-1.0, 1.0, 4) * 0.002 * h[i]
    boxes[i + 1] = boxes[i] + jitter
    boxes[i + 2] = boxes[i] + 2.0 * jitter
    boxes[i + 3] = boxes[i]  # Exact duplicate.
  row = num_boxes // 2
  boxes[row:row + 40, 0] = 0.3  # 40 boxes with the same ymin, as in an anchor row.
  boxes[row:row + 40, 2] = 0.4
  boxes[row + 40:row + 44, 2] = boxes[row + 40:row + 44, 0]  # Zero height.
  return boxes.astype(np.float32)


@pytest.mark.parametrize('seed', [0, 1, 2])
@pytest.mark.parametrize('iou_threshold,window', [(0.99, 32), (0.99, 2), (0.9, 4),
                                                  (0.5, 32)])
def test_greedy_nms_survivors_equals_plain_nms(seed, iou_threshold, window):
  rng = np.random.default_rng(seed)
  boxes = _clustered_boxes(rng, 300)
  # Quantized scores: many exact ties, which both must break by lower index.
  scores = np.round(rng.uniform(0.0, 1.0, 300), 1).astype(np.float32)
  got = losses.greedy_nms_survivors(tf.constant(boxes), tf.constant(scores),
                                    iou_threshold, window=window).numpy()
  expected = _plain_nms_survivors(boxes, scores, iou_threshold)
  assert (~expected).sum() > 0  # Something is suppressed: the test has teeth.
  np.testing.assert_array_equal(got, expected)


def test_mining_equals_od_api_reference_on_clustered_boxes():
  """Full mining against a direct transcription of the OD API steps (plain NMS)."""
  rng = np.random.default_rng(4)
  num_anchors = 300
  boxes = np.stack([_clustered_boxes(rng, num_anchors) for _ in range(2)])
  loss = np.round(rng.uniform(0.0, 1.0, (2, num_anchors)), 2).astype(np.float32)
  positive = (rng.uniform(size=(2, num_anchors)) < 0.03).astype(np.float32)
  mask = _mine(loss, positive, boxes=boxes, num_hard_examples=200)
  for b in range(2):
    selected = tf.image.non_max_suppression(boxes[b], loss[b], 200, 0.99).numpy()
    pos = [i for i in selected if positive[b, i]]
    neg = [i for i in selected if not positive[b, i]]
    expected = set(pos) | set(neg[:max(3, 3 * len(pos))])
    assert set(np.flatnonzero(mask[b])) == expected


def test_mining_ratio_minimum_and_positives():
  rng = np.random.default_rng(0)
  num_anchors = 40
  loss = rng.uniform(0.0, 1.0, (2, num_anchors))
  positive = np.zeros((2, num_anchors))
  positive[0, [5, 17]] = 1.0  # Image 0: 2 positives -> 3 * 2 = 6 negatives allowed.
  loss[0, [5, 17]] = [0.001, 0.002]  # Lowest losses: kept only because positive.
  mask = _mine(loss, positive)
  assert set(np.flatnonzero(mask[0])) == {5, 17} | _top_negatives(loss[0], positive[0], 6)
  # Image 1: no positive -> min_negatives_per_image = 3 hardest negatives.
  assert set(np.flatnonzero(mask[1])) == _top_negatives(loss[1], positive[1], 3)


def test_mining_keeps_all_negatives_when_ratio_allows_and_floors_ratio():
  rng = np.random.default_rng(1)
  loss = rng.uniform(0.0, 1.0, (1, 30))
  positive = np.zeros((1, 30))
  positive[0, :10] = 1.0  # 10 positives allow 30 negatives; only 20 exist.
  assert _mine(loss, positive).sum() == 30
  positive = np.zeros((1, 30))
  positive[0, [0, 1, 2]] = 1.0  # floor(1.5 * 3) = 4 negatives.
  mask = _mine(loss, positive, max_negatives_per_positive=1.5)
  assert set(np.flatnonzero(mask[0])) == {0, 1, 2} | _top_negatives(loss[0], positive[0], 4)


def test_mining_nms_suppresses_near_duplicates():
  loss = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]])
  boxes = _grid_boxes(5)
  boxes[1] = boxes[0]  # IoU 1 > 0.99 with the harder box 0: never mined.
  mask = _mine(loss, np.zeros((1, 5)), boxes=boxes[np.newaxis])
  np.testing.assert_array_equal(mask, [[1, 0, 1, 1, 0]])


def test_mining_num_hard_examples_limits_candidates():
  # OD API semantics: only the num_hard_examples hardest (after NMS) are candidates,
  # so a positive ranked below them is not selected.
  loss = np.array([[0.9, 0.8, 0.7, 0.6, 0.5, 0.4]])
  positive = np.array([[0, 1, 0, 0, 1, 1]], np.float32)  # Ranks 2, 5 and 6.
  mask = _mine(loss, positive, num_hard_examples=4)
  np.testing.assert_array_equal(mask, [[1, 1, 1, 1, 0, 0]])


def test_mining_ignores_invalid_anchors_and_works_in_graph_mode():
  loss = np.array([[0.9, 0.8, 0.7, 0.6, 0.5]], np.float32)
  valid = np.array([[0, 1, 1, 1, 1]], np.float32)

  @tf.function(input_signature=[tf.TensorSpec([None, None], tf.float32)] * 2 +
               [tf.TensorSpec([None, None, 4], tf.float32),
                tf.TensorSpec([None, None], tf.float32)])
  def mine(loss_t, pos_t, boxes_t, valid_t):
    return losses.hard_example_mining(loss_t, boxes_t, pos_t, valid_mask=valid_t)

  mask = mine(loss, np.zeros_like(loss), _grid_boxes(5)[np.newaxis], valid)
  np.testing.assert_array_equal(mask.numpy(), [[0, 1, 1, 1, 0]])


def _fixed_batch(seed=0, batch=2, num_anchors=48, num_classes=4):
  rng = np.random.default_rng(seed)
  anchors = _grid_boxes(num_anchors)
  cls_targets = np.zeros((batch, num_anchors), np.int32)
  positive = np.zeros((batch, num_anchors), np.float32)
  for b in range(batch):
    idx = rng.choice(num_anchors, 4, replace=False)
    cls_targets[b, idx] = rng.integers(1, num_classes, 4)
    positive[b, idx] = 1.0
  box_targets = rng.normal(0.0, 1.0, (batch, num_anchors, 4)) * positive[..., None]
  return dict(cls_targets=tf.constant(cls_targets),
              box_targets=tf.constant(box_targets, tf.float32),
              positive_mask=tf.constant(positive), anchors=tf.constant(anchors))


def test_sigmoid_hem_loss_equals_manual_mined_sum():
  batch = _fixed_batch()
  rng = np.random.default_rng(3)
  logits = tf.constant(rng.normal(0.0, 1.0, (2, 48, 4)), tf.float32)
  preds = tf.constant(rng.normal(0.0, 0.5, (2, 48, 4)), tf.float32)
  out = losses.ssd_loss(logits, preds, **batch)
  cls = losses.sigmoid_classification_loss(logits, batch['cls_targets'])
  loc = losses.smooth_l1_localization_loss(preds, batch['box_targets'],
                                           batch['positive_mask'])
  decoded = box_coder.decode(preds, batch['anchors'])
  mask = losses.hard_example_mining(cls, decoded, batch['positive_mask'])
  # 8 positives in the batch (4 per image), 12 mined negatives per image.
  assert mask.numpy().sum() == 8 + 2 * 12
  np.testing.assert_allclose(out['cls_loss'].numpy(),
                             tf.reduce_sum(cls * mask).numpy() / 8.0, rtol=1e-5)
  np.testing.assert_allclose(out['box_loss'].numpy(),
                             tf.reduce_sum(loc * mask).numpy() / 8.0, rtol=1e-5)
  np.testing.assert_allclose(out['total_loss'].numpy(),
                             (out['cls_loss'] + out['box_loss']).numpy(), rtol=1e-6)


def test_no_positives_normalizes_by_one_and_float16_inputs():
  batch = _fixed_batch()
  batch['positive_mask'] = tf.zeros([2, 48])
  batch['cls_targets'] = tf.zeros([2, 48], tf.int32)
  logits = tf.zeros([2, 48, 4], tf.float16)
  out = losses.ssd_loss(logits, tf.zeros([2, 48, 4], tf.float16), **batch)
  assert out['total_loss'].dtype == tf.float32
  # 3 negatives per image, each 4 * ln 2 (logits 0), divided by max(0, 1) = 1.
  np.testing.assert_allclose(out['cls_loss'].numpy(), 2 * 3 * 4 * math.log(2.0),
                             rtol=1e-5)
  assert out['box_loss'].numpy() == 0.0


def test_unknown_classification_raises():
  with pytest.raises(ValueError, match="'softmax'"):
    losses.ssd_loss(tf.zeros([1, 2, 2]), tf.zeros([1, 2, 4]), tf.zeros([1, 2], tf.int32),
                    tf.zeros([1, 2, 4]), tf.zeros([1, 2]), tf.zeros([2, 4]),
                    classification='softmax')


@pytest.mark.parametrize('classification', ['sigmoid_hem', 'focal'])
def test_loss_falls_when_optimizing_free_variables(classification):
  batch = _fixed_batch(seed=5)
  rng = np.random.default_rng(6)
  logits = tf.Variable(rng.normal(0.0, 1.0, (2, 48, 4)), dtype=tf.float32)
  preds = tf.Variable(rng.normal(0.0, 1.0, (2, 48, 4)), dtype=tf.float32)
  # Large step: the loss is divided by the 8 matches, so gradients are small.
  learning_rate = 2.0

  @tf.function
  def step():
    with tf.GradientTape() as tape:
      loss = losses.ssd_loss(logits, preds, classification=classification,
                             **batch)['total_loss']
    for var, grad in zip((logits, preds), tape.gradient(loss, [logits, preds])):
      var.assign_sub(learning_rate * grad)
    return loss

  history = [float(step()) for _ in range(50)]
  assert all(np.isfinite(history))
  assert history[-1] < 0.3 * history[0], history[::10]
