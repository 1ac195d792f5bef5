"""Tests for mnv2_det.ops.anchors (OD API ssd_anchor_generator semantics)."""

import math

import numpy as np
import pytest
import tensorflow as tf

from official.vision.ops import anchor as mg_anchor

from mnv2_det.ops import anchors

SQRT2 = math.sqrt(2.0)
SQRT3 = math.sqrt(3.0)
SHAPES_320 = [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)]


def _brute_force_anchors(feature_map_shapes, specs, base_hw):
  """Plain loops over layer -> y -> x -> spec; one box at a time, in float64."""
  boxes = []
  for (grid_h, grid_w), layer_specs in zip(feature_map_shapes, specs):
    for i in range(grid_h):
      for j in range(grid_w):
        yc = (i + 0.5) / grid_h
        xc = (j + 0.5) / grid_w
        for scale, ratio in layer_specs:
          h = scale / math.sqrt(ratio) * base_hw[0]
          w = scale * math.sqrt(ratio) * base_hw[1]
          boxes.append([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2])
  return np.array(boxes)


def test_anchors_per_location():
  assert anchors.anchors_per_location() == [3, 6, 6, 6, 6, 6]
  assert anchors.anchors_per_location(reduce_boxes_in_lowest_layer=False) == [6] * 6
  # No interpolated anchor: 5 aspect ratios per location above the lowest layer.
  assert anchors.anchors_per_location(
      interpolated_scale_aspect_ratio=0.0) == [3, 5, 5, 5, 5, 5]
  assert anchors.anchors_per_location(num_layers=1) == [3]


def test_box_specs_default():
  specs = anchors.ssd_box_specs()
  # Scales = linspace(0.2, 0.95, 6) = 0.2, 0.35, 0.5, 0.65, 0.8, 0.95 (then 1.0).
  assert specs[0] == [(0.1, 1.0), (0.2, 2.0), (0.2, 0.5)]
  np.testing.assert_allclose([s for s, _ in specs[1][:5]], [0.35] * 5)
  assert [ar for _, ar in specs[1]] == [1.0, 2.0, 0.5, 3.0, 1.0 / 3, 1.0]
  # Extra anchor: sqrt(s_k * s_{k+1}); last layer uses the appended 1.0.
  np.testing.assert_allclose(specs[1][5][0], math.sqrt(0.35 * 0.5))
  np.testing.assert_allclose(specs[5][5][0], math.sqrt(0.95 * 1.0))


def test_ssd_320_count_and_shapes():
  shapes = anchors.ssd_feature_map_shapes((320, 320))
  assert shapes == SHAPES_320
  boxes = anchors.generate_ssd_anchors(shapes)
  # 3 * 20^2 + 6 * (10^2 + 5^2 + 3^2 + 2^2 + 1^2) = 1200 + 834 = 2034
  # (docs/reference.md, "SSDLite in the paper").
  assert boxes.shape == (2034, 4)
  assert boxes.dtype == np.float32


