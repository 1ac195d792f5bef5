"""Table between a dataset's category ids and the model's contiguous class indices.

Class convention (docs/reference.md, "Class ids and background"; Model Garden
RetinaNet and OD API `add_background_class` style): the model has `num_classes`
outputs INCLUDING background at index 0; the dataset's category ids, sorted
ascending, become the contiguous indices 1..K. COCO's ids 1..90 with gaps therefore
map to 1..80.
"""

import dataclasses
from typing import Mapping, Sequence, Tuple

import numpy as np
import tensorflow as tf

BACKGROUND_INDEX = 0
BACKGROUND_NAME = 'background'
# Value of a lookup that hits no entry: an unknown dataset id, or the background
# index looked up in `to_dataset` (background has no dataset category id).
UNKNOWN = -1


@dataclasses.dataclass(frozen=True)
class CategoryMap:
  """Bidirectional category table.

  Attributes:
    dataset_ids: `[K]` int tuple, the dataset's category ids sorted ascending;
      `dataset_ids[i]` has contiguous index `i + 1`.
    names: `[K]` str tuple, the category names in the same order.
  """
  dataset_ids: Tuple[int, ...]
  names: Tuple[str, ...]

  def __post_init__(self):
    if len(self.dataset_ids) != len(self.names):
      raise ValueError(f'CategoryMap: {len(self.dataset_ids)} ids but '
                       f'{len(self.names)} names')
    if list(self.dataset_ids) != sorted(set(self.dataset_ids)):
      raise ValueError(f'CategoryMap: dataset_ids must be unique and sorted, got '
                       f'{list(self.dataset_ids)}')
    if self.dataset_ids and self.dataset_ids[0] < 0:
      raise ValueError(f'CategoryMap: negative category id {self.dataset_ids[0]}')

  @classmethod
  def from_categories(cls, categories: Sequence[Mapping[str, object]]):
    """Builds the table from COCO `categories` entries `{id, name}` (any order)."""
    pairs = sorted((int(c['id']), str(c.get('name', c['id']))) for c in categories)
    return cls(tuple(p[0] for p in pairs), tuple(p[1] for p in pairs))

  @classmethod
  def from_ids(cls, dataset_ids: Sequence[int]):
    """Builds the table from bare ids; names are the ids as strings."""
    ids = sorted(set(int(i) for i in dataset_ids))
    return cls(tuple(ids), tuple(str(i) for i in ids))

  @property
  def num_classes(self) -> int:
    """Number of model outputs including background: K + 1."""
    return len(self.dataset_ids) + 1

  @property
  def to_contiguous(self) -> np.ndarray:
    """`[max_dataset_id + 1]` int32 lookup: dataset id -> 1..K, UNKNOWN elsewhere."""
    size = (max(self.dataset_ids) + 1) if self.dataset_ids else 1
    table = np.full([size], UNKNOWN, np.int32)
    table[list(self.dataset_ids)] = np.arange(1, len(self.dataset_ids) + 1)
    return table

  @property
  def to_dataset(self) -> np.ndarray:
    """`[K + 1]` int32 lookup: contiguous index -> dataset id; [0] is UNKNOWN."""
    return np.array((UNKNOWN,) + tuple(self.dataset_ids), np.int32)

  @property
  def contiguous_names(self) -> Tuple[str, ...]:
    """`[K + 1]` names indexed by contiguous index; [0] is 'background'."""
    return (BACKGROUND_NAME,) + tuple(self.names)

  def label_map(self) -> dict:
    """`{dataset_id: name}`, e.g. for COCOEvaluator per-category metrics."""
    return dict(zip(self.dataset_ids, self.names))

  def contiguous_of(self, dataset_ids):
    """Maps a numpy array of dataset ids to contiguous indices (UNKNOWN if absent)."""
    ids = np.asarray(dataset_ids, np.int64)
    table = self.to_contiguous
    inside = (ids >= 0) & (ids < table.shape[0])
    out = np.full(ids.shape, UNKNOWN, np.int32)
    out[inside] = table[ids[inside]]
    return out

  def tf_to_contiguous(self, dataset_ids: tf.Tensor) -> tf.Tensor:
    """Graph version of `contiguous_of`; any int dtype in, int32 out."""
    table = tf.constant(self.to_contiguous)
    ids = tf.cast(dataset_ids, tf.int32)
    inside = tf.logical_and(ids >= 0, ids < tf.shape(table)[0])
    safe = tf.where(inside, ids, tf.zeros_like(ids))
    return tf.where(inside, tf.gather(table, safe), tf.fill(tf.shape(ids), UNKNOWN))

  def tf_to_dataset(self, contiguous: tf.Tensor) -> tf.Tensor:
    """Maps contiguous indices (any int/float dtype) to dataset ids, int32.

    Out-of-range indices (and background 0) give UNKNOWN.
    """
    table = tf.constant(self.to_dataset)
    idx = tf.cast(contiguous, tf.int32)
    inside = tf.logical_and(idx >= 0, idx < tf.shape(table)[0])
    safe = tf.where(inside, idx, tf.zeros_like(idx))
    return tf.where(inside, tf.gather(table, safe), tf.fill(tf.shape(idx), UNKNOWN))
