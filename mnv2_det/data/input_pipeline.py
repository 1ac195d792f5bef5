"""tf.data input pipeline for SSD detection: decode, augment, resize, label.

One element of the batched dataset is `(images, labels)`:
  images: `[B, H, W, 3]` in [-1, 1] ((2/255)·x − 1,
    docs/reference.md, "Preprocessing"), of the `dtype` argument: float32
    (default), bfloat16 or float16 (cast last, as Model Garden's parsers do);
    'keep_aspect' padding (bottom/right) is 0 after normalization.
  labels: dict with
    every key the injected `anchor_labeler` returns, batched;
    image_info: `[B, 4, 2]` float32 Model Garden convention
      `[[orig_h, orig_w], [scaled_h, scaled_w], [y_scale, x_scale],
      [y_offset, x_offset]]` (see preprocess.image_info);
    source_id: `[B]` int64 COCO image id;
    gt_boxes: `[B, max_num_instances, 4]` float32 normalized yxyx in the network
      input frame (after augmentation), padded with -1; crowd boxes excluded;
    gt_classes: `[B, max_num_instances]` int32 contiguous, padded with -1;
    num_gt: `[B]` int32 number of valid gt rows;
    groundtruths (eval by default): dict for Model Garden's
      COCOEvaluator.update_state: source_id `[B]` int64, height, width `[B]`
      int32, num_detections `[B]` int32, boxes `[B, max, 4]` float32 absolute
      ORIGINAL pixels yxyx, classes `[B, max]` int32 DATASET category ids,
      areas `[B, max]` float32, is_crowds `[B, max]` int32; padded like
      official.vision.dataloaders.utils.pad_groundtruths_to_fixed_size (-1,
      is_crowds 0). Crowd annotations are included here (flagged).

The anchor labeler is injected: `anchor_labeler(gt_boxes [M, 4] float32
normalized yxyx in the network-input frame, gt_classes [M] int32) -> dict of
per-image tensors with static shapes`, e.g. a closure over
mnv2_det.ops.matching.assign_targets and the anchors.

Randomness is stateless: element i of the (shuffled, repeated) stream uses the
seed `[seed, i]`, so a fixed `seed` reproduces every crop and flip whatever the
map parallelism. Unreadable images are removed before tf.data by the reader's
up-front check (coco_reader / image_check), never inside the pipeline.
"""

from typing import Callable, Dict, Optional

import numpy as np
import tensorflow as tf

from official.vision.ops import preprocess_ops

from mnv2_det.data import augment
from mnv2_det.data import coco_reader
from mnv2_det.data import image_check
from mnv2_det.data import preprocess
from mnv2_det.data import tfrecord_reader
from mnv2_det.data.category_map import CategoryMap

DEFAULT_MAX_NUM_INSTANCES = 100
# Padding of gt rows, as Model Garden's pad_groundtruths_to_fixed_size.
GT_PAD_VALUE = -1
CROWD_PAD_VALUE = 0
DEFAULT_TFRECORD_SHUFFLE_BUFFER = 1000
RESERVED_LABEL_KEYS = ('image_info', 'source_id', 'gt_boxes', 'gt_classes',
                       'num_gt', 'groundtruths')
_SEED_RANGE = 2**31 - 1
# Order of a tuple returned by an assign function (mnv2_det.ops.matching).
TARGET_KEYS = ('cls_targets', 'box_targets', 'positive_mask', 'matched_gt_index')

AnchorLabeler = Callable[[tf.Tensor, tf.Tensor], Dict[str, tf.Tensor]]
# DataConfig.dtype values -> image dtypes (Model Garden's parsers take the same three).
IMAGE_DTYPES = {'float32': tf.float32, 'bfloat16': tf.bfloat16, 'float16': tf.float16}


def image_dtype(dtype: str) -> tf.DType:
  """The tf.DType of a DataConfig `dtype` string; ValueError naming `dtype` otherwise."""
  if not isinstance(dtype, str) or dtype not in IMAGE_DTYPES:
    raise ValueError(f'dtype must be one of {sorted(IMAGE_DTYPES)}, got {dtype!r}')
  return IMAGE_DTYPES[dtype]


