"""OD API label maps (`label_map.pbtxt`) -> the category table of an imported model.

The OD API's class channel `c` (1-based, 0 is background) IS label id `c`: ids index
the output directly, gaps included. Our `CategoryMap` gives sorted dataset ids the
contiguous indices 1..K, so an imported model gets a table with EVERY id 1..num_classes:
ids the label map names keep their names, the others are named `UNNAMED_FORMAT % id`.
Then contiguous index == label id, and detections carry the OD API's ids.
"""

import os
from typing import Dict, List, Optional

from mnv2_det.odapi import pbtxt

UNNAMED_FORMAT = 'class_%d'
# COCO's 80 category names by id (ids 1..90 with gaps): the names of
# mscoco_label_map.pbtxt and instances_val2017.json, used when no label map is given.
COCO_NAMES = {
    1: 'person', 2: 'bicycle', 3: 'car', 4: 'motorcycle', 5: 'airplane', 6: 'bus',
    7: 'train', 8: 'truck', 9: 'boat', 10: 'traffic light', 11: 'fire hydrant',
    13: 'stop sign', 14: 'parking meter', 15: 'bench', 16: 'bird', 17: 'cat', 18: 'dog',
    19: 'horse', 20: 'sheep', 21: 'cow', 22: 'elephant', 23: 'bear', 24: 'zebra',
    25: 'giraffe', 27: 'backpack', 28: 'umbrella', 31: 'handbag', 32: 'tie',
    33: 'suitcase', 34: 'frisbee', 35: 'skis', 36: 'snowboard', 37: 'sports ball',
    38: 'kite', 39: 'baseball bat', 40: 'baseball glove', 41: 'skateboard',
    42: 'surfboard', 43: 'tennis racket', 44: 'bottle', 46: 'wine glass', 47: 'cup',
    48: 'fork', 49: 'knife', 50: 'spoon', 51: 'bowl', 52: 'banana', 53: 'apple',
    54: 'sandwich', 55: 'orange', 56: 'broccoli', 57: 'carrot', 58: 'hot dog',
    59: 'pizza', 60: 'donut', 61: 'cake', 62: 'chair', 63: 'couch', 64: 'potted plant',
    65: 'bed', 67: 'dining table', 70: 'toilet', 72: 'tv', 73: 'laptop', 74: 'mouse',
    75: 'remote', 76: 'keyboard', 77: 'cell phone', 78: 'microwave', 79: 'oven',
    80: 'toaster', 81: 'sink', 82: 'refrigerator', 84: 'book', 85: 'clock', 86: 'vase',
    87: 'scissors', 88: 'teddy bear', 89: 'hair drier', 90: 'toothbrush',
}
COCO_NUM_CLASSES = 90


def read_label_map(path: str) -> Dict[int, str]:
  """`{id: name}` of a label_map.pbtxt (`item { id name display_name }`).

  `display_name` wins over `name` when both are set. Raises ValueError naming the file
  and the item for a missing/non-positive id, a duplicate id, or an unreadable file.
  """
  if not os.path.isfile(path):
    raise ValueError(f'label map {path} does not exist')
  with open(path, encoding='utf-8') as f:
    try:
      message = pbtxt.parse(f.read(), path)
    except pbtxt.ParseError as e:
      raise ValueError(f'label map {e}') from e
  unknown = sorted(set(message) - {'item'})
  if unknown:
    raise ValueError(f'{path}: unknown top-level field {unknown[0]!r} (a label map holds '
                     'only `item { ... }` entries)')
  names = {}
  for number, item in enumerate(message.get('item', []), start=1):
    if not isinstance(item, pbtxt.Message):
      raise ValueError(f'{path}: item {number} is not a message')
    item_id = item.one('id')
    if not isinstance(item_id, int) or item_id < 1:
      raise ValueError(f'{path}: item {number} needs an integer id >= 1 (0 is the '
                       f'background), got {item_id!r}')
    if item_id in names:
      raise ValueError(f'{path}: duplicate id {item_id} (items {names[item_id][1]} and '
                       f'{number})')
    name = item.one('display_name') or item.one('name') or UNNAMED_FORMAT % item_id
    names[item_id] = (str(name), number)
  if not names:
    raise ValueError(f'{path}: no items')
  return {k: v[0] for k, v in names.items()}


def category_table(num_classes: int, label_map: Optional[str] = None) -> List[dict]:
  """COCO-style `categories` `[{id, name}]` for ids 1..num_classes (OD API num_classes,
  background excluded): names from `label_map`, else COCO's names when num_classes is
  COCO's 90, else `class_<id>`."""
  if label_map:
    names = read_label_map(label_map)
    too_big = [i for i in names if i > num_classes]
    if too_big:
      raise ValueError(f'{label_map}: id {max(too_big)} exceeds the model\'s '
                       f'num_classes {num_classes}')
  else:
    names = COCO_NAMES if num_classes == COCO_NUM_CLASSES else {}
  return [{'id': i, 'name': names.get(i, UNNAMED_FORMAT % i)}
          for i in range(1, num_classes + 1)]
