"""Faster R-CNN box coding (Ren et al. 2015, arXiv 1506.01497, eq. 2), as the SSD of the
TF Object Detection API uses it (docs/reference.md, "Box coder": scale factors (y, x, h, w) =
(10, 10, 5, 5)).

With box centre (y, x) and size (h, w), anchor (ya, xa, ha, wa), scale factors
(sy, sx, sh, sw):

  ty = sy * (y - ya) / ha      tx = sx * (x - xa) / wa
  th = sh * log(h / ha)        tw = sw * log(w / wa)

Encode adds EPSILON (1e-8) to h, w, ha and wa first, as the OD API's
`FasterRcnnBoxCoder` does. Both directions wrap Model Garden's
`official.vision.ops.box_ops.encode_boxes` / `decode_boxes`, which compute exactly these
formulas with `weights` = scale factors. One deliberate difference from the OD API:
decode clamps th / sh and tw / sw from above at MAX_LOG_SIZE_RATIO = log(1000 / 16)
(Model Garden's BBOX_XFORM_CLIP), i.e. a decoded box is at most 62.5x its anchor per
side. This only touches predictions far outside any real box (the largest SSD anchor at
320 is ~1.3 image sides) and keeps exp() from overflowing to inf on wild logits.

All boxes are normalized [ymin, xmin, ymax, xmax]; codes are [ty, tx, th, tw].
"""

from typing import Sequence

import tensorflow as tf

from official.vision.ops import box_ops

# (y, x, h, w) scale factors of the OD API SSD configs (docs/reference.md, "Box coder").
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
# Added to heights and widths before encoding (same value as the OD API coder).
EPSILON = box_ops.EPSILON
# Upper clamp of the unscaled log size ratio when decoding: log(1000 / 16).
MAX_LOG_SIZE_RATIO = float(box_ops.BBOX_XFORM_CLIP)
CODE_SIZE = 4


def _check_scale_factors(scale_factors: Sequence[float]) -> list:
  factors = [float(v) for v in scale_factors]
  if len(factors) != CODE_SIZE or not all(v > 0 for v in factors):
    raise ValueError(
        f'scale_factors must be {CODE_SIZE} positive numbers (y, x, h, w), got '
        f'{tuple(scale_factors)}')
  return factors


def _as_float_tensors(values, anchors):
  values = tf.convert_to_tensor(values)
  if not values.dtype.is_floating:
    values = tf.cast(values, tf.float32)
  anchors = tf.cast(tf.convert_to_tensor(anchors), values.dtype)
  if values.shape[-1] != CODE_SIZE or anchors.shape[-1] != CODE_SIZE:
    raise ValueError(
        f'last dimension must be {CODE_SIZE}, got shapes {values.shape} and '
        f'anchors {anchors.shape}')
  return values, anchors


def encode(boxes, anchors, scale_factors: Sequence[float] = SCALE_FACTORS) -> tf.Tensor:
  """`[..., N, 4]` boxes relative to `[N, 4]` anchors (broadcastable) -> codes
  `[ty, tx, th, tw]` of the broadcast shape, dtype of `boxes` (float32 for ints)."""
  factors = _check_scale_factors(scale_factors)
  boxes, anchors = _as_float_tensors(boxes, anchors)
  return box_ops.encode_boxes(boxes, anchors, weights=factors)


def decode(rel_codes, anchors, scale_factors: Sequence[float] = SCALE_FACTORS) -> tf.Tensor:
  """Inverse of `encode`: `[..., N, 4]` codes (e.g. the head's `[B, N, 4]`) -> boxes,
  dtype of `rel_codes`; th and tw are clamped at MAX_LOG_SIZE_RATIO after unscaling."""
  factors = _check_scale_factors(scale_factors)
  rel_codes, anchors = _as_float_tensors(rel_codes, anchors)
  return box_ops.decode_boxes(rel_codes, anchors, weights=factors)