def make_anchor_labeler(assign_fn: Callable, anchors) -> AnchorLabeler:
  """Adapts `assign_fn(anchors, gt_boxes, gt_classes)` to the labeler interface.

  Args:
    assign_fn: e.g. mnv2_det.ops.matching.assign_targets. It may return a dict,
      or a tuple in TARGET_KEYS order (cls_targets [N] int32, box_targets
      [N, 4], positive_mask [N], matched_gt_index [N]).
    anchors: `[N, 4]` normalized yxyx anchors (array or tensor).

  Returns:
    `labeler(gt_boxes, gt_classes) -> dict`. `matched_gt_index` rows refer to
    the unpadded gt list, i.e. to labels['gt_boxes'] rows while the image has
    at most max_num_instances boxes.
  """
  anchors = tf.convert_to_tensor(anchors, tf.float32)

  def labeler(gt_boxes, gt_classes):
    targets = assign_fn(anchors, gt_boxes, gt_classes)
    if isinstance(targets, dict):
      return dict(targets)
    if len(targets) != len(TARGET_KEYS):
      raise ValueError(f'assign_fn returned {len(targets)} tensors; expected a '
                       f'dict or a tuple of {TARGET_KEYS}')
    return dict(zip(TARGET_KEYS, targets))

  return labeler


def _pad(tensor, size, value):
  return preprocess_ops.clip_or_pad_to_fixed_size(tensor, size, value)


class Parser:
  """Turns one example dict into `(image, labels)` (see module docstring).

  The example dict holds image `[H, W, 3]` uint8, source_id int64, height and
  width int32 (of the annotation), boxes `[M, 4]` float32 normalized yxyx,
  classes `[M]` int32 contiguous, is_crowd `[M]` bool, area `[M]` float32.
  """

  def __init__(self, output_size, category_map: CategoryMap, augment_images: bool,
               include_groundtruths: bool,
               anchor_labeler: Optional[AnchorLabeler] = None,
               resize_mode: str = 'fixed',
               max_num_instances: int = DEFAULT_MAX_NUM_INSTANCES,
               random_crop: bool = True, random_flip: bool = True,
               dtype: str = 'float32'):
    """`augment_images` turns augmentation on; `random_crop` (SSD random crop) and
    `random_flip` (horizontal) choose which. `dtype`: of the returned image (see
    IMAGE_DTYPES)."""
    self._output_size = preprocess.validate_resize(resize_mode, output_size)
    self._dtype = image_dtype(dtype)
    self._random_crop = random_crop
    self._random_flip = random_flip
    if max_num_instances < 1:
      raise ValueError(f'max_num_instances must be >= 1, got {max_num_instances}')
    self._category_map = category_map
    self._augment = augment_images
    self._include_groundtruths = include_groundtruths
    self._labeler = anchor_labeler
    self._resize_mode = resize_mode
    self._max = max_num_instances

  def __call__(self, seed: tf.Tensor, example: dict):
    """Args: seed `[2]` int64 stateless seed; example dict. Returns (image, labels)."""
    image = example['image']
    original_hw = tf.shape(image)[:2]
    not_crowd = tf.reshape(tf.where(tf.logical_not(example['is_crowd'])), [-1])
    boxes = tf.gather(example['boxes'], not_crowd)
    classes = tf.gather(example['classes'], not_crowd)
    crop_begin, crop_hw = tf.zeros([2], tf.int32), original_hw
    if self._augment:
      crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
      if self._random_crop:
        image, boxes, kept, crop_begin, crop_hw = augment.ssd_random_crop(
            image, boxes, crop_seed)
        classes = tf.gather(classes, kept)
      if self._random_flip:
        image, boxes, _ = augment.random_horizontal_flip(image, boxes, flip_seed)
    image, size = preprocess.resize_and_pad(image, self._output_size,
                                            self._resize_mode)
    boxes = preprocess.boxes_to_output_frame(boxes, size, self._output_size)
    image = tf.cast(image, self._dtype)
    num_gt = tf.minimum(tf.shape(classes)[0], self._max)
    labels = {
        'image_info': preprocess.image_info(original_hw, crop_begin, crop_hw, size),
        'source_id': tf.cast(example['source_id'], tf.int64),
        'gt_boxes': _pad(boxes, self._max, GT_PAD_VALUE),
        'gt_classes': _pad(classes, self._max, GT_PAD_VALUE),
        'num_gt': num_gt,
    }
    if self._labeler is not None:
      targets = self._labeler(boxes, classes)
      clash = sorted(set(targets) & set(RESERVED_LABEL_KEYS))
      if clash:
        raise ValueError(f'anchor_labeler output keys {clash} clash with the '
                         f'pipeline label keys {RESERVED_LABEL_KEYS}')
      labels.update(targets)
    if self._include_groundtruths:
      labels['groundtruths'] = self._groundtruths(example)
    return image, labels

  def _groundtruths(self, example):
    """Unaugmented ground truth in the COCOEvaluator.update_state format."""
    height = tf.cast(example['height'], tf.int32)
    width = tf.cast(example['width'], tf.int32)
    scale = tf.cast(tf.stack([height, width, height, width]), tf.float32)
    return {
        'source_id': tf.cast(example['source_id'], tf.int64),
        'height': height,
        'width': width,
        'num_detections': tf.minimum(tf.shape(example['classes'])[0], self._max),
        'boxes': _pad(example['boxes'] * scale, self._max, GT_PAD_VALUE),
        'classes': _pad(self._category_map.tf_to_dataset(example['classes']),
                        self._max, GT_PAD_VALUE),
        'areas': _pad(tf.cast(example['area'], tf.float32), self._max, GT_PAD_VALUE),
        'is_crowds': _pad(tf.cast(example['is_crowd'], tf.int32), self._max,
                          CROWD_PAD_VALUE),
    }


