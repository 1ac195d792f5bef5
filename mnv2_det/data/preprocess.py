"""Image decoding, resizing and normalization for the detection input pipeline.

Conventions: images are `[height, width, channels]`; boxes are normalized
`[ymin, xmin, ymax, xmax]` (docs/design.md, "Conventions"; docs/frames.md).
"""

from typing import Sequence, Tuple, Union

import tensorflow as tf

RESIZE_MODES = ('fixed', 'keep_aspect')
# Network stride that 'keep_aspect' output sizes must divide
# (docs/reference.md, "Padding to a multiple of 32": the OD API pads to a multiple of 32
# for MobileNetV2 feature maps).
KEEP_ASPECT_MULTIPLE = 32
RGB_CHANNELS = 3
# (2/255)·x − 1 maps [0, 255] to [-1, 1] (docs/reference.md, "Preprocessing";
# slim/OD API/Keras MobileNetV2).
PIXEL_SCALE = 2.0 / 255.0
PIXEL_OFFSET = -1.0
# Value written into the padding of 'keep_aspect' images, after normalization.
PAD_VALUE = 0.0


def output_hw(output_size: Union[int, Sequence[int]]) -> Tuple[int, int]:
  """Returns `(height, width)` from an int or a 2-sequence, validated."""
  if isinstance(output_size, int):
    size = (output_size, output_size)
  else:
    size = tuple(int(s) for s in output_size)
  if len(size) != 2 or min(size) < 1:
    raise ValueError(f'output_size must be an int or [height, width] of positive '
                     f'ints, got {output_size!r}')
  return size


def validate_resize(resize_mode: str, output_size) -> Tuple[int, int]:
  """Checks `resize_mode` and `output_size`; returns `(height, width)`."""
  size = output_hw(output_size)
  if resize_mode not in RESIZE_MODES:
    raise ValueError(f'resize_mode {resize_mode!r} is not one of {RESIZE_MODES}')
  if resize_mode == 'keep_aspect' and (size[0] % KEEP_ASPECT_MULTIPLE or
                                       size[1] % KEEP_ASPECT_MULTIPLE):
    raise ValueError(f"resize_mode='keep_aspect' needs output_size a multiple of "
                     f'{KEEP_ASPECT_MULTIPLE}, got {list(size)}')
  return size


def decode_image_rgb(encoded: tf.Tensor) -> tf.Tensor:
  """Decodes JPEG/PNG/GIF/BMP/WebP bytes to `[H, W, 3]` uint8 RGB.

  Grayscale (and grayscale + alpha) is tiled to 3 channels, RGBA drops alpha,
  16-bit PNG is rescaled to the uint8 range by `tf.io.decode_image`
  (value * 255 / 65535, rounded). Animated GIFs give their first frame.
  """
  image = tf.io.decode_image(encoded, channels=0, dtype=tf.uint8,
                             expand_animations=False)
  channels = tf.shape(image)[-1]
  image = tf.cond(channels < RGB_CHANNELS,
                  lambda: tf.tile(image[..., :1], [1, 1, RGB_CHANNELS]),
                  lambda: image[..., :RGB_CHANNELS])
  image.set_shape([None, None, RGB_CHANNELS])
  return image


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """Maps pixel values in [0, 255] (any dtype) to float32 in [-1, 1]."""
  return tf.cast(image, tf.float32) * PIXEL_SCALE + PIXEL_OFFSET


def scaled_size(image_hw: tf.Tensor, output_size: Tuple[int, int],
                resize_mode: str) -> tf.Tensor:
  """Size `[2]` float32 the image content takes in the output.

  'fixed' stretches to `output_size` (OD API fixed_shape_resizer). 'keep_aspect'
  scales by `min(out_h / h, out_w / w)` and rounds (Model Garden
  resize_and_crop_image), at least 1 pixel per side.
  """
  out = tf.constant(output_size, tf.float32)
  if resize_mode == 'fixed':
    return out
  hw = tf.cast(image_hw, tf.float32)
  scale = tf.reduce_min(out / hw)
  return tf.clip_by_value(tf.round(hw * scale), 1.0, out)


def resize_and_pad(image: tf.Tensor, output_size: Tuple[int, int],
                   resize_mode: str):
  """Resizes, normalizes and zero-pads (bottom/right) one image.

  Args:
    image: `[h, w, 3]` uint8 or float in [0, 255].
    output_size: `(out_h, out_w)`.
    resize_mode: 'fixed' or 'keep_aspect'.

  Returns:
    image: `[out_h, out_w, 3]` float32 in [-1, 1]; padding is PAD_VALUE.
    size: `[2]` float32 `(scaled_h, scaled_w)` of the image content.
  """
  size = scaled_size(tf.shape(image)[:2], output_size, resize_mode)
  # A Python size keeps the static shape for 'fixed'.
  target = list(output_size) if resize_mode == 'fixed' else tf.cast(size, tf.int32)
  resized = tf.image.resize(tf.cast(image, tf.float32), target,
                            method=tf.image.ResizeMethod.BILINEAR)
  resized = normalize_image(tf.clip_by_value(resized, 0.0, 255.0))
  if resize_mode == 'keep_aspect':
    pad_hw = tf.constant(output_size) - tf.shape(resized)[:2]
    resized = tf.pad(resized, [[0, pad_hw[0]], [0, pad_hw[1]], [0, 0]],
                     constant_values=PAD_VALUE)
  resized = tf.ensure_shape(resized, list(output_size) + [RGB_CHANNELS])
  return resized, size


def boxes_to_output_frame(boxes: tf.Tensor, size: tf.Tensor,
                          output_size: Tuple[int, int]) -> tf.Tensor:
  """Maps `[M, 4]` boxes normalized to the content to the (padded) output frame."""
  ratio = size / tf.constant(output_size, tf.float32)
  return boxes * tf.tile(ratio, [2])


def image_info(original_hw, crop_begin, crop_hw, size) -> tf.Tensor:
  """Model Garden `image_info` `[4, 2]` float32.

  Rows: `[orig_h, orig_w]`, `[scaled_h, scaled_w]` (size of the image content
  inside the network input), `[y_scale, x_scale]` (scaled / cropped size) and
  `[y_offset, x_offset]` (crop origin in scaled pixels), so an original pixel
  `p` lands at `p * scale - offset`. Without a crop the offset is 0 and the
  crop size is the original size. Horizontal flips are not encoded.
  """
  original_hw = tf.cast(original_hw, tf.float32)
  crop_begin = tf.cast(crop_begin, tf.float32)
  scale = size / tf.cast(crop_hw, tf.float32)
  return tf.stack([original_hw, size, scale, crop_begin * scale])
