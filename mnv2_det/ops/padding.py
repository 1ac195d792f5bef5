"""Pad images to a multiple of the network stride, and map boxes across the padding.

The OD API feeds feature extractors `pad_to_multiple(x, 32)` (docs/reference.md,
"Padding to a multiple of 32"): zeros are added at the *end* of each spatial axis
(bottom rows, then right columns) up to `ceil(h / m) * m`, `ceil(w / m) * m`. Image
content keeps its pixel coordinates, so a box in absolute pixels is the same in both
frames; only *normalized* boxes change.
"""

import tensorflow as tf


def padded_size(size, multiple):
  """Returns `ceil(size / multiple) * multiple` for an int or an int tensor."""
  if multiple <= 1:
    return size
  if isinstance(size, int):
    return -(-size // multiple) * multiple
  return (size + multiple - 1) // multiple * multiple


def pad_to_multiple(images, multiple):
  """Zero-pads images at the bottom/right so height and width divide `multiple`.

  Args:
    images: `[batch, height, width, channels]` float tensor.
    multiple: int >= 1; 1 returns `images` unchanged.

  Returns:
    `[batch, ceil(h/m)*m, ceil(w/m)*m, channels]`, same dtype. Static spatial sizes
    stay static where the input's were.
  """
  if multiple <= 1:
    return images
  static = images.shape
  dynamic = tf.shape(images)
  pads = []
  for axis in (1, 2):
    if static[axis] is not None:
      pads.append([0, padded_size(int(static[axis]), multiple) - int(static[axis])])
    else:
      pads.append([0, padded_size(dynamic[axis], multiple) - dynamic[axis]])
  paddings = [[0, 0], pads[0], pads[1], [0, 0]]
  return tf.pad(images, paddings)


def boxes_padded_to_original(boxes, original_hw, padded_hw):
  """Maps normalized boxes from the padded frame to the original image frame.

  Args:
    boxes: `[..., 4]` float, normalized `[ymin, xmin, ymax, xmax]` of the padded image.
    original_hw: `[2]` original `(height, width)`, or `[batch, 1, 2]` for
      `[batch, N, 4]` boxes (anything that broadcasts against `boxes[..., :2]`).
    padded_hw: same shape, the padded `(height, width)`.

  Returns:
    `[..., 4]` normalized `[ymin, xmin, ymax, xmax]` of the original image. Values
    above 1 mean the box reaches into the padding; callers clip if they want to.
  """
  scale = _yxyx_scale(padded_hw, original_hw, boxes.dtype)
  return boxes * scale


def boxes_original_to_padded(boxes, original_hw, padded_hw):
  """Inverse of `boxes_padded_to_original` (same shapes and coordinate order)."""
  scale = _yxyx_scale(original_hw, padded_hw, boxes.dtype)
  return boxes * scale


def _yxyx_scale(numerator_hw, denominator_hw, dtype):
  """`[..., 2]` (h, w) ratios -> `[..., 4]` (h, w, h, w), broadcastable over boxes."""
  ratio = tf.cast(numerator_hw, dtype) / tf.cast(denominator_hw, dtype)
  return tf.concat([ratio, ratio], axis=-1)
