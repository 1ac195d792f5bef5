"""Deterministic synthetic COCO-format detection dataset of coloured shapes.

    python -m mnv2_det.data.shapes OUT_DIR [--num_train N --num_val M --seed S]

writes OUT_DIR/{train,val}/*.jpg and OUT_DIR/annotations/instances_{train,val}.json
(standard COCO keys) and prints statistics. Design:
  * 5 classes with NON-contiguous category ids (1, 3, 7, 9, 12) so the
    dataset id <-> contiguous index table is exercised; each class has its own
    saturated colour (jittered) on a desaturated, textured, noisy background, so
    a tiny detector learns it quickly;
  * images of independent random height and width in IMAGE_SIDE_RANGE;
  * object sizes drawn from the COCO small / medium / large ranges (area
    < 32^2, 32^2..96^2, > 96^2); boxes may overlap up to MAX_IOU; larger
    objects are drawn first so smaller ones stay visible on top;
  * boxes are the tight pixel extent of the drawn shape, `area` is the box area;
  * some images are empty negatives.
The same seed gives byte-identical JSON (and images, for a given Pillow/libjpeg).
"""

import argparse
import json
import os
from typing import Dict

import numpy as np
from PIL import Image, ImageDraw

# (dataset category id, name, RGB colour).
CATEGORIES = (
    (1, 'circle', (220, 40, 40)),
    (3, 'square', (40, 90, 230)),
    (7, 'triangle', (40, 190, 70)),
    (9, 'cross', (240, 200, 30)),
    (12, 'star', (190, 60, 210)),
)
IMAGE_SIDE_RANGE = (160, 400)
# COCO area ranges (pycocotools): small < 32^2 <= medium < 96^2 <= large.
SMALL_MAX_AREA = 32**2
LARGE_MIN_AREA = 96**2
# Shape side ranges (pixels) for the three size classes, and their odds.
SMALL_SIDE = (12, 30)
MEDIUM_SIDE = (38, 88)
LARGE_SIDE_MIN = 104
LARGE_SIDE_MAX_FRACTION = 0.9  # of the shorter image side
SIZE_CLASS_PROBS = (0.35, 0.40, 0.25)
ASPECT_RANGE = (0.75, 1.33)
MAX_OBJECTS = 6
NEGATIVE_PROB = 0.05
MAX_IOU = 0.3
PLACEMENT_TRIES = 20
COLOUR_JITTER = 20
BACKGROUND_LEVEL = (70, 180)
BACKGROUND_TINT = 15
BACKGROUND_GRADIENT = 30
BACKGROUND_STRIPE_AMPLITUDE = 12
BACKGROUND_NOISE_STD = 8.0
STRIPE_PERIOD_RANGE = (6, 40)  # pixels
JPEG_QUALITY = 92
# Full-resolution chroma (4:4:4) keeps small shapes' colour edges crisp.
JPEG_SUBSAMPLING_444 = 0
STAR_INNER_RATIO = 0.45
CROSS_ARM_FRACTION = 1.0 / 3.0
CROSS_MAX_ROTATION = 0.3  # radians; a plus sign stays a plus sign
TRIANGLE_HEIGHT = np.sqrt(3) / 2  # equilateral, unit side
MIN_SHAPE_SIDE = 8
DEFAULT_NUM_TRAIN = 4096
DEFAULT_NUM_VAL = 128
DEFAULT_SEED = 0
_SPLIT_CODES = {'train': 0, 'val': 1}


