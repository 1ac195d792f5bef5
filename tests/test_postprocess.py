"""Tests for mnv2_det.ops.postprocess: brute-force NMS reference, coordinate mapping."""

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.ops import box_coder
from mnv2_det.ops import postprocess as pp

# Identity image_info for a 300x400 image fed unscaled and unpadded.
_IDENTITY_HW = (300.0, 400.0)
_IDENTITY_INFO = [list(_IDENTITY_HW), list(_IDENTITY_HW), [1.0, 1.0], [0.0, 0.0]]


def _np_decode(codes, anchors):
  """Faster R-CNN decode with scale factors (10, 10, 5, 5), written independently."""
  sy, sx, sh, sw = box_coder.SCALE_FACTORS
  ha = anchors[:, 2] - anchors[:, 0]
  wa = anchors[:, 3] - anchors[:, 1]
  yc = anchors[:, 0] + 0.5 * ha + codes[..., 0] / sy * ha
  xc = anchors[:, 1] + 0.5 * wa + codes[..., 1] / sx * wa
  h = np.exp(codes[..., 2] / sh) * ha
  w = np.exp(codes[..., 3] / sw) * wa
  return np.stack([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2], axis=-1)


def _np_iou(a, b):
  inter_h = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
  inter_w = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = inter_h * inter_w
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union if union > 0 else 0.0


def _area(box):
  return max(0.0, box[2] - box[0]) * max(0.0, box[3] - box[1])


