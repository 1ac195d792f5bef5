"""Reads a COCO instances JSON + image folder directly, with validation.

Structural problems raise ONE ValueError line naming the file and the field:
malformed JSON, no `images`/`categories` list, an entry missing `id`,
`file_name`, `height`, `width`, `image_id`, `bbox` or `category_id`, a
non-numeric `bbox`, a duplicate id, an annotation pointing at an unknown image
or category id.

Per-annotation problems are repaired or skipped, and counted in `ReadStats`:
  * a box partly outside the image is clipped to it (`clipped_boxes`);
  * a box with width or height <= 0, a non-finite value, or nothing left after
    clipping is dropped (`dropped_boxes`);
  * a missing `area` is computed from the (clipped) box (`filled_area`), a
    missing `iscrowd` becomes 0 (`filled_iscrowd`).
Crowd annotations are kept in the records with `is_crowd=True` (COCO evaluation
needs them to ignore detections); the input pipeline excludes them from
training targets. An image with no annotation is a valid negative.

Image files are checked once up front (see image_check.py); a bad file is
skipped with its name and reason in `ReadStats.skipped_images` and a warning,
or raises ValueError with `on_bad_image='raise'`.

With `record_findings=True`, every repair and skip above is also listed, with the
image's file name, in `ReadStats.findings` (tools/check_data.py reports them), so a
dataset check applies exactly these rules.
"""

import dataclasses
import json
import math
import os
from typing import Dict, List, Optional, Tuple

from absl import logging
import numpy as np

from mnv2_det.data import image_check
from mnv2_det.data.category_map import CategoryMap

# Number of bad image names spelled out in the warning before "... and N more".
MAX_NAMES_IN_WARNING = 10
BAD_IMAGE_POLICIES = ('skip', 'raise')
# Finding kinds, one per ReadStats counter (and skipped_images).
CLIPPED_BOX = 'clipped_box'
DROPPED_BOX = 'dropped_box'
FILLED_AREA = 'filled_area'
FILLED_ISCROWD = 'filled_iscrowd'
SKIPPED_IMAGE = 'skipped_image'
FINDING_KINDS = (CLIPPED_BOX, DROPPED_BOX, FILLED_AREA, FILLED_ISCROWD, SKIPPED_IMAGE)


@dataclasses.dataclass
class ImageRecord:
  """One image and its annotations.

  Attributes:
    file_path: path of the image file.
    image_id: the COCO image id (source_id).
    height, width: original pixel size, from the annotation file.
    boxes: `[M, 4]` float32 normalized `[ymin, xmin, ymax, xmax]`, clipped to
      [0, 1], all with positive size.
    classes: `[M]` int32 contiguous class indices 1..K (see CategoryMap).
    is_crowd: `[M]` bool.
    area: `[M]` float32 area in original pixels^2 (the JSON `area`, else w*h).
  """
  file_path: str
  image_id: int
  height: int
  width: int
  boxes: np.ndarray
  classes: np.ndarray
  is_crowd: np.ndarray
  area: np.ndarray

  @property
  def num_instances(self) -> int:
    return int(self.classes.shape[0])


@dataclasses.dataclass(frozen=True)
class Finding:
  """One repair or skip: `kind` (FINDING_KINDS), the image's `file_name`, `where` in
  the JSON (`annotations[i]` / `images[i]`) and a short `detail`."""
  kind: str
  file_name: str
  where: str
  detail: str


@dataclasses.dataclass
class ReadStats:
  """Counts of what the reader repaired or skipped; `findings` lists each one when
  read_coco is asked to record them (None otherwise)."""
  num_images: int = 0
  num_annotations: int = 0
  num_crowd: int = 0
  num_negative_images: int = 0
  clipped_boxes: int = 0
  dropped_boxes: int = 0
  filled_area: int = 0
  filled_iscrowd: int = 0
  # (file_name, reason) of every image skipped by the up-front check.
  skipped_images: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  findings: Optional[List[Finding]] = None

  def note(self, kind: str, file_name: str, where: str, detail: str) -> None:
    if self.findings is not None:
      self.findings.append(Finding(kind, file_name, where, detail))


@dataclasses.dataclass
class CocoDataset:
  """Result of `read_coco`."""
  annotation_file: str
  image_dir: str
  records: List[ImageRecord]
  category_map: CategoryMap
  stats: ReadStats


def _load_json(path: str) -> dict:
  if not os.path.isfile(path):
    raise ValueError(f'{path}: annotation file not found')
  try:
    with open(path, 'r', encoding='utf-8') as f:
      data = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f'{path}: malformed JSON at line {e.lineno} column '
                     f'{e.colno}: {e.msg}') from None
  except UnicodeDecodeError as e:
    raise ValueError(f'{path}: not UTF-8 text ({e.reason})') from None
  if not isinstance(data, dict):
    raise ValueError(f'{path}: top level must be a JSON object, got '
                     f'{type(data).__name__}')
  return data