def _background(rng, height, width):
  """`[height, width, 3]` uint8: tinted grey + gradient + stripes + grey noise."""
  base = (rng.uniform(*BACKGROUND_LEVEL) +
          rng.uniform(-BACKGROUND_TINT, BACKGROUND_TINT, size=3)).astype(np.float32)
  yy = np.arange(height, dtype=np.float32)[:, None]
  xx = np.arange(width, dtype=np.float32)[None, :]
  angle = rng.uniform(0, 2 * np.pi)
  ramp = np.cos(angle) * yy / height + np.sin(angle) * xx / width
  # sin(a·y + b·x) = sin(a·y)cos(b·x) + cos(a·y)sin(b·x): two outer products.
  frequency = 2 * np.pi / rng.uniform(*STRIPE_PERIOD_RANGE)
  stripe_angle = rng.uniform(0, np.pi)
  ay = yy * np.float32(np.cos(stripe_angle) * frequency)
  bx = xx * np.float32(np.sin(stripe_angle) * frequency)
  stripes = np.sin(ay) * np.cos(bx) + np.cos(ay) * np.sin(bx)
  grey = rng.standard_normal((height, width), dtype=np.float32)  # luminance noise
  grey *= BACKGROUND_NOISE_STD
  grey += BACKGROUND_GRADIENT * ramp + BACKGROUND_STRIPE_AMPLITUDE * stripes
  image = grey[..., None] + base
  return np.clip(image, 0, 255, out=image).astype(np.uint8)


def _rotated_polygon(points, angle, w, h):
  """Rotates unit-square `points` by `angle` and stretches them onto w x h."""
  pts = np.asarray(points, np.float64)
  rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
  pts = pts @ rot.T
  pts = (pts - pts.min(0)) / np.maximum(pts.max(0) - pts.min(0), 1e-9)
  return [(float(x * (w - 1)), float(y * (h - 1))) for x, y in pts]


def _shape_mask(name, w, h, rng):
  """`[h, w]` uint8 mask (255 inside) of the named shape filling the patch."""
  mask = Image.new('L', (w, h), 0)
  draw = ImageDraw.Draw(mask)
  if name == 'circle':
    draw.ellipse([0, 0, w - 1, h - 1], fill=255)
  elif name == 'square':
    draw.rectangle([0, 0, w - 1, h - 1], fill=255)
  elif name == 'triangle':
    points = [(0.5, 0.0), (1.0, TRIANGLE_HEIGHT), (0.0, TRIANGLE_HEIGHT)]
    draw.polygon(_rotated_polygon(points, rng.uniform(0, 2 * np.pi), w, h), fill=255)
  elif name == 'cross':
    a, b = 0.5 - CROSS_ARM_FRACTION / 2, 0.5 + CROSS_ARM_FRACTION / 2
    points = [(a, 0), (b, 0), (b, a), (1, a), (1, b), (b, b), (b, 1), (a, 1),
              (a, b), (0, b), (0, a), (a, a)]
    angle = rng.uniform(-CROSS_MAX_ROTATION, CROSS_MAX_ROTATION)
    draw.polygon(_rotated_polygon(points, angle, w, h), fill=255)
  elif name == 'star':
    k = np.arange(10)
    radius = np.where(k % 2 == 0, 1.0, STAR_INNER_RATIO)
    theta = k * np.pi / 5 + rng.uniform(0, 2 * np.pi)
    points = np.stack([radius * np.cos(theta), radius * np.sin(theta)], 1)
    draw.polygon(_rotated_polygon(points, 0.0, w, h), fill=255)
  else:
    raise ValueError(f'unknown shape {name!r}')
  return np.asarray(mask)


def _iou(a, b):
  """IoU of two [x0, y0, x1, y1] boxes."""
  iw = max(0, min(a[2], b[2]) - max(a[0], b[0]))
  ih = max(0, min(a[3], b[3]) - max(a[1], b[1]))
  inter = iw * ih
  union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
  return inter / union


def _sample_side(rng, height, width, size_class_probs=SIZE_CLASS_PROBS):
  size_class = rng.choice(3, p=size_class_probs)
  if size_class == 0:
    return rng.uniform(*SMALL_SIDE)
  if size_class == 1:
    return rng.uniform(*MEDIUM_SIDE)
  large_max = max(LARGE_SIDE_MIN + 1, LARGE_SIDE_MAX_FRACTION * min(height, width))
  return rng.uniform(LARGE_SIDE_MIN, large_max)


