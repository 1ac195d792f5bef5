"""Up-front readability check of image files, so tf.data never meets a bad file.

A file that `tf.io.decode_image` cannot read would stop the input pipeline with
an op error deep inside tf.data. The COCO reader therefore checks every image
once, with Pillow, before the pipeline is built, and skips (with a count and the
file names) or rejects what fails. Check levels, cheapest first:

  'none'   : no check at all.
  'exists' : the file exists and is not empty.
  'verify' : 'exists' + Pillow opens the header, the format is one TF decodes,
             `Image.verify()` passes (full chunk + CRC walk for PNG), a JPEG
             ends with its end-of-image marker (a cut-off download otherwise
             stops tf.io.decode_jpeg) and the pixel size matches the annotation.
  'decode' : 'verify' + a full Pillow decode; also catches corrupt data inside
             an otherwise well-formed file.
"""

import os
from typing import Optional

from PIL import Image

CHECK_LEVELS = ('none', 'exists', 'verify', 'decode')
DEFAULT_CHECK_LEVEL = 'verify'
# Container formats tf.io.decode_image reads (JPEG, PNG, GIF, BMP, WebP).
TF_DECODABLE_FORMATS = frozenset({'JPEG', 'PNG', 'GIF', 'BMP', 'WEBP', 'MPO'})
JPEG_END_OF_IMAGE = b'\xff\xd9'
# Some writers append bytes after the end-of-image marker; look this far back.
JPEG_EOI_SEARCH_BYTES = 4096


def _jpeg_has_end_marker(path: str) -> bool:
  with open(path, 'rb') as f:
    f.seek(max(0, os.path.getsize(path) - JPEG_EOI_SEARCH_BYTES))
    return JPEG_END_OF_IMAGE in f.read()


def check_image(path: str, height: int, width: int,
                level: str = DEFAULT_CHECK_LEVEL) -> Optional[str]:
  """Checks that `path` is an image TF can decode, of size `height` x `width`.

  Args:
    path: image file path.
    height: expected pixel height (from the annotation file).
    width: expected pixel width.
    level: one of CHECK_LEVELS.

  Returns:
    None when the file passes, else a short human-readable reason.
  """
  if level not in CHECK_LEVELS:
    raise ValueError(f'image check level {level!r} is not one of {CHECK_LEVELS}')
  if level == 'none':
    return None
  if not os.path.isfile(path):
    return 'file not found'
  if os.path.getsize(path) == 0:
    return 'file is empty (0 bytes)'
  if level == 'exists':
    return None
  try:
    with Image.open(path) as im:
      fmt, size = im.format, im.size
      im.verify()
  except Exception as e:  # pylint: disable=broad-except
    return f'unreadable image ({type(e).__name__}: {e})'
  if fmt not in TF_DECODABLE_FORMATS:
    return f'format {fmt} is not decodable by tf.io.decode_image'
  if fmt in ('JPEG', 'MPO') and not _jpeg_has_end_marker(path):
    return 'truncated JPEG (no end-of-image marker)'
  if size != (width, height):
    return (f'pixel size {size[0]}x{size[1]} differs from annotation '
            f'{width}x{height} (width x height)')
  if level == 'decode':
    try:
      with Image.open(path) as im:  # verify() leaves the image unusable.
        im.load()
    except Exception as e:  # pylint: disable=broad-except
      return f'image data cannot be decoded ({type(e).__name__}: {e})'
  return None