def _list_field(data: dict, key: str, path: str, required: bool) -> list:
  if key not in data:
    if required:
      raise ValueError(f'{path}: no `{key}` list at the top level')
    return []
  value = data[key]
  if not isinstance(value, list):
    raise ValueError(f'{path}: `{key}` must be a list, got {type(value).__name__}')
  return value


def _field(entry, key: str, where: str, path: str):
  if not isinstance(entry, dict):
    raise ValueError(f'{path}: {where} must be an object, got {type(entry).__name__}')
  if key not in entry:
    raise ValueError(f'{path}: {where} is missing field `{key}`')
  return entry[key]


def _int_field(entry, key: str, where: str, path: str, minimum=None) -> int:
  value = _field(entry, key, where, path)
  if isinstance(value, bool) or not isinstance(value, (int, float)) or (
      isinstance(value, float) and not value.is_integer()):
    raise ValueError(f'{path}: {where} field `{key}` must be an integer, got {value!r}')
  value = int(value)
  if minimum is not None and value < minimum:
    raise ValueError(f'{path}: {where} field `{key}` must be >= {minimum}, got {value}')
  return value


def _categories(data: dict, path: str) -> CategoryMap:
  entries = _list_field(data, 'categories', path, required=True)
  seen = set()
  for i, c in enumerate(entries):
    cid = _int_field(c, 'id', f'categories[{i}]', path, minimum=0)
    if cid in seen:
      raise ValueError(f'{path}: categories[{i}] duplicates category id {cid}')
    seen.add(cid)
  return CategoryMap.from_categories(entries)


def _images(data: dict, path: str) -> Dict[int, dict]:
  entries = _list_field(data, 'images', path, required=True)
  images = {}
  for i, im in enumerate(entries):
    where = f'images[{i}]'
    image_id = _int_field(im, 'id', where, path)
    file_name = _field(im, 'file_name', where, path)
    if not isinstance(file_name, str) or not file_name:
      raise ValueError(f'{path}: {where} field `file_name` must be a non-empty '
                       f'string, got {file_name!r}')
    height = _int_field(im, 'height', where, path, minimum=1)
    width = _int_field(im, 'width', where, path, minimum=1)
    if image_id in images:
      raise ValueError(f'{path}: {where} duplicates image id {image_id}')
    images[image_id] = dict(file_name=file_name, height=height, width=width,
                            anns=[], where=where)
  return images


def _bbox(ann: dict, where: str, path: str) -> List[float]:
  bbox = _field(ann, 'bbox', where, path)
  if (not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or any(
      isinstance(v, bool) or not isinstance(v, (int, float)) for v in bbox)):
    raise ValueError(f'{path}: {where} field `bbox` must be 4 numbers '
                     f'[x, y, width, height], got {bbox!r}')
  return [float(v) for v in bbox]


def _attach_annotations(data, path, images, category_map, stats):
  """Validates annotations, clips/drops boxes and appends them to `images`."""
  known = set(category_map.dataset_ids)
  to_contiguous = category_map.to_contiguous
  for i, ann in enumerate(_list_field(data, 'annotations', path, required=False)):
    where = f'annotations[{i}]'
    image_id = _int_field(ann, 'image_id', where, path)
    category_id = _int_field(ann, 'category_id', where, path)
    x, y, w, h = _bbox(ann, where, path)
    if image_id not in images:
      raise ValueError(f'{path}: {where} refers to unknown image id {image_id}')
    if category_id not in known:
      raise ValueError(f'{path}: {where} has unknown category id {category_id} '
                       f'(known: {sorted(known)})')
    stats.num_annotations += 1
    image = images[image_id]
    name = image['file_name']
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
      stats.dropped_boxes += 1
      stats.note(DROPPED_BOX, name, where, f'bbox {[x, y, w, h]}: width or height <= 0 '
                 'or not finite')
      continue
    x0, y0 = max(x, 0.0), max(y, 0.0)
    x1, y1 = min(x + w, float(image['width'])), min(y + h, float(image['height']))
    if x1 <= x0 or y1 <= y0:  # Entirely outside the image.
      stats.dropped_boxes += 1
      stats.note(DROPPED_BOX, name, where, f'bbox {[x, y, w, h]}: outside the '
                 f'{image["width"]}x{image["height"]} image')
      continue
    if (x0, y0, x1, y1) != (x, y, x + w, y + h):
      stats.clipped_boxes += 1
      stats.note(CLIPPED_BOX, name, where, f'bbox {[x, y, w, h]} clipped to '
                 f'{[x0, y0, x1 - x0, y1 - y0]}')
    if 'area' in ann:
      area = ann['area']
      if isinstance(area, bool) or not isinstance(area, (int, float)):
        raise ValueError(f'{path}: {where} field `area` must be a number, got {area!r}')
    else:
      area = (x1 - x0) * (y1 - y0)
      stats.filled_area += 1
      stats.note(FILLED_AREA, name, where, f'no `area`: box area {area:g}')
    if 'iscrowd' in ann:
      is_crowd = bool(_int_field(ann, 'iscrowd', where, path))
    else:
      is_crowd = False
      stats.filled_iscrowd += 1
      stats.note(FILLED_ISCROWD, name, where, 'no `iscrowd`: 0')
    stats.num_crowd += int(is_crowd)
    image['anns'].append((y0 / image['height'], x0 / image['width'],
                          y1 / image['height'], x1 / image['width'],
                          int(to_contiguous[category_id]), is_crowd, float(area)))