def _place_objects(rng, height, width, size_class_probs=SIZE_CLASS_PROBS):
  """List of (category index, [x0, y0, x1, y1] patch) with limited overlap."""
  count = 0 if rng.uniform() < NEGATIVE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
  placed = []
  for _ in range(count):
    for _ in range(PLACEMENT_TRIES):
      side = _sample_side(rng, height, width, size_class_probs)
      aspect = rng.uniform(*ASPECT_RANGE)
      w = int(np.clip(round(side * np.sqrt(aspect)), MIN_SHAPE_SIDE, width))
      h = int(np.clip(round(side / np.sqrt(aspect)), MIN_SHAPE_SIDE, height))
      x0 = int(rng.integers(0, width - w + 1))
      y0 = int(rng.integers(0, height - h + 1))
      box = [x0, y0, x0 + w, y0 + h]
      if all(_iou(box, other) < MAX_IOU for _, other in placed):
        placed.append((int(rng.integers(len(CATEGORIES))), box))
        break
  # Largest first, so smaller shapes are drawn on top and stay visible.
  placed.sort(key=lambda p: -(p[1][2] - p[1][0]) * (p[1][3] - p[1][1]))
  return placed


def _render(rng, height, width, size_class_probs=SIZE_CLASS_PROBS):
  """Returns (PIL RGB image, list of (category id, [x, y, w, h]))."""
  image = Image.fromarray(_background(rng, height, width))
  objects = []
  for cat_index, (x0, y0, x1, y1) in _place_objects(rng, height, width, size_class_probs):
    cat_id, name, colour = CATEGORIES[cat_index]
    mask = _shape_mask(name, x1 - x0, y1 - y0, rng)
    jitter = rng.integers(-COLOUR_JITTER, COLOUR_JITTER + 1, size=3)
    fill = tuple(int(c) for c in np.clip(np.array(colour) + jitter, 0, 255))
    image.paste(fill, (x0, y0), Image.fromarray(mask))
    ys, xs = np.nonzero(mask)
    bbox = [float(x0 + xs.min()), float(y0 + ys.min()),
            float(xs.max() - xs.min() + 1), float(ys.max() - ys.min() + 1)]
    objects.append((cat_id, bbox))
  return image, objects


def _write_split(out_dir, split, num_images, seed, size_class_probs=SIZE_CLASS_PROBS):
  image_dir = os.path.join(out_dir, split)
  os.makedirs(image_dir, exist_ok=True)
  images, annotations = [], []
  for index in range(num_images):
    rng = np.random.default_rng([seed, _SPLIT_CODES[split], index])
    height = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    width = int(rng.integers(IMAGE_SIDE_RANGE[0], IMAGE_SIDE_RANGE[1] + 1))
    image, objects = _render(rng, height, width, size_class_probs)
    image_id = index + 1
    file_name = f'{split}_{index:06d}.jpg'
    image.save(os.path.join(image_dir, file_name), format='JPEG', quality=JPEG_QUALITY,
               subsampling=JPEG_SUBSAMPLING_444)
    images.append({'id': image_id, 'file_name': file_name, 'height': height,
                   'width': width})
    for cat_id, bbox in objects:
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': cat_id, 'bbox': bbox,
                          'area': bbox[2] * bbox[3], 'iscrowd': 0})
  coco = {
      'info': {'description': f'mnv2_det synthetic shapes ({split}, seed {seed})',
               'version': '1.0'},
      'licenses': [],
      'images': images,
      'annotations': annotations,
      'categories': [{'id': c[0], 'name': c[1], 'supercategory': 'shape'}
                     for c in CATEGORIES],
  }
  ann_path = os.path.join(out_dir, 'annotations', f'instances_{split}.json')
  os.makedirs(os.path.dirname(ann_path), exist_ok=True)
  with open(ann_path, 'w', encoding='utf-8') as f:
    json.dump(coco, f)
  return image_dir, ann_path