def test_golden_two_1x1_layers():
  # num_layers=2: scales = linspace(0.2, 0.95, 2) = [0.2, 0.95], then 1.0. One cell per
  # layer, so every centre is (0.5, 0.5); box = 0.5 -/+ (h/2, w/2).
  got = anchors.generate_ssd_anchors([(1, 1), (1, 1)], num_layers=2)
  expected = np.array([
      # Layer 0, reduced: (0.1, 1.0): h = w = 0.1.
      [0.45, 0.45, 0.55, 0.55],
      # (0.2, 2.0): h/2 = 0.2/sqrt2/2 = 0.0707107, w/2 = 0.2*sqrt2/2 = 0.1414214.
      [0.4292893, 0.3585786, 0.5707107, 0.6414214],
      # (0.2, 0.5): the same box transposed.
      [0.3585786, 0.4292893, 0.6414214, 0.5707107],
      # Layer 1, s = 0.95; (0.95, 1): h = w = 0.95.
      [0.025, 0.025, 0.975, 0.975],
      # (0.95, 2): h/2 = 0.95/sqrt2/2 = 0.3358757, w/2 = 0.95*sqrt2/2 = 0.6717514.
      [0.1641243, -0.1717514, 0.8358757, 1.1717514],
      # (0.95, 0.5): transposed.
      [-0.1717514, 0.1641243, 1.1717514, 0.8358757],
      # (0.95, 3): h/2 = 0.95/sqrt3/2 = 0.2742414, w/2 = 0.95*sqrt3/2 = 0.8227241.
      [0.2257586, -0.3227241, 0.7742414, 1.3227241],
      # (0.95, 1/3): transposed.
      [-0.3227241, 0.2257586, 1.3227241, 0.7742414],
      # Interpolated (sqrt(0.95 * 1.0) = 0.9746794, 1): half size 0.4873397.
      [0.0126603, 0.0126603, 0.9873397, 0.9873397],
  ])
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_golden_2x2_grid_order():
  # One layer, scale 0.5, aspect 1 plus the interpolated sqrt(0.5 * 1.0) = 0.7071068.
  # Centres (0.25 | 0.75) per axis; x varies faster than y, the spec fastest.
  got = anchors.generate_ssd_anchors(
      [(2, 2)], num_layers=1, scales=[0.5], aspect_ratios=(1.0,),
      reduce_boxes_in_lowest_layer=False)
  half = math.sqrt(0.5) / 2  # 0.3535534
  expected = []
  for yc, xc in [(0.25, 0.25), (0.25, 0.75), (0.75, 0.25), (0.75, 0.75)]:
    expected.append([yc - 0.25, xc - 0.25, yc + 0.25, xc + 0.25])  # scale 0.5 tiles
    expected.append([yc - half, xc - half, yc + half, xc + half])
  # E.g. anchor 2 is cell (y=0, x=1), scale 0.5: [0, 0.5, 0.5, 1].
  np.testing.assert_allclose(got[2], [0.0, 0.5, 0.5, 1.0], atol=1e-7)
  np.testing.assert_allclose(got, np.array(expected), atol=1e-6)


def test_golden_2x3_nonsquare_grid():
  # Grid H=2, W=3: stride (1/2, 1/3); centres y in {0.25, 0.75}, x in {1/6, 1/2, 5/6}.
  # Scale 0.3, aspect 1, nothing else: boxes 0.3 x 0.3, half 0.15.
  got = anchors.generate_ssd_anchors(
      [(2, 3)], num_layers=1, scales=[0.3], aspect_ratios=(1.0,),
      interpolated_scale_aspect_ratio=0.0, reduce_boxes_in_lowest_layer=False)
  assert got.shape == (6, 4)
  # Anchor 1 = row 0, column 1: centre (0.25, 0.5).
  np.testing.assert_allclose(got[1], [0.1, 0.35, 0.4, 0.65], atol=1e-6)
  # Anchor 3 = row 1, column 0: centre (0.75, 1/6) -> x in [1/6 - 0.15, 1/6 + 0.15].
  np.testing.assert_allclose(got[3], [0.6, 1 / 60, 0.9, 19 / 60], atol=1e-6)
  # Anchor 5 = row 1, column 2: centre (0.75, 5/6).
  np.testing.assert_allclose(got[5], [0.6, 41 / 60, 0.9, 59 / 60], atol=1e-6)


def test_nonsquare_image_gives_pixel_square_anchors():
  image_h, image_w = 320, 640
  shapes = anchors.ssd_feature_map_shapes((image_h, image_w))
  assert shapes[0] == (20, 40)
  boxes = anchors.generate_ssd_anchors(shapes, image_shape=(image_h, image_w))
  # Base size becomes (min/H, min/W) = (1, 0.5): an aspect-1 anchor of scale 0.1 on
  # the first layer is 0.1 x 0.05 normalized = 32 x 32 pixels.
  np.testing.assert_allclose(boxes[0, 2] - boxes[0, 0], 0.1, atol=1e-6)
  np.testing.assert_allclose(boxes[0, 3] - boxes[0, 1], 0.05, atol=1e-6)
  # Every anchor's pixel width / pixel height equals its aspect ratio.
  specs = anchors.ssd_box_specs()
  ratios = np.concatenate([
      np.tile([ar for _, ar in layer_specs], h * w)
      for (h, w), layer_specs in zip(shapes, specs)])
  pixel_h = (boxes[:, 2] - boxes[:, 0]) * image_h
  pixel_w = (boxes[:, 3] - boxes[:, 1]) * image_w
  np.testing.assert_allclose(pixel_w / pixel_h, ratios, rtol=1e-5)
  # A square image_shape changes nothing.
  np.testing.assert_array_equal(
      anchors.generate_ssd_anchors(SHAPES_320, image_shape=(320, 320)),
      anchors.generate_ssd_anchors(SHAPES_320))


