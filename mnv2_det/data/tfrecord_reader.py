"""Reads Model Garden detection TFRecords (official.vision.data.create_coco_tf_record).

Decoding is Model Garden's own `TfExampleDecoder`; this module only turns its
output into the pipeline's example dict (see input_pipeline.EXAMPLE_KEYS):
class labels in the records are DATASET category ids and are mapped to
contiguous indices with a CategoryMap. A label missing from the map stops the
pipeline with an InvalidArgumentError naming the problem (graph code cannot
raise ValueError). Boxes are clipped to [0, 1] and zero-size boxes dropped.
"""

import tensorflow as tf

from official.vision.dataloaders import tf_example_decoder

from mnv2_det.data.category_map import CategoryMap


def decode_example(decoded: dict, category_map: CategoryMap) -> dict:
  """Maps a TfExampleDecoder output dict to the pipeline's example dict."""
  boxes = tf.clip_by_value(tf.cast(decoded['groundtruth_boxes'], tf.float32), 0.0, 1.0)
  classes = category_map.tf_to_contiguous(decoded['groundtruth_classes'])
  check = tf.debugging.assert_positive(
      classes, message=('TFRecord holds a class label that is not in the '
                        f'category map {list(category_map.dataset_ids)}'))
  with tf.control_dependencies([check]):
    classes = tf.identity(classes)
  non_empty = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
  keep = tf.reshape(tf.where(non_empty), [-1])
  source_id = decoded['source_id']
  if source_id.dtype == tf.string:
    source_id = tf.strings.to_number(source_id, tf.int64)
  return {
      'image': decoded['image'],
      'source_id': tf.cast(source_id, tf.int64),
      'height': tf.cast(decoded['height'], tf.int32),
      'width': tf.cast(decoded['width'], tf.int32),
      'boxes': tf.gather(boxes, keep),
      'classes': tf.gather(classes, keep),
      'is_crowd': tf.gather(tf.cast(decoded['groundtruth_is_crowd'], tf.bool), keep),
      'area': tf.gather(tf.cast(decoded['groundtruth_area'], tf.float32), keep),
  }


def list_files(file_pattern: str):
  """Sorted TFRecord file names matching `file_pattern`; ValueError if none."""
  files = sorted(tf.io.gfile.glob(file_pattern))
  if not files:
    raise ValueError(f'no TFRecord files match {file_pattern!r}')
  return files


def make_decode_fn(category_map: CategoryMap):
  """Returns `fn(serialized tf.Example string) -> example dict`.

  The example dict holds: image `[H, W, 3]` uint8, source_id int64,
  height/width int32, boxes `[M, 4]` float32 normalized yxyx, classes `[M]`
  int32 contiguous, is_crowd `[M]` bool, area `[M]` float32 pixels^2.
  """
  decoder = tf_example_decoder.TfExampleDecoder()
  return lambda serialized: decode_example(decoder.decode(serialized), category_map)


def read_tfrecords(file_pattern: str, category_map: CategoryMap) -> tf.data.Dataset:
  """Dataset of example dicts (see make_decode_fn) from TFRecord files, in order."""
  dataset = tf.data.TFRecordDataset(list_files(file_pattern))
  return dataset.map(make_decode_fn(category_map),
                     num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
