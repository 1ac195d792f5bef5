"""Tests for mnv2_det.ops.box_coder (Faster R-CNN coding, OD API SSD parity)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.ops import box_coder


def _random_boxes(rng, shape, min_size=0.02):
  """Valid normalized yxyx boxes of the given leading shape."""
  yx = rng.uniform(0.0, 0.8, size=shape + (2,))
  hw = rng.uniform(min_size, 0.6, size=shape + (2,))
  return np.concatenate([yx, yx + hw], axis=-1).astype(np.float32)


def _od_api_encode(boxes, anchors, factors):
  """The OD API FasterRcnnBoxCoder formulas in float64, EPSILON on every size."""
  boxes = boxes.astype(np.float64)
  anchors = anchors.astype(np.float64)
  ha = anchors[..., 2] - anchors[..., 0] + 1e-8
  wa = anchors[..., 3] - anchors[..., 1] + 1e-8
  ya = (anchors[..., 0] + anchors[..., 2]) / 2
  xa = (anchors[..., 1] + anchors[..., 3]) / 2
  h = boxes[..., 2] - boxes[..., 0] + 1e-8
  w = boxes[..., 3] - boxes[..., 1] + 1e-8
  y = (boxes[..., 0] + boxes[..., 2]) / 2
  x = (boxes[..., 1] + boxes[..., 3]) / 2
  return np.stack([factors[0] * (y - ya) / ha, factors[1] * (x - xa) / wa,
                   factors[2] * np.log(h / ha), factors[3] * np.log(w / wa)], -1)


def test_constants():
  assert box_coder.SCALE_FACTORS == (10.0, 10.0, 5.0, 5.0)
  assert box_coder.EPSILON == 1e-8
  assert box_coder.MAX_LOG_SIZE_RATIO == pytest.approx(math.log(1000.0 / 16.0))


def test_golden_encode_decode():
  # Anchor centre (0.25, 0.25), size 0.5 x 0.5; box centre (0.3, 0.4), size 0.4 x 0.4.
  # ty = 10 * (0.3 - 0.25) / 0.5 = 1.0;  tx = 10 * (0.4 - 0.25) / 0.5 = 3.0;
  # th = tw = 5 * log(0.4 / 0.5) = 5 * log(0.8) = -1.1157178.
  anchor = tf.constant([[0.0, 0.0, 0.5, 0.5]])
  box = tf.constant([[0.1, 0.2, 0.5, 0.6]])
  codes = box_coder.encode(box, anchor)
  np.testing.assert_allclose(codes.numpy(), [[1.0, 3.0, -1.1157178, -1.1157178]],
                             atol=1e-5)
  np.testing.assert_allclose(box_coder.decode(codes, anchor).numpy(), box.numpy(),
                             atol=1e-6)
  # Unit scale factors give the raw offsets: 0.1, 0.3, log 0.8 = -0.2231436.
  raw = box_coder.encode(box, anchor, scale_factors=(1.0, 1.0, 1.0, 1.0))
  np.testing.assert_allclose(raw.numpy(), [[0.1, 0.3, -0.2231436, -0.2231436]],
                             atol=1e-6)


def test_encode_matches_od_api_formula_with_broadcasting():
  rng = np.random.default_rng(0)
  anchors = _random_boxes(rng, (50,))
  boxes = _random_boxes(rng, (3, 50))
  codes = box_coder.encode(tf.constant(boxes), anchors)  # [3, 50, 4] vs [50, 4]
  assert codes.shape == (3, 50, 4)
  assert codes.dtype == tf.float32
  expected = _od_api_encode(boxes, anchors[None], box_coder.SCALE_FACTORS)
  np.testing.assert_allclose(codes.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_round_trip_batched():
  rng = np.random.default_rng(1)
  anchors = _random_boxes(rng, (64,))
  boxes = _random_boxes(rng, (2, 64))
  for factors in (box_coder.SCALE_FACTORS, (1.0, 2.0, 3.0, 4.0)):
    codes = box_coder.encode(boxes, anchors, factors)
    decoded = box_coder.decode(codes, tf.constant(anchors), factors)
    assert decoded.shape == (2, 64, 4)
    np.testing.assert_allclose(decoded.numpy(), boxes, atol=1e-5)


def test_zero_codes_decode_to_anchors():
  rng = np.random.default_rng(2)
  anchors = _random_boxes(rng, (10,))
  decoded = box_coder.decode(tf.zeros([4, 10, 4]), anchors)
  np.testing.assert_allclose(decoded.numpy(), np.broadcast_to(anchors, (4, 10, 4)),
                             atol=1e-6)


def test_decode_clamps_huge_size_codes():
  anchor = tf.constant([[0.4, 0.4, 0.6, 0.6]])  # 0.2 x 0.2, centre (0.5, 0.5)
  decoded = box_coder.decode(tf.constant([[0.0, 0.0, 1e4, 1e4]]), anchor).numpy()
  assert np.all(np.isfinite(decoded))
  # Clamped at log(62.5): side = 0.2 * 62.5 = 12.5 around the centre 0.5.
  np.testing.assert_allclose(decoded, [[-5.75, -5.75, 6.75, 6.75]], rtol=1e-5)
  # Codes just below the clamp are untouched: th = 5 * log(10) -> side 2.0.
  th = 5.0 * math.log(10.0)
  decoded = box_coder.decode(tf.constant([[0.0, 0.0, th, th]]), anchor).numpy()
  np.testing.assert_allclose(decoded, [[-0.5, -0.5, 1.5, 1.5]], atol=1e-5)


def test_invalid_arguments():
  with pytest.raises(ValueError, match='scale_factors'):
    box_coder.encode(tf.zeros([1, 4]), tf.zeros([1, 4]), scale_factors=(10.0, 10.0))
  with pytest.raises(ValueError, match='scale_factors'):
    box_coder.decode(tf.zeros([1, 4]), tf.zeros([1, 4]), scale_factors=(1, 1, 0, 1))
  with pytest.raises(ValueError, match='last dimension'):
    box_coder.encode(tf.zeros([1, 3]), tf.zeros([1, 4]))