def _record_slices(records):
  """Column dict of the records; per-instance columns are ragged `[N, (M), ...]`."""
  lengths = np.array([r.num_instances for r in records], np.int64)

  def ragged(values):
    return tf.RaggedTensor.from_row_lengths(values, lengths)

  return {
      'file_path': tf.constant([r.file_path for r in records]),
      'source_id': tf.constant([r.image_id for r in records], tf.int64),
      'height': tf.constant([r.height for r in records], tf.int32),
      'width': tf.constant([r.width for r in records], tf.int32),
      'boxes': ragged(np.concatenate([r.boxes for r in records]).reshape([-1, 4])),
      'classes': ragged(np.concatenate([r.classes for r in records]).astype(np.int32)),
      'is_crowd': ragged(np.concatenate([r.is_crowd for r in records]).astype(bool)),
      'area': ragged(np.concatenate([r.area for r in records]).astype(np.float32)),
  }


def _load_image(element):
  """JSON-source element (file path + annotations) -> example dict."""
  example = {k: v for k, v in element.items() if k != 'file_path'}
  example['image'] = preprocess.decode_image_rgb(tf.io.read_file(element['file_path']))
  return example


def _check_options(batch_size, shuffle_buffer_size, drop_remainder):
  """ValueError naming the data config field that is out of range."""
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}')
  if (isinstance(shuffle_buffer_size, bool) or
      not isinstance(shuffle_buffer_size, (int, np.integer)) or shuffle_buffer_size < 1):
    raise ValueError(f'shuffle_buffer_size must be an integer >= 1, got '
                     f'{shuffle_buffer_size!r}')
  if drop_remainder is not None and not isinstance(drop_remainder, (bool, np.bool_)):
    raise ValueError(f'drop_remainder must be true or false, got {drop_remainder!r}')