def _to_record(image_id: int, image: dict, image_dir: str) -> ImageRecord:
  anns = image['anns']
  return ImageRecord(
      file_path=os.path.join(image_dir, image['file_name']),
      image_id=image_id, height=image['height'], width=image['width'],
      boxes=np.array([a[:4] for a in anns], np.float32).reshape([-1, 4]),
      classes=np.array([a[4] for a in anns], np.int32),
      is_crowd=np.array([a[5] for a in anns], bool),
      area=np.array([a[6] for a in anns], np.float32))


def read_category_map(annotation_file: str) -> CategoryMap:
  """CategoryMap of a COCO JSON's `categories` (validated), images not read."""
  return _categories(_load_json(annotation_file), annotation_file)


def read_coco(annotation_file: str, image_dir: str,
              check_images: str = image_check.DEFAULT_CHECK_LEVEL,
              on_bad_image: str = 'skip',
              category_map: Optional[CategoryMap] = None,
              record_findings: bool = False) -> CocoDataset:
  """Loads and validates a COCO instances file.

  Args:
    annotation_file: path to the COCO JSON.
    image_dir: folder that `images[i].file_name` is relative to.
    check_images: up-front image check level, see image_check.CHECK_LEVELS.
    on_bad_image: 'skip' (drop the image, warn, record it in
      `stats.skipped_images`) or 'raise' (ValueError naming the file).
    category_map: optional table to use instead of the file's `categories`
      (e.g. the training set's table when reading a validation file). The
      file's category ids must all be in it.
    record_findings: also list every repair and skip in `stats.findings`.

  Returns:
    A CocoDataset whose records are in the order of the file's `images`.

  Raises:
    ValueError: one line naming the file and field, for the problems listed
      in the module docstring.
  """
  if on_bad_image not in BAD_IMAGE_POLICIES:
    raise ValueError(f'on_bad_image={on_bad_image!r} is not one of {BAD_IMAGE_POLICIES}')
  data = _load_json(annotation_file)
  file_map = _categories(data, annotation_file)
  if category_map is None:
    category_map = file_map
  else:
    extra = set(file_map.dataset_ids) - set(category_map.dataset_ids)
    if extra:
      raise ValueError(f'{annotation_file}: category ids {sorted(extra)} are not '
                       f'in the given category map {list(category_map.dataset_ids)}')
  images = _images(data, annotation_file)
  stats = ReadStats(findings=[] if record_findings else None)
  _attach_annotations(data, annotation_file, images, category_map, stats)

  records = []
  for image_id, image in images.items():
    record = _to_record(image_id, image, image_dir)
    reason = image_check.check_image(record.file_path, record.height,
                                     record.width, check_images)
    if reason is not None:
      if on_bad_image == 'raise':
        raise ValueError(f'{annotation_file}: image {record.file_path} '
                         f'(id {image_id}): {reason}')
      stats.skipped_images.append((image['file_name'], reason))
      stats.note(SKIPPED_IMAGE, image['file_name'], image['where'], reason)
      continue
    records.append(record)
    stats.num_negative_images += int(record.num_instances == 0)
  stats.num_images = len(records)
  if stats.skipped_images:
    names = '; '.join(f'{n}: {r}' for n, r in
                      stats.skipped_images[:MAX_NAMES_IN_WARNING])
    more = len(stats.skipped_images) - MAX_NAMES_IN_WARNING
    logging.warning('%s: skipped %d unreadable image(s): %s%s', annotation_file,
                    len(stats.skipped_images), names,
                    f' ... and {more} more' if more > 0 else '')
  if stats.dropped_boxes or stats.clipped_boxes:
    logging.info('%s: clipped %d box(es) to the image, dropped %d degenerate '
                 'box(es)', annotation_file, stats.clipped_boxes,
                 stats.dropped_boxes)
  return CocoDataset(annotation_file, image_dir, records, category_map, stats)
