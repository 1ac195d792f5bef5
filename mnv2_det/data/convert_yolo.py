"""YOLO txt labels -> a COCO instances dict (then read as any COCO JSON).

    images/train/a.jpg, images/train/sub/b.png   (image_dir, searched recursively)
    labels/train/a.txt, labels/train/sub/b.txt   (labels_dir, the same relative paths)
    classes.txt (one name per line) or data.yaml (`names:` list or index: name map)

The default labels_dir is image_dir with its last `images` folder renamed `labels`
(the Ultralytics layout), else image_dir itself (labels beside the images).

Each non-blank label line is `class cx cy w h`: an integer class index into the
class list and the box centre and size normalized to the image (all in [0, 1], w and
h > 0); the image's pixel size comes from the image. The COCO box is
x = (cx - w / 2) * W, y = (cy - h / 2) * H, w * W, h * H. Class index i becomes
category id i + 1.

An image without a label file, or with an empty one, is a negative (counted, and
named in `unlabelled` when the file is missing); a label file without an image is
named in `orphan_labels`. Unreadable images are skipped and named. A malformed line
is ONE ValueError `FILE:LINE: ...`: not 5 values, a non-integer or unknown class
index, a coordinate that is not a number or outside [0, 1], a zero w or h.
"""

import math
import os
from typing import List, Optional, Tuple

from mnv2_det.data import convert_common
from mnv2_det.data.image_files import IMAGE_EXTENSIONS

IMAGES_FOLDER = 'images'
LABELS_FOLDER = 'labels'
LABEL_SUFFIX = '.txt'
# A class list file that may sit among the label files (never an orphan label).
CLASS_LIST_NAME = 'classes.txt'
COORDINATE_NAMES = ('cx', 'cy', 'w', 'h')
VALUES_PER_LINE = 1 + len(COORDINATE_NAMES)


def default_labels_dir(image_dir: str) -> str:
  """image_dir with its last `images` component replaced by `labels`, else image_dir."""
  parts = os.path.normpath(image_dir).split(os.sep)
  for i in range(len(parts) - 1, -1, -1):
    if parts[i] == IMAGES_FOLDER:
      return os.sep.join(parts[:i] + [LABELS_FOLDER] + parts[i + 1:]) or os.sep
  return image_dir


def _image_files(image_dir: str) -> List[str]:
  """Image paths relative to image_dir, sorted, recursively."""
  if not os.path.isdir(image_dir):
    raise ValueError(f'{image_dir}: image folder not found')
  found = []
  for folder, _, names in os.walk(image_dir):
    for name in names:
      if name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(os.path.relpath(os.path.join(folder, name), image_dir))
  if not found:
    raise ValueError(f'{image_dir}: no {"/".join(IMAGE_EXTENSIONS)} images')
  return sorted(found)


def parse_line(text: str, path: str, line: int, num_classes: int,
               classes_file: str) -> Tuple[int, List[float]]:
  """`(class index, [cx, cy, w, h])` of one label line, validated."""
  fields = text.split()
  if len(fields) != VALUES_PER_LINE:
    raise ValueError(f'{path}:{line}: expected {VALUES_PER_LINE} values "class cx cy w '
                     f'h", got {len(fields)}')
  try:
    index = int(fields[0])
  except ValueError:
    raise ValueError(f'{path}:{line}: class index must be an integer, got '
                     f'{fields[0]!r}') from None
  if not 0 <= index < num_classes:
    raise ValueError(f'{path}:{line}: class index {index} is not in 0..{num_classes - 1}'
                     f' ({classes_file} lists {num_classes} classes)')
  values = []
  for name, field in zip(COORDINATE_NAMES, fields[1:]):
    try:
      v = float(field)
    except ValueError:
      v = math.nan
    if not math.isfinite(v):
      raise ValueError(f'{path}:{line}: {name} must be a number, got {field!r}')
    if not 0.0 <= v <= 1.0:
      raise ValueError(f'{path}:{line}: {name}={field} is outside [0, 1] (YOLO '
                       'coordinates are normalized to the image)')
    values.append(v)
  for name, v in zip(COORDINATE_NAMES[2:], values[2:]):
    if v == 0.0:
      raise ValueError(f'{path}:{line}: {name} must be > 0, got {v:g}')
  return index, values


def _read_labels(path: str) -> List[str]:
  try:
    with open(path, 'r', encoding='utf-8') as f:
      return f.read().splitlines()
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 text ({e.reason})') from None


def _orphans(labels_dir: str, used: set, classes_file: str) -> List[str]:
  if not os.path.isdir(labels_dir):
    return []
  skip = used | {os.path.realpath(classes_file)}
  out = []
  for folder, _, names in os.walk(labels_dir):
    for name in names:
      path = os.path.join(folder, name)
      if (name.endswith(LABEL_SUFFIX) and name != CLASS_LIST_NAME and
          os.path.realpath(path) not in skip):
        out.append(path)
  return sorted(out)


def convert_yolo(image_dir: str, classes_file: str,
                 labels_dir: Optional[str] = None) -> convert_common.Converted:
  """Converts a YOLO folder pair (module docstring); returns the COCO dict and skips."""
  names = convert_common.read_class_list(classes_file)
  labels_dir = labels_dir or default_labels_dir(image_dir)
  result = convert_common.Converted(coco={})
  images, annotations, used = [], [], set()
  for rel in _image_files(image_dir):
    size, reason = convert_common.image_size(os.path.join(image_dir, rel))
    if size is None:
      result.skipped_images.append((os.path.join(image_dir, rel), reason))
      continue
    width, height = size
    image_id = len(images) + 1
    label = os.path.join(labels_dir, os.path.splitext(rel)[0] + LABEL_SUFFIX)
    boxes = []
    if os.path.isfile(label):
      used.add(os.path.realpath(label))
      for line, text in enumerate(_read_labels(label), 1):
        if not text.strip():
          continue
        index, (cx, cy, w, h) = parse_line(text, label, line, len(names), classes_file)
        bw, bh = w * width, h * height
        boxes.append({'image_id': image_id,
                      'category_id': index + convert_common.FIRST_CATEGORY_ID,
                      'bbox': [(cx - w / 2) * width, (cy - h / 2) * height, bw, bh],
                      'area': bw * bh, 'iscrowd': 0})
    else:
      result.unlabelled.append(label)
    images.append({'id': image_id, 'file_name': rel.replace(os.sep, '/'),
                   'width': width, 'height': height})
    result.negatives += int(not boxes)
    annotations.extend(boxes)
  convert_common.check_not_empty(images, image_dir, result.skipped_images)
  result.orphan_labels = _orphans(labels_dir, used, classes_file)
  result.coco = convert_common.coco_dict(images, annotations, names,
                                         f'converted from YOLO labels {labels_dir}')
  return result
