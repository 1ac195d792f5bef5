"""What the VOC and YOLO converters share: class lists, image sizes, the COCO dict.

Category ids of a converted set are 1..K in class-list order (index i of a YOLO list
becomes id i + 1), so the category table's contiguous indices equal the ids.
Errors are ONE ValueError line `FILE:LINE: what is wrong` (FILE alone when there is
no line to name).
"""

import dataclasses
import os
from typing import Dict, List, Optional, Sequence, Tuple

from PIL import Image
import yaml

from mnv2_det.data import image_check

# Files read as a class list: YAML (Ultralytics data.yaml `names:`) or plain text.
YAML_SUFFIXES = ('.yaml', '.yml')
FIRST_CATEGORY_ID = 1


@dataclasses.dataclass
class Converted:
  """A converted dataset: the COCO dict and what the converter skipped.

  Attributes:
    coco: COCO instances dict (`images`, `annotations`, `categories`, `info`).
    skipped_images: `(file, reason)` of images left out (missing / unreadable).
    negatives: images without a box (files named in `unlabelled`, if their label
      file was missing).
    unlabelled: images whose label file does not exist (kept as negatives; YOLO).
    orphan_labels: label files without an image (YOLO).
  """
  coco: dict
  skipped_images: List[Tuple[str, str]] = dataclasses.field(default_factory=list)
  negatives: int = 0
  unlabelled: List[str] = dataclasses.field(default_factory=list)
  orphan_labels: List[str] = dataclasses.field(default_factory=list)


def where(path: str, line: Optional[int] = None) -> str:
  return f'{path}:{line}' if line else path


def _names_from_yaml(path: str) -> List[str]:
  try:
    with open(path, 'r', encoding='utf-8') as f:
      data = yaml.safe_load(f)
  except yaml.YAMLError as e:
    mark = getattr(e, 'problem_mark', None)
    line = mark.line + 1 if mark is not None else None
    raise ValueError(f'{where(path, line)}: malformed YAML') from None
  names = data.get('names') if isinstance(data, dict) else None
  if isinstance(names, dict):
    keys = sorted(names)
    if keys != list(range(len(keys))):
      raise ValueError(f'{path}: `names` keys must be the class indices 0..{len(keys) - 1},'
                       f' got {keys}')
    names = [names[k] for k in keys]
  if not isinstance(names, list) or not names:
    raise ValueError(f'{path}: no `names` list (or index: name mapping) of classes')
  if 'nc' in data and data['nc'] != len(names):
    raise ValueError(f'{path}: `nc` is {data["nc"]} but `names` lists {len(names)} '
                     'classes')
  return [str(n) for n in names]


def read_class_list(path: str) -> List[str]:
  """Class names in index order from a data.yaml (`names:`) or a text file with one
  name per line (blank trailing lines ignored)."""
  if not os.path.isfile(path):
    raise ValueError(f'{path}: class list not found')
  if path.lower().endswith(YAML_SUFFIXES):
    names = _names_from_yaml(path)
    lines = [None] * len(names)
  else:
    with open(path, 'r', encoding='utf-8') as f:
      raw = f.read().splitlines()
    while raw and not raw[-1].strip():
      raw.pop()
    names, lines = [], []
    for i, text in enumerate(raw, 1):
      if not text.strip():
        raise ValueError(f'{path}:{i}: empty class name')
      names.append(text.strip())
      lines.append(i)
    if not names:
      raise ValueError(f'{path}: the class list is empty')
  seen: Dict[str, int] = {}
  for name, line in zip(names, lines):
    if name in seen:
      raise ValueError(f'{where(path, line)}: class {name!r} is listed twice')
    seen[name] = line
  return names


def categories(names: Sequence[str]) -> List[dict]:
  return [{'id': FIRST_CATEGORY_ID + i, 'name': n, 'supercategory': ''}
          for i, n in enumerate(names)]


def image_size(path: str) -> Tuple[Optional[Tuple[int, int]], str]:
  """`((width, height), '')` of an image file TF decodes, else `(None, reason)`."""
  reason = image_check.check_image(path, 0, 0, 'exists')
  if reason:
    return None, reason
  try:
    with Image.open(path) as im:
      fmt, size = im.format, im.size
  except Exception as e:  # pylint: disable=broad-except
    return None, f'unreadable image ({type(e).__name__}: {e})'
  if fmt not in image_check.TF_DECODABLE_FORMATS:
    return None, f'format {fmt} is not decodable by tf.io.decode_image'
  return (int(size[0]), int(size[1])), ''


def coco_dict(images: List[dict], annotations: List[dict], names: Sequence[str],
              description: str) -> dict:
  """COCO instances dict (images carry their ids); annotation ids are 1.. in order."""
  for i, ann in enumerate(annotations, 1):
    ann['id'] = i
  return {'info': {'description': description}, 'images': images,
          'annotations': annotations, 'categories': categories(names)}


def check_not_empty(images: List[dict], source: str, skipped) -> None:
  """ValueError when no image was converted (naming the first skip's reason)."""
  if not images:
    first = f': {skipped[0][0]}: {skipped[0][1]}' if skipped else ''
    raise ValueError(f'{source}: no image could be converted ({len(skipped)} '
                     f'skipped{first})')