def _assemble(dataset, decode_fn, parser, batch_size, shuffle_buffer_size, is_training,
              seed, repeat=None, shuffle=None, deterministic=None,
              drop_remainder=None, input_context=None):
  """Shards, shuffles, repeats, decodes + parses in parallel, batches, prefetches.

  With a `tf.distribute.InputContext` of several input pipelines (multi-worker), each
  pipeline reads its own `1 / num_input_pipelines` shard of the records.
  """
  _check_options(batch_size, shuffle_buffer_size, drop_remainder)
  pick = lambda value, default: default if value is None else value
  repeat = pick(repeat, is_training)
  shuffle = pick(shuffle, is_training)
  deterministic = pick(deterministic, (not is_training) or seed is not None)
  drop_remainder = pick(drop_remainder, is_training)
  base_seed = seed if seed is not None else int(
      np.random.default_rng().integers(_SEED_RANGE))
  if input_context is not None and input_context.num_input_pipelines > 1:
    dataset = dataset.shard(input_context.num_input_pipelines,
                            input_context.input_pipeline_id)
  if shuffle:
    dataset = dataset.shuffle(shuffle_buffer_size, seed=base_seed,
                              reshuffle_each_iteration=True)
  if repeat:
    dataset = dataset.repeat()
  dataset = dataset.enumerate()
  base = tf.constant(base_seed, tf.int64)
  dataset = dataset.map(
      lambda i, element: parser(tf.stack([base, i]), decode_fn(element)),
      num_parallel_calls=tf.data.AUTOTUNE, deterministic=deterministic)
  dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
  dataset = dataset.prefetch(tf.data.AUTOTUNE)
  options = tf.data.Options()
  options.deterministic = deterministic
  return dataset.with_options(options)


def _make_parser(output_size, category_map, is_training, augment_images,
                 include_groundtruths, **kwargs) -> Parser:
  """A Parser whose unset (None) switches follow `is_training`: augment when training,
  include groundtruths when evaluating."""
  return Parser(output_size, category_map,
                augment_images=is_training if augment_images is None else augment_images,
                include_groundtruths=(not is_training if include_groundtruths is None
                                      else include_groundtruths),
                **kwargs)


def build_dataset_from_coco(coco: coco_reader.CocoDataset, is_training: bool,
                            batch_size: int, output_size,
                            anchor_labeler: Optional[AnchorLabeler] = None,
                            resize_mode: str = 'fixed',
                            max_num_instances: int = DEFAULT_MAX_NUM_INSTANCES,
                            seed: Optional[int] = None,
                            augment_images: Optional[bool] = None,
                            include_groundtruths: Optional[bool] = None,
                            repeat: Optional[bool] = None,
                            shuffle: Optional[bool] = None,
                            deterministic: Optional[bool] = None,
                            drop_remainder: Optional[bool] = None,
                            input_context: Optional[tf.distribute.InputContext] = None,
                            random_crop: bool = True, random_flip: bool = True,
                            shuffle_buffer_size: Optional[int] = None,
                            dtype: str = 'float32') -> tf.data.Dataset:
  """Pipeline over an already read CocoDataset; arguments as build_dataset."""
  if not coco.records:
    raise ValueError(f'{coco.annotation_file}: no usable images (skipped '
                     f'{len(coco.stats.skipped_images)})')
  parser = _make_parser(output_size, coco.category_map, is_training, augment_images,
                        include_groundtruths, anchor_labeler=anchor_labeler,
                        resize_mode=resize_mode, max_num_instances=max_num_instances,
                        random_crop=random_crop, random_flip=random_flip, dtype=dtype)
  dataset = tf.data.Dataset.from_tensor_slices(_record_slices(coco.records))
  if shuffle_buffer_size is None:
    shuffle_buffer_size = len(coco.records)
  return _assemble(dataset, _load_image, parser, batch_size, shuffle_buffer_size,
                   is_training, seed, repeat, shuffle, deterministic, drop_remainder,
                   input_context)


