"""What a model dir holds besides its checkpoints, so that it can be used on its own.

    model_dir/
      params.yaml       the experiment (Model Garden's dump of the full config)
      categories.json   the category table: a COCO JSON with `categories` [{id, name}]
                        and empty `images` / `annotations`
      ckpt-N.*, checkpoint, best_ckpt/

tools/train.py and tools/import_odapi.py write categories.json; the loaders read it
instead of the training annotations, so a model dir copied anywhere evaluates,
exports and predicts. Model dirs written before it existed fall back to the training
annotation file that params.yaml names.
"""

import json
import os
from typing import List, Mapping, Optional, Sequence

from mnv2_det.data import coco_reader
from mnv2_det.data.category_map import CategoryMap

CATEGORIES_FILE = 'categories.json'


def categories_of(category_map: CategoryMap) -> List[dict]:
  """`[{id, name}]` of a category table, in contiguous order."""
  return [{'id': int(i), 'name': str(n)}
          for i, n in zip(category_map.dataset_ids, category_map.names)]


def write_categories(path: str, categories: Sequence[Mapping[str, object]]) -> None:
  """Writes a COCO JSON with only `categories` (atomically: temp file, then rename;
  the workers of a multi-worker run may write it at once)."""
  temp = f'{path}.tmp{os.getpid()}'
  with open(temp, 'w', encoding='utf-8') as f:
    json.dump({'images': [], 'annotations': [],
               'categories': [dict(c) for c in categories]}, f, indent=1)
  os.replace(temp, path)


def categories_file(model_dir: Optional[str]) -> Optional[str]:
  """`model_dir/categories.json` if it exists, else None."""
  if not model_dir:
    return None
  path = os.path.join(model_dir, CATEGORIES_FILE)
  return path if os.path.isfile(path) else None


def read_categories(path: str) -> CategoryMap:
  """The CategoryMap of a categories.json (or any COCO JSON); ValueError naming it."""
  return coco_reader.read_category_map(path)
