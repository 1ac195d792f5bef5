"""Draws detections (boxes, class names, scores) on an image with Pillow.

Boxes are ORIGINAL image pixels `[ymin, xmin, ymax, xmax]` (the SavedModel / TFLite
output convention); a box's colour depends only on its category id, so one class
has the same colour in every picture.
"""

from typing import Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# Distinct, saturated colours (RGB), indexed by category id modulo their number.
PALETTE = ((230, 25, 75), (60, 180, 75), (255, 225, 25), (0, 130, 200),
           (245, 130, 48), (145, 30, 180), (70, 240, 240), (240, 50, 230),
           (210, 245, 60), (250, 190, 212), (0, 128, 128), (170, 110, 40))
TEXT_COLOR = (0, 0, 0)
# Line width is 1 px per this many pixels of the shorter image side (at least 1).
PIXELS_PER_LINE_WIDTH = 200
MIN_LINE_WIDTH = 1
# Label font height: this fraction of the shorter image side, clamped.
FONT_FRACTION = 0.04
MIN_FONT_PX = 10
MAX_FONT_PX = 32
LABEL_PADDING_PX = 1


def color_of(category_id: int):
  """RGB tuple of a category id."""
  return PALETTE[int(category_id) % len(PALETTE)]


def _font(image_hw):
  size = int(np.clip(round(min(image_hw) * FONT_FRACTION), MIN_FONT_PX, MAX_FONT_PX))
  return ImageFont.load_default(size=size)


def draw_detections(image: np.ndarray, boxes: np.ndarray, category_ids: Sequence[int],
                    labels: Sequence[str], scores: Sequence[float]) -> Image.Image:
  """Returns a copy of `image` with one labelled rectangle per detection.

  Args:
    image: `[h, w, 3]` uint8 RGB.
    boxes: `[N, 4]` float pixels `[ymin, xmin, ymax, xmax]` in `image`.
    category_ids: `[N]` dataset category ids (choose the colour).
    labels: `[N]` class names.
    scores: `[N]` scores in [0, 1], printed with 2 decimals after the name.

  Returns:
    An RGB PIL image of size w x h. Labels sit above the box, or inside its top
    edge when the box touches the top of the image.
  """
  image = np.asarray(image)
  if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
    raise ValueError(f'draw_detections expects uint8 [h, w, 3], got {image.dtype} '
                     f'{list(image.shape)}')
  boxes = np.asarray(boxes, np.float64).reshape([-1, 4])
  if not len(boxes) == len(category_ids) == len(labels) == len(scores):
    raise ValueError(f'draw_detections: {len(boxes)} boxes, {len(category_ids)} ids, '
                     f'{len(labels)} labels, {len(scores)} scores')
  canvas = Image.fromarray(image, 'RGB')
  draw = ImageDraw.Draw(canvas)
  font = _font(image.shape[:2])
  width = max(MIN_LINE_WIDTH, min(image.shape[:2]) // PIXELS_PER_LINE_WIDTH)
  for (ymin, xmin, ymax, xmax), cid, label, score in zip(boxes, category_ids, labels,
                                                           scores):
    color = color_of(cid)
    draw.rectangle([xmin, ymin, xmax, ymax], outline=color, width=width)
    text = f'{label} {score:.2f}'
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    text_w = right - left + 2 * LABEL_PADDING_PX
    text_h = bottom - top + 2 * LABEL_PADDING_PX
    y = ymin - text_h if ymin - text_h >= 0 else ymin
    draw.rectangle([xmin, y, xmin + text_w, y + text_h], fill=color)
    draw.text((xmin + LABEL_PADDING_PX - left, y + LABEL_PADDING_PX - top), text,
              fill=TEXT_COLOR, font=font)
  return canvas
