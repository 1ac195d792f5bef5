"""The eval pipeline's resize + normalize for one raw image, for the serving graphs.

Same functions as `mnv2_det.data.input_pipeline.Parser` without augmentation
(`preprocess.resize_and_pad` + `preprocess.image_info` with no crop), so exported
models see exactly the inputs the evaluator saw.
"""

from typing import Sequence, Tuple

import tensorflow as tf

from mnv2_det.data import preprocess

# image_info rows (Model Garden convention): original size, scaled size, scale, offset.
IMAGE_INFO_SHAPE = (4, 2)


def prepare_image(image: tf.Tensor, output_size: Sequence[int],
                  resize_mode: str) -> Tuple[tf.Tensor, tf.Tensor]:
  """Resizes, normalizes and pads one image as the eval pipeline does.

  Args:
    image: `[h, w, 3]` uint8 (or float in [0, 255]) RGB, any size >= 1x1.
    output_size: `(H, W)` network input size (the config's `input_size`).
    resize_mode: 'fixed' (stretch) or 'keep_aspect' (fit + pad bottom/right).

  Returns:
    image: `[H, W, 3]` float32 in [-1, 1] ((2/255)·x − 1; padding 0).
    image_info: `[4, 2]` float32 `[[h, w], [scaled_h, scaled_w], [y_scale, x_scale],
      [0, 0]]`.
  """
  size = preprocess.validate_resize(resize_mode, list(output_size))
  original_hw = tf.shape(image)[:2]
  resized, scaled = preprocess.resize_and_pad(image, size, resize_mode)
  info = preprocess.image_info(original_hw, tf.zeros([2], tf.int32), original_hw, scaled)
  return resized, info


def normalized_to_pixels(images: tf.Tensor) -> tf.Tensor:
  """Inverse of `preprocess.normalize_image`: [-1, 1] -> float32 [0, 255]."""
  return (tf.cast(images, tf.float32) - preprocess.PIXEL_OFFSET) / preprocess.PIXEL_SCALE