def build_dataset(annotation_file: str, image_dir: str, is_training: bool,
                  batch_size: int, output_size,
                  anchor_labeler: Optional[AnchorLabeler] = None,
                  resize_mode: str = 'fixed',
                  max_num_instances: int = DEFAULT_MAX_NUM_INSTANCES,
                  seed: Optional[int] = None,
                  category_map: Optional[CategoryMap] = None,
                  check_images: str = image_check.DEFAULT_CHECK_LEVEL,
                  on_bad_image: str = 'skip',
                  **kwargs) -> tf.data.Dataset:
  """Reads a COCO JSON + image folder and builds the batched pipeline.

  Args:
    annotation_file: COCO instances JSON.
    image_dir: folder the JSON's `file_name`s are relative to.
    is_training: sets the defaults below (augment, shuffle, repeat, drop
      remainder and non-deterministic order when unseeded for training;
      groundtruths and deterministic order for eval).
    batch_size: images per batch.
    output_size: int or `[height, width]` of the network input.
    anchor_labeler: callable, see module docstring; None adds no targets.
    resize_mode: 'fixed' (stretch) or 'keep_aspect' (fit + zero-pad
      bottom/right; output_size a multiple of 32).
    max_num_instances: rows of the padded gt_* / groundtruths tensors.
    seed: int for reproducible shuffling and augmentation; None draws one.
    category_map: table to use (e.g. the training table for a val file);
      default: built from the file's categories.
    check_images, on_bad_image: see coco_reader.read_coco.
    **kwargs: augment_images, include_groundtruths, repeat, shuffle,
      deterministic, drop_remainder (bool or None for the default), and
      input_context (a tf.distribute.InputContext: shard per input pipeline),
      random_crop / random_flip (which augmentations run when augmenting),
      shuffle_buffer_size (elements of the shuffle buffer; None: every image, a
      full shuffle, cheap here since elements are paths + annotations), dtype
      (of the images: 'float32' (default), 'bfloat16' or 'float16').

  Returns:
    tf.data.Dataset of `(images, labels)`; see the module docstring.
  """
  coco = coco_reader.read_coco(annotation_file, image_dir, check_images=check_images,
                               on_bad_image=on_bad_image, category_map=category_map)
  return build_dataset_from_coco(coco, is_training, batch_size, output_size,
                                 anchor_labeler, resize_mode, max_num_instances,
                                 seed, **kwargs)


def build_dataset_from_tfrecords(file_pattern: str, category_map: CategoryMap,
                                 is_training: bool, batch_size: int, output_size,
                                 anchor_labeler: Optional[AnchorLabeler] = None,
                                 resize_mode: str = 'fixed',
                                 max_num_instances: int = DEFAULT_MAX_NUM_INSTANCES,
                                 seed: Optional[int] = None,
                                 shuffle_buffer_size: int = DEFAULT_TFRECORD_SHUFFLE_BUFFER,
                                 augment_images: Optional[bool] = None,
                                 include_groundtruths: Optional[bool] = None,
                                 random_crop: bool = True, random_flip: bool = True,
                                 dtype: str = 'float32',
                                 **kwargs) -> tf.data.Dataset:
  """Same pipeline over Model Garden TFRecords (labels are dataset category ids).

  `shuffle_buffer_size` counts serialized examples (encoded images) held in memory;
  `dtype` is the images' as build_dataset.
  `kwargs`: repeat, shuffle, deterministic, drop_remainder as build_dataset.
  """
  parser = _make_parser(output_size, category_map, is_training, augment_images,
                        include_groundtruths, anchor_labeler=anchor_labeler,
                        resize_mode=resize_mode, max_num_instances=max_num_instances,
                        random_crop=random_crop, random_flip=random_flip, dtype=dtype)
  dataset = tf.data.TFRecordDataset(tfrecord_reader.list_files(file_pattern))
  return _assemble(dataset, tfrecord_reader.make_decode_fn(category_map), parser,
                   batch_size, shuffle_buffer_size, is_training, seed, **kwargs)


def load_category_map(annotation_file: str) -> CategoryMap:
  """The CategoryMap of a COCO JSON (sorted ids -> 1..K), without reading images."""
  return coco_reader.read_category_map(annotation_file)