def _brute_force(logits, boxes_px, score_thr, iou_thr, max_per_class, max_total,
                 top_k):
  """Per-class greedy NMS over the global top-k (anchor, class) pairs, one image.

  Args:
    logits: [N, C] (channel 0 background). boxes_px: [N, 4] final pixel boxes.

  Returns:
    list of (score, class, box) sorted by descending score.
  """
  num_fg = logits.shape[1] - 1
  scores = 1.0 / (1.0 + np.exp(-logits[:, 1:].astype(np.float64)))
  flat = scores.reshape(-1)
  order = np.argsort(-flat, kind='stable')[:top_k]
  detections = []
  for cls in range(1, num_fg + 1):
    cands = [i for i in order if i % num_fg + 1 == cls and flat[i] > score_thr
             and _area(boxes_px[i // num_fg]) > 0]
    kept = []
    for i in cands:  # Already in descending score order.
      box = boxes_px[i // num_fg]
      if all(_np_iou(box, boxes_px[j // num_fg]) <= iou_thr for j in kept):
        kept.append(i)
      if len(kept) == max_per_class:
        break
    detections += [(flat[i], cls, boxes_px[i // num_fg]) for i in kept]
  detections.sort(key=lambda d: -d[0])
  return detections[:max_total]


def _random_inputs(seed, batch, num_anchors, num_classes):
  rng = np.random.default_rng(seed)
  # Centers spread over (and slightly beyond) the image, sizes 0.1..0.5: many overlaps.
  cy, cx = rng.uniform(-0.05, 1.05, (2, num_anchors))
  h, w = rng.uniform(0.1, 0.5, (2, num_anchors))
  anchors = np.stack([cy - h / 2, cx - w / 2, cy + h / 2, cx + w / 2], -1)
  codes = rng.normal(0.0, 1.0, (batch, num_anchors, 4))
  # Continuous logits: ties have probability zero.
  logits = rng.normal(-1.0, 2.0, (batch, num_anchors, num_classes))
  return (logits.astype(np.float32), codes.astype(np.float32),
          anchors.astype(np.float32))


@pytest.mark.parametrize('seed', [0, 1, 2, 3])
@pytest.mark.parametrize(
    'max_per_class,max_total,top_k',
    [(4, 12, 150),   # Per-class cap binds and top-k truncates (300 pairs).
     (20, 15, 1000)])  # No per-class cap: the early-exit NMS path.
def test_matches_brute_force_class_aware_nms(seed, max_per_class, max_total, top_k):
  batch, num_anchors, num_classes = 2, 60, 6
  score_thr, iou_thr = 0.2, 0.5
  logits, codes, anchors = _random_inputs(seed, batch, num_anchors, num_classes)
  out = pp.postprocess(
      tf.constant(logits), tf.constant(codes), tf.constant(anchors),
      tf.constant([_IDENTITY_INFO] * batch), input_size=(300, 400),
      score_threshold=score_thr, iou_threshold=iou_thr,
      max_per_class=max_per_class, max_total=max_total, pre_nms_top_k=top_k)
  out = {k: v.numpy() for k, v in out.items()}
  assert out['detection_boxes'].shape == (batch, max_total, 4)
  for b in range(batch):
    scale = np.array(_IDENTITY_HW * 2)
    boxes_px = np.clip(_np_decode(codes[b].astype(np.float64), anchors) * scale, 0.0,
                       scale)
    expected = _brute_force(logits[b], boxes_px, score_thr, iou_thr, max_per_class,
                            max_total, top_k)
    num = int(out['num_detections'][b])
    assert num == len(expected) > 0
    np.testing.assert_allclose(out['detection_scores'][b, :num],
                               [d[0] for d in expected], rtol=1e-5)
    np.testing.assert_array_equal(out['detection_classes'][b, :num],
                                  [d[1] for d in expected])
    np.testing.assert_allclose(out['detection_boxes'][b, :num],
                               np.stack([d[2] for d in expected]), atol=2e-3)
    # Padding is zeros.
    assert not out['detection_scores'][b, num:].any()
    assert not out['detection_classes'][b, num:].any()
    assert not out['detection_boxes'][b, num:].any()


def test_map_boxes_to_original_known_image_info():
  # A 480x640 image scaled by 0.5 to 240x320, cropped at offset (y, x) = (16, 8)
  # (Model Garden: input = original * scale - offset), padded to 256x320.
  image_info = tf.constant([[[480.0, 640.0], [240.0, 320.0], [0.5, 0.5], [16.0, 8.0]]])
  boxes = tf.constant([[[0.25, 0.5, 0.75, 1.0]]])
  # Input pixels: [0.25*256, 0.5*320, 0.75*256, 1.0*320] = [64, 160, 192, 320];
  # + offset -> [80, 168, 208, 328]; / 0.5 -> [160, 336, 416, 656];
  # xmax clipped to the 640-wide original -> [160, 336, 416, 640].
  expected = [[[160.0, 336.0, 416.0, 640.0]]]
  for input_size in [(256, 320), tf.constant([256, 320]), tf.constant([[256, 320]])]:
    mapped = pp.map_boxes_to_original(boxes, image_info, input_size)
    np.testing.assert_allclose(mapped.numpy(), expected, rtol=1e-6)


def test_postprocess_returns_original_pixels():
  # Same geometry as above through the full pipeline: zero codes decode to the anchor.
  image_info = tf.constant([[[480.0, 640.0], [240.0, 320.0], [0.5, 0.5], [16.0, 8.0]]])
  anchors = tf.constant([[0.25, 0.5, 0.75, 1.0], [0.0, 0.0, 0.1, 0.1]])
  logits = tf.constant([[[0.0, -9.0, 3.0], [0.0, -9.0, -9.0]]])  # Anchor 0, class 2.
  out = pp.postprocess(logits, tf.zeros([1, 2, 4]), anchors, image_info,
                       input_size=(256, 320), score_threshold=0.5)
  assert out['num_detections'].numpy().tolist() == [1]
  assert out['detection_classes'].numpy()[0, 0] == 2
  np.testing.assert_allclose(out['detection_scores'].numpy()[0, 0],
                             1.0 / (1.0 + np.exp(-3.0)), rtol=1e-6)
  np.testing.assert_allclose(out['detection_boxes'].numpy()[0, 0],
                             [160.0, 336.0, 416.0, 640.0], atol=1e-3)


def test_boxes_outside_the_image_are_dropped():
  # Anchor 0 lies right of the image (x in [1.1, 1.3]): clipped to zero width.
  anchors = tf.constant([[0.1, 1.1, 0.3, 1.3], [0.1, 0.1, 0.3, 0.3]])
  logits = tf.constant([[[0.0, 5.0], [0.0, 1.0]]])
  out = pp.postprocess(logits, tf.zeros([1, 2, 4]), anchors,
                       tf.constant([_IDENTITY_INFO]), input_size=(300, 400))
  assert out['num_detections'].numpy().tolist() == [1]
  np.testing.assert_allclose(out['detection_boxes'].numpy()[0, 0],
                             [30.0, 40.0, 90.0, 120.0], atol=1e-3)


def test_all_scores_below_threshold_gives_no_detections():
  batch, num_anchors, num_classes = 2, 30, 5
  _, codes, anchors = _random_inputs(0, batch, num_anchors, num_classes)
  # sigmoid(-30) ~ 9e-14 < the default threshold 1e-8.
  logits = tf.fill([batch, num_anchors, num_classes], -30.0)
  out = pp.postprocess(logits, tf.constant(codes), tf.constant(anchors),
                       tf.constant([_IDENTITY_INFO] * batch), input_size=(300, 400))
  assert out['num_detections'].numpy().tolist() == [0, 0]
  assert out['detection_boxes'].shape == (batch, pp.MAX_TOTAL, 4)
  assert out['detection_classes'].dtype == tf.int32
  assert not out['detection_scores'].numpy().any()
  assert not out['detection_boxes'].numpy().any()


def test_background_channel_is_ignored():
  # Only the background channel is confident: nothing is detected.
  logits = tf.constant([[[10.0, -30.0, -30.0]]])
  out = pp.postprocess(logits, tf.zeros([1, 1, 4]), tf.constant([[0.1, 0.1, 0.5, 0.5]]),
                       tf.constant([_IDENTITY_INFO]), input_size=(300, 400))
  assert out['num_detections'].numpy().tolist() == [0]


def test_graph_mode_with_dynamic_shapes_and_float16_matches_eager():
  batch, num_anchors, num_classes = 2, 40, 4
  logits, codes, anchors = _random_inputs(7, batch, num_anchors, num_classes)
  info = tf.constant([_IDENTITY_INFO] * batch)
  kwargs = dict(max_per_class=3, max_total=10, pre_nms_top_k=50)

  @tf.function(input_signature=[
      tf.TensorSpec([None, None, num_classes], tf.float16),
      tf.TensorSpec([None, None, 4], tf.float16),
      tf.TensorSpec([None, 4], tf.float32),
      tf.TensorSpec([None, 4, 2], tf.float32),
      tf.TensorSpec([2], tf.int32)])
  def graph_fn(cls_logits, box_preds, anchor_boxes, image_info, input_size):
    return pp.postprocess(cls_logits, box_preds, anchor_boxes, image_info, input_size,
                          **kwargs)

  half = lambda x: tf.constant(x, tf.float16)
  graph_out = graph_fn(half(logits), half(codes), tf.constant(anchors), info,
                       tf.constant([300, 400]))
  eager_out = pp.postprocess(half(logits), half(codes), tf.constant(anchors), info,
                             (300, 400), **kwargs)
  assert graph_out['detection_boxes'].dtype == tf.float32
  for key in eager_out:
    np.testing.assert_allclose(graph_out[key].numpy(), eager_out[key].numpy(),
                               rtol=1e-6)


def test_invalid_arguments_raise():
  logits = tf.zeros([1, 3, 1])
  with pytest.raises(ValueError, match='channels'):
    pp.postprocess(logits, tf.zeros([1, 3, 4]), tf.zeros([3, 4]),
                   tf.constant([_IDENTITY_INFO]), (300, 400))
  with pytest.raises(ValueError, match='max_total=0'):
    pp.postprocess(tf.zeros([1, 3, 2]), tf.zeros([1, 3, 4]), tf.zeros([3, 4]),
                   tf.constant([_IDENTITY_INFO]), (300, 400), max_total=0)