@pytest.mark.parametrize('image_shape', [(320, 320), (320, 480), (480, 320)])
def test_matches_brute_force(image_shape):
  shapes = anchors.ssd_feature_map_shapes(image_shape)
  got = anchors.generate_ssd_anchors(shapes, image_shape=image_shape)
  min_side = min(image_shape)
  base = (min_side / image_shape[0], min_side / image_shape[1])
  expected = _brute_force_anchors(shapes, anchors.ssd_box_specs(), base)
  np.testing.assert_allclose(got, expected, atol=1e-6)


def test_custom_options_match_brute_force():
  kwargs = dict(num_layers=3, scales=[0.1, 0.4, 0.7], aspect_ratios=(1.0, 0.25),
                interpolated_scale_aspect_ratio=2.0, reduce_boxes_in_lowest_layer=False)
  caller_scales = kwargs['scales']
  shapes = [(4, 3), (2, 2), (1, 2)]
  got = anchors.generate_ssd_anchors(shapes, base_anchor_size=(0.5, 2.0), **kwargs)
  expected = _brute_force_anchors(
      shapes, [[(0.1, 1.0), (0.1, 0.25), (math.sqrt(0.04), 2.0)],
               [(0.4, 1.0), (0.4, 0.25), (math.sqrt(0.28), 2.0)],
               [(0.7, 1.0), (0.7, 0.25), (math.sqrt(0.7), 2.0)]], (0.5, 2.0))
  np.testing.assert_allclose(got, expected, atol=1e-6)
  assert caller_scales == [0.1, 0.4, 0.7]  # not mutated (the OD API appends 1.0)


def test_invalid_arguments():
  with pytest.raises(ValueError, match='feature_map_shapes'):
    anchors.generate_ssd_anchors(SHAPES_320[:5])
  with pytest.raises(ValueError, match='scales'):
    anchors.generate_ssd_anchors(SHAPES_320, scales=[0.1, 0.2])
  with pytest.raises(ValueError, match='num_layers=1'):
    anchors.generate_ssd_anchors([(2, 2)], num_layers=1)
  with pytest.raises(ValueError, match='image_shape'):
    anchors.generate_ssd_anchors(SHAPES_320, image_shape=(0, 320))


def test_split_layout_matches_model_garden():
  boxes = anchors.generate_ssd_anchors(SHAPES_320)
  per_loc = anchors.anchors_per_location()
  levels = anchors.split_anchors_by_level(boxes, SHAPES_320, per_loc)
  assert list(levels) == ['4', '5', '6', '7', '8', '9']
  assert levels['4'].shape == (20, 20, 12)
  assert levels['9'].shape == (1, 1, 24)
  # Level 5 starts after 1200 level-4 anchors; [i, j, 4a:4a+4] = anchor
  # 1200 + (i * 10 + j) * 6 + a.
  i, j, a = 3, 7, 4
  np.testing.assert_array_equal(levels['5'][i, j, 4 * a:4 * a + 4],
                                boxes[1200 + (i * 10 + j) * 6 + a])
  # Model Garden's own unpacking of a flat per-anchor tensor gives the same layout.
  unpacked = mg_anchor.unpack_targets(
      tf.constant(boxes), {k: tf.constant(v) for k, v in levels.items()})
  for key, value in levels.items():
    np.testing.assert_array_equal(unpacked[key].numpy(), value)


def test_flatten_inverts_split_numpy_tf_and_batched():
  boxes = anchors.generate_ssd_anchors(SHAPES_320)
  per_loc = anchors.anchors_per_location()
  levels = anchors.split_anchors_by_level(boxes, SHAPES_320, per_loc)
  np.testing.assert_array_equal(anchors.flatten_levels(levels), boxes)

  tf_levels = anchors.split_anchors_by_level(tf.constant(boxes), SHAPES_320, per_loc)
  assert all(isinstance(v, tf.Tensor) for v in tf_levels.values())
  np.testing.assert_array_equal(anchors.flatten_levels(tf_levels).numpy(), boxes)

  # Batched per-level head outputs [B, H, W, A * K] -> [B, N, K]; levels given out of
  # order are concatenated in numeric order.
  batched = {k: tf.stack([v, -v]) for k, v in reversed(list(tf_levels.items()))}
  flat = anchors.flatten_levels(batched).numpy()
  assert flat.shape == (2, 2034, 4)
  np.testing.assert_array_equal(flat[1], -boxes)

  with pytest.raises(ValueError, match='2034 rows'):
    anchors.split_anchors_by_level(boxes, SHAPES_320, [6] * 6)
