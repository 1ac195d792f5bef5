"""int8 calibration images from any image folder (`tools/export.py tflite --quant int8
--calibration_images DIR`), not only from the experiment's training data: a model
imported from elsewhere, or one whose training set is gone, still quantizes.

The folder is walked recursively for IMAGE_EXTENSIONS files (class subfolders work),
which are shuffled with a fixed seed; the first `num_images` readable ones are
resized + normalized exactly as `TFLiteDetector` does on the host
(`serving_inputs.prepare_image` with the config's input size and resize mode) and
turned back into pixel values [0, 255], the model's input. Unreadable files (corrupt,
empty, not an image) are skipped with a warning naming each; a folder that yields no
readable image is one ValueError naming the folder.
"""

import os
import random
from typing import List, Optional

from absl import logging
import numpy as np
import tensorflow as tf

from mnv2_det.export import serving_inputs
from mnv2_det.data import image_files as image_files_lib

IMAGE_EXTENSIONS = image_files_lib.IMAGE_EXTENSIONS
DEFAULT_SEED = 0


def image_files(folder: str) -> List[str]:
  """Sorted IMAGE_EXTENSIONS files under `folder` (recursive).

  Raises:
    ValueError: `folder` is not a folder, or holds no such file.
  """
  if not os.path.isdir(folder):
    raise ValueError(f'calibration image folder {folder} does not exist')
  found = sorted(os.path.join(root, name) for root, _, names in os.walk(folder)
                 for name in names if name.lower().endswith(IMAGE_EXTENSIONS))
  if not found:
    raise ValueError(f'calibration image folder {folder} holds no image files '
                     f'({"/".join(IMAGE_EXTENSIONS)})')
  return found


def folder_images(folder: str, input_size, resize_mode: str, num_images: int,
                  seed: Optional[int] = DEFAULT_SEED) -> List[np.ndarray]:
  """Up to `num_images` `[1, H, W, 3]` float32 pixel arrays in [0, 255] from `folder`
  (module docstring), as `tflite_convert.convert` takes them.

  Raises:
    ValueError: num_images < 1, no folder, no image file, or no readable image.
  """
  if num_images < 1:
    raise ValueError(f'calibration image count must be >= 1, got {num_images}')
  paths = image_files(folder)
  random.Random(DEFAULT_SEED if seed is None else seed).shuffle(paths)
  images, skipped = [], 0
  for path in paths:
    if len(images) == num_images:
      break
    try:
      image = image_files_lib.read_image(path)
      if min(image.shape[:2]) < 1:
        raise ValueError('image has no pixels')
    except ValueError as e:
      logging.warning('calibration: skipped %s: %s', path, e)
      skipped += 1
      continue
    prepared, _ = serving_inputs.prepare_image(tf.constant(image), list(input_size)[:2],
                                               resize_mode)
    images.append(serving_inputs.normalized_to_pixels(prepared)[tf.newaxis].numpy())
  if not images:
    raise ValueError(f'calibration image folder {folder} holds no readable image '
                     f'({skipped} image files unreadable, see the warnings)')
  if len(images) < num_images:
    logging.warning('calibration: %s gave %d readable images (%d asked, %d skipped)',
                    folder, len(images), num_images, skipped)
  return images