def generate(out_dir: str, num_train: int = DEFAULT_NUM_TRAIN,
             num_val: int = DEFAULT_NUM_VAL, seed: int = DEFAULT_SEED,
             size_class_probs=SIZE_CLASS_PROBS) -> Dict[str, str]:
  """Writes the dataset; returns paths.

  `size_class_probs`: odds of (small, medium, large) objects (COCO area ranges); the
  default mixes all three. Other mixes make easier or harder variants (e.g. CI's
  quick end-to-end test uses medium and large objects only).

  Returns:
    dict with 'train_images', 'train_annotations', 'val_images',
    'val_annotations' (folders / JSON files).
  """
  probs = np.asarray(size_class_probs, np.float64)
  if probs.shape != (3,) or np.any(probs < 0) or not np.isclose(probs.sum(), 1.0):
    raise ValueError(f'size_class_probs must be 3 non-negative odds summing to 1, got '
                     f'{size_class_probs}')
  if num_train < 0 or num_val < 0:
    raise ValueError(f'image counts must be >= 0, got num_train={num_train}, '
                     f'num_val={num_val}')
  paths = {}
  for split, count in (('train', num_train), ('val', num_val)):
    paths[f'{split}_images'], paths[f'{split}_annotations'] = _write_split(
        out_dir, split, count, seed, tuple(probs))
  return paths


def statistics(annotation_file: str) -> dict:
  """Counts of images, objects per COCO size range and per category, overlaps."""
  with open(annotation_file, 'r', encoding='utf-8') as f:
    coco = json.load(f)
  names = {c['id']: c['name'] for c in coco['categories']}
  areas = np.array([a['area'] for a in coco['annotations']], np.float64)
  per_image = {}
  for a in coco['annotations']:
    x, y, w, h = a['bbox']
    per_image.setdefault(a['image_id'], []).append([x, y, x + w, y + h])
  overlaps = sum(_iou(b[i], b[j]) > 0 for b in per_image.values()
                 for i in range(len(b)) for j in range(i + 1, len(b)))
  heights = [im['height'] for im in coco['images']]
  widths = [im['width'] for im in coco['images']]
  return {
      'images': len(coco['images']),
      'negative_images': len(coco['images']) - len(per_image),
      'objects': int(areas.size),
      'small': int(np.sum(areas < SMALL_MAX_AREA)),
      'medium': int(np.sum((areas >= SMALL_MAX_AREA) & (areas < LARGE_MIN_AREA))),
      'large': int(np.sum(areas >= LARGE_MIN_AREA)),
      'per_category': {names[i]: sum(a['category_id'] == i for a in coco['annotations'])
                       for i in sorted(names)},
      'overlapping_pairs': int(overlaps),
      'non_square_images': sum(h != w for h, w in zip(heights, widths)),
      'height_range': [min(heights, default=0), max(heights, default=0)],
      'width_range': [min(widths, default=0), max(widths, default=0)],
  }


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('out_dir')
  parser.add_argument('--num_train', type=int, default=DEFAULT_NUM_TRAIN)
  parser.add_argument('--num_val', type=int, default=DEFAULT_NUM_VAL)
  parser.add_argument('--seed', type=int, default=DEFAULT_SEED)
  parser.add_argument('--size_class_probs', type=float, nargs=3, default=SIZE_CLASS_PROBS,
                      metavar=('SMALL', 'MEDIUM', 'LARGE'))
  args = parser.parse_args(argv)
  paths = generate(args.out_dir, args.num_train, args.num_val, args.seed,
                   args.size_class_probs)
  report = {split: statistics(paths[f'{split}_annotations'])
            for split in ('train', 'val')}
  print(json.dumps({'paths': paths, 'statistics': report}, indent=2))


if __name__ == '__main__':
  main()
