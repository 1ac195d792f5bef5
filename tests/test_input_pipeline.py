"""Tests for mnv2_det.data.input_pipeline (+ preprocess, augment, tfrecord_reader)."""

import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from official.core import exp_factory
from official.core import task_factory
from official.vision.data import create_coco_tf_record
from official.vision.evaluation import coco_evaluator

import mnv2_det  # pylint: disable=unused-import  # registers the task and experiments
from mnv2_det.configs import experiments
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.data import augment
from mnv2_det.data import input_pipeline
from mnv2_det.data import shapes
from mnv2_det.data.category_map import CategoryMap

MAX_INSTANCES = 100


def stand_in_labeler(boxes, classes):
  """Trivial anchor labeler: fixed-shape summaries of what it was given."""
  return {'num_boxes': tf.shape(classes)[0],
          'box_sum': tf.reduce_sum(boxes, axis=0),
          'class_sum': tf.reduce_sum(classes)}


def _norm(rgb):
  """Pixel value(s) in [0, 255] -> network input value, (2/255)·x − 1."""
  return np.asarray(rgb, np.float64) * 2.0 / 255.0 - 1.0


def _write_coco(directory, images, annotations, categories):
  """Writes images {file_name: PIL image | bytes | None(=missing)} + a COCO JSON."""
  os.makedirs(directory, exist_ok=True)
  entries = []
  for i, (name, (image, height, width)) in enumerate(images.items()):
    if isinstance(image, bytes):
      with open(os.path.join(directory, name), 'wb') as f:
        f.write(image)
    elif image is not None:
      image.save(os.path.join(directory, name))
    entries.append({'id': i + 1, 'file_name': name, 'height': height, 'width': width})
  path = os.path.join(directory, 'ann.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'images': entries, 'annotations': annotations,
               'categories': [{'id': c, 'name': str(c)} for c in categories]}, f)
  return path


def _collect(dataset, num_batches=None):
  out = []
  for i, element in enumerate(dataset):
    if num_batches is not None and i >= num_batches:
      break
    out.append(tf.nest.map_structure(lambda t: t.numpy(), element))
  return out


@pytest.fixture(scope='module')
def shapes_data(tmp_path_factory):
  return shapes.generate(str(tmp_path_factory.mktemp('shapes')), 12, 7, seed=0)


def test_training_batch_shapes_dtypes_and_range(shapes_data):
  ds = input_pipeline.build_dataset(
      shapes_data['train_annotations'], shapes_data['train_images'],
      is_training=True, batch_size=4, output_size=(96, 128),
      anchor_labeler=stand_in_labeler, seed=0)
  spec_images, spec_labels = ds.element_spec
  assert spec_images.shape == (4, 96, 128, 3)  # static, drop_remainder
  assert 'groundtruths' not in spec_labels
  for images, labels in _collect(ds, 4):  # 16 > 12 images: repeats
    assert images.dtype == np.float32 and images.shape == (4, 96, 128, 3)
    assert images.min() >= -1.0 and images.max() <= 1.0
    assert labels['image_info'].shape == (4, 4, 2)
    assert labels['image_info'].dtype == np.float32
    assert labels['source_id'].dtype == np.int64
    assert set(labels['source_id']) <= set(range(1, 13))
    assert labels['gt_boxes'].shape == (4, MAX_INSTANCES, 4)
    assert labels['gt_classes'].dtype == np.int32
    for b in range(4):
      n = labels['num_gt'][b]
      boxes, classes = labels['gt_boxes'][b], labels['gt_classes'][b]
      assert np.all(boxes[n:] == -1) and np.all(classes[n:] == -1)
      assert np.all((classes[:n] >= 1) & (classes[:n] <= 5))  # contiguous 1..K
      assert np.all((boxes[:n] >= 0) & (boxes[:n] <= 1))
      assert np.all(boxes[:n, 2:] > boxes[:n, :2])
      # The labeler saw exactly the unpadded boxes of the network-input frame.
      assert labels['num_boxes'][b] == n
      np.testing.assert_allclose(labels['box_sum'][b], boxes[:n].sum(0), atol=1e-5)
      assert labels['class_sum'][b] == classes[:n].sum()


def test_eval_groundtruths_are_coco_evaluator_ready(shapes_data):
  with open(shapes_data['val_annotations'], encoding='utf-8') as f:
    coco = json.load(f)
  ds = input_pipeline.build_dataset(
      shapes_data['val_annotations'], shapes_data['val_images'], is_training=False,
      batch_size=3, output_size=256, resize_mode='keep_aspect',
      anchor_labeler=stand_in_labeler)
  batches = _collect(ds)
  assert [b[0].shape[0] for b in batches] == [3, 3, 1]  # nothing dropped
  source_ids = np.concatenate([b[1]['source_id'] for b in batches])
  np.testing.assert_array_equal(source_ids, [im['id'] for im in coco['images']])
  anns = {}
  for a in coco['annotations']:
    anns.setdefault(a['image_id'], []).append(a)
  evaluator = coco_evaluator.COCOEvaluator(annotation_file=None, include_mask=False)
  for _, labels in batches:
    gt = labels['groundtruths']
    for b, image_id in enumerate(gt['source_id']):
      expected = anns.get(image_id, [])
      n = gt['num_detections'][b]
      assert n == len(expected)
      x, y, w, h = (np.array([a['bbox'][k] for a in expected]).reshape(-1)
                    for k in range(4))
      np.testing.assert_allclose(gt['boxes'][b, :n], np.stack([y, x, y + h, x + w], 1),
                                 atol=1e-3)  # absolute original pixels, yxyx
      np.testing.assert_array_equal(gt['classes'][b, :n],
                                    [a['category_id'] for a in expected])  # dataset ids
      np.testing.assert_allclose(gt['areas'][b, :n], [a['area'] for a in expected])
      assert np.all(gt['classes'][b, n:] == -1) and np.all(gt['is_crowds'][b] == 0)
    # Perfect detections in network-input pixels: the evaluator divides by
    # image_info's scale, so AP must come out 1.
    scale = np.tile(labels['image_info'][:, 2:3, :], (1, 1, 2))
    predictions = {
        'source_id': gt['source_id'],
        'image_info': labels['image_info'],
        'num_detections': gt['num_detections'],
        'detection_boxes': gt['boxes'] * scale,
        'detection_classes': gt['classes'],
        'detection_scores': np.ones_like(gt['areas']),
    }
    evaluator.update_state(tf.nest.map_structure(tf.constant, gt),
                           tf.nest.map_structure(tf.constant, predictions))
  metrics = evaluator.result()
  assert metrics['AP'] == pytest.approx(1.0)
  assert metrics['APs'] == pytest.approx(1.0)


def _solid_image_dataset(tmp_path, height=60, width=90):
  image = Image.new('RGB', (width, height), (200, 100, 50))
  return _write_coco(str(tmp_path), {'a.png': (image, height, width)},
                     [{'id': 1, 'image_id': 1, 'category_id': 5,
                       'bbox': [9, 6, 18, 12], 'area': 216, 'iscrowd': 0}], [5])


def test_keep_aspect_image_info_boxes_and_zero_padding(tmp_path):
  path = _solid_image_dataset(tmp_path)
  ds = input_pipeline.build_dataset(path, str(tmp_path), is_training=False,
                                    batch_size=1, output_size=64,
                                    resize_mode='keep_aspect')
  (images, labels), = _collect(ds)
  # scale = min(64/60, 64/90) = 0.7111; 60 * 0.7111 = 42.67 -> 43 rows, 90 -> 64.
  np.testing.assert_allclose(labels['image_info'][0],
                             [[60, 90], [43, 64], [43 / 60, 64 / 90], [0, 0]], rtol=1e-6)
  np.testing.assert_allclose(images[0, :43], np.broadcast_to(
      _norm([200, 100, 50]), (43, 64, 3)), atol=1e-5)
  assert np.all(images[0, 43:] == 0.0)  # padding is 0 after normalization
  # bbox [x=9, y=6, w=18, h=12] is [0.1, 0.1, 0.3, 0.3] of the original, which
  # covers 43/64 of the padded height and all of its width.
  np.testing.assert_allclose(labels['gt_boxes'][0, 0],
                             [0.1 * 43 / 64, 0.1, 0.3 * 43 / 64, 0.3], rtol=1e-5)
  with pytest.raises(ValueError, match='multiple of 32'):
    input_pipeline.build_dataset(path, str(tmp_path), False, 1, 100,
                                 resize_mode='keep_aspect')


def test_fixed_resize_image_info(tmp_path):
  path = _solid_image_dataset(tmp_path)
  ds = input_pipeline.build_dataset(path, str(tmp_path), is_training=False,
                                    batch_size=1, output_size=(30, 45))
  (images, labels), = _collect(ds)
  assert images.shape == (1, 30, 45, 3)
  np.testing.assert_allclose(labels['image_info'][0],
                             [[60, 90], [30, 45], [0.5, 0.5], [0, 0]])
  np.testing.assert_allclose(labels['gt_boxes'][0, 0], [0.1, 0.1, 0.3, 0.3], rtol=1e-5)
  with pytest.raises(ValueError, match='resize_mode'):
    input_pipeline.build_dataset(path, str(tmp_path), False, 1, 64, resize_mode='crop')


# Two coloured rectangles in a 120 x 160 grey image: (category, colour, x0, y0, x1, y1).
_RECTS = ((4, (230, 30, 30), 20, 30, 60, 70), (8, (30, 30, 230), 100, 60, 150, 110))


def _two_rect_dataset(tmp_path):
  pixels = np.full((120, 160, 3), 128, np.uint8)
  anns = []
  for i, (cat, colour, x0, y0, x1, y1) in enumerate(_RECTS):
    pixels[y0:y1, x0:x1] = colour
    anns.append({'id': i + 1, 'image_id': 1, 'category_id': cat,
                 'bbox': [x0, y0, x1 - x0, y1 - y0], 'area': (x1 - x0) * (y1 - y0),
                 'iscrowd': 0})
  return _write_coco(str(tmp_path), {'a.png': (Image.fromarray(pixels), 120, 160)},
                     anns, [4, 8])


def test_crop_and_flip_keep_boxes_on_their_coloured_regions(tmp_path):
  path = _two_rect_dataset(tmp_path)
  out_h, out_w = 96, 128
  ds = input_pipeline.build_dataset(path, str(tmp_path), is_training=True,
                                    batch_size=8, output_size=(out_h, out_w), seed=5)
  seen = {'flipped': 0, 'unflipped': 0, 'cropped': 0, 'uncropped': 0, 'dropped': 0}
  for images, labels in _collect(ds, 8):  # 64 augmented samples
    for image, info, boxes, classes, n in zip(
        images, labels['image_info'], labels['gt_boxes'], labels['gt_classes'],
        labels['num_gt']):
      cropped = np.any(info[3] != 0) or not np.allclose(info[2], [out_h / 120, out_w / 160])
      seen['cropped' if cropped else 'uncropped'] += 1
      seen['dropped'] += n < 2
      centres = {}
      for box, cls in zip(boxes[:n], classes[:n]):
        _, colour, x0, y0, x1, y1 = _RECTS[cls - 1]  # contiguous 1, 2 <- ids 4, 8
        is_colour = np.abs(image - _norm(colour)).max(-1) < 0.3
        r0, c0 = int(np.ceil(box[0] * out_h)) + 1, int(np.ceil(box[1] * out_w)) + 1
        r1, c1 = int(box[2] * out_h) - 1, int(box[3] * out_w) - 1
        if r1 > r0 and c1 > c0:  # the box interior is this class's colour
          assert is_colour[r0:r1, c0:c1].mean() > 0.95
        outside = is_colour.copy()  # and no pixel of that colour is outside it
        outside[max(r0 - 3, 0):r1 + 3, max(c0 - 3, 0):c1 + 3] = False
        assert outside.sum() == 0
        centres[cls] = (box[1] + box[3]) / 2
        # image_info maps original pixels to network pixels (up to a flip).
        y = np.array([y0, y1]) * info[2, 0] - info[3, 0]
        x = np.array([x0, x1]) * info[2, 1] - info[3, 1]
        y, x = np.clip(y, 0, info[1, 0]), np.clip(x, 0, info[1, 1])
        np.testing.assert_allclose(box[[0, 2]] * out_h, y, atol=1e-3)
        flipped_x = info[1, 1] - x[::-1]
        assert (np.allclose(box[[1, 3]] * out_w, x, atol=1e-3) or
                np.allclose(box[[1, 3]] * out_w, flipped_x, atol=1e-3))
      if len(centres) == 2:  # red starts left of blue
        seen['unflipped' if centres[1] < centres[2] else 'flipped'] += 1
  assert min(seen.values()) > 0, seen


def test_same_seed_same_batches(shapes_data):
  def first_batches(seed):
    ds = input_pipeline.build_dataset(
        shapes_data['train_annotations'], shapes_data['train_images'], True, 4, 64,
        seed=seed)
    return _collect(ds, 2)
  a, b, c = first_batches(7), first_batches(7), first_batches(8)
  for (ia, la), (ib, lb) in zip(a, b):
    np.testing.assert_array_equal(ia, ib)
    np.testing.assert_array_equal(la['gt_boxes'], lb['gt_boxes'])
    np.testing.assert_array_equal(la['source_id'], lb['source_id'])
  assert not np.array_equal(a[0][0], c[0][0])


def test_grayscale_rgba_and_16bit_png(tmp_path):
  rng = np.random.default_rng(1)
  gray = rng.integers(0, 256, (24, 32), np.uint8)
  rgba = rng.integers(0, 256, (24, 32, 4), np.uint8)
  levels = rng.integers(0, 256, (24, 32))
  deep = (levels * 257).astype(np.uint16)  # k * 257 is exactly k in 8 bits
  path = _write_coco(str(tmp_path), {
      'gray.png': (Image.fromarray(gray), 24, 32),
      'rgba.png': (Image.fromarray(rgba, 'RGBA'), 24, 32),
      'deep.png': (Image.fromarray(deep), 24, 32),
  }, [], [1])
  assert Image.open(os.path.join(tmp_path, 'deep.png')).mode == 'I;16'
  # Same output size: the bilinear resize is the identity.
  ds = input_pipeline.build_dataset(path, str(tmp_path), False, 3, (24, 32))
  (images, _), = _collect(ds)
  np.testing.assert_allclose(images[0], _norm(np.repeat(gray[..., None], 3, -1)),
                             atol=1e-5)
  np.testing.assert_allclose(images[1], _norm(rgba[..., :3]), atol=1e-5)
  np.testing.assert_allclose(images[2], _norm(np.repeat(levels[..., None], 3, -1)),
                             atol=1e-5)


def test_bad_images_are_reported_by_name_not_crashing(tmp_path, caplog):
  good = Image.new('RGB', (32, 24), (10, 20, 30))
  path = _write_coco(str(tmp_path), {
      'good.png': (good, 24, 32),
      'corrupt.jpg': (b'\xff\xd8\xff\xe0 not really a jpeg', 24, 32),
      'empty.jpg': (b'', 24, 32),
      'missing.png': (None, 24, 32),
  }, [], [1])
  ds = input_pipeline.build_dataset(path, str(tmp_path), False, 4, 32)
  (images, labels), = _collect(ds)
  assert images.shape[0] == 1 and labels['source_id'].tolist() == [1]
  for name in ('corrupt.jpg', 'empty.jpg', 'missing.png'):
    assert name in caplog.text
  with pytest.raises(ValueError, match='corrupt.jpg'):
    input_pipeline.build_dataset(path, str(tmp_path), False, 4, 32,
                                 on_bad_image='raise')


def test_crowd_excluded_from_targets_but_kept_for_eval(tmp_path):
  image = Image.new('RGB', (40, 30), (90, 90, 90))
  path = _write_coco(str(tmp_path), {'a.png': (image, 30, 40)}, [
      {'id': 1, 'image_id': 1, 'category_id': 2, 'bbox': [1, 1, 10, 10]},
      {'id': 2, 'image_id': 1, 'category_id': 2, 'bbox': [20, 5, 15, 20],
       'iscrowd': 1},
  ], [2])
  ds = input_pipeline.build_dataset(path, str(tmp_path), True, 1, 32,
                                    anchor_labeler=stand_in_labeler,
                                    augment_images=False, repeat=False)
  (_, labels), = _collect(ds)
  assert labels['num_gt'].tolist() == [1] and labels['num_boxes'].tolist() == [1]
  ds = input_pipeline.build_dataset(path, str(tmp_path), False, 1, 32)
  (_, labels), = _collect(ds)
  gt = labels['groundtruths']
  assert gt['num_detections'].tolist() == [2]
  assert gt['is_crowds'][0, :3].tolist() == [1 - 1, 1, 0]
  assert gt['areas'][0, :2].tolist() == [100.0, 300.0]  # filled from the boxes


def test_tfrecords_give_the_same_eval_elements(shapes_data, tmp_path):
  with open(shapes_data['val_annotations'], encoding='utf-8') as f:
    coco = json.load(f)
  record_path = str(tmp_path / 'val.tfrecord')
  with tf.io.TFRecordWriter(record_path) as writer:
    for image in coco['images']:
      anns = [a for a in coco['annotations'] if a['image_id'] == image['id']]
      example, skipped = create_coco_tf_record.create_tf_example(
          image, [shapes_data['val_images']], bbox_annotations=anns,
          id_to_name_map={c['id']: c['name'] for c in coco['categories']})
      assert skipped == 0
      writer.write(example.SerializeToString())
  cmap = input_pipeline.load_category_map(shapes_data['val_annotations'])
  kwargs = dict(is_training=False, batch_size=7, output_size=64,
                anchor_labeler=stand_in_labeler)
  (img_a, lab_a), = _collect(input_pipeline.build_dataset(
      shapes_data['val_annotations'], shapes_data['val_images'], **kwargs))
  (img_b, lab_b), = _collect(input_pipeline.build_dataset_from_tfrecords(
      record_path, cmap, **kwargs))
  np.testing.assert_allclose(img_a, img_b, atol=1e-6)
  for key in ('image_info', 'source_id', 'gt_classes', 'num_gt', 'num_boxes'):
    np.testing.assert_array_equal(lab_a[key], lab_b[key])
  np.testing.assert_allclose(lab_a['gt_boxes'], lab_b['gt_boxes'], atol=1e-5)
  for key in ('source_id', 'height', 'width', 'num_detections', 'classes', 'is_crowds'):
    np.testing.assert_array_equal(lab_a['groundtruths'][key], lab_b['groundtruths'][key])
  np.testing.assert_allclose(lab_a['groundtruths']['boxes'],
                             lab_b['groundtruths']['boxes'], atol=1e-3)
  # DataConfig.dtype reaches the TFRecord pipeline too.
  (img_c, _), = _collect(input_pipeline.build_dataset_from_tfrecords(
      record_path, cmap, dtype='bfloat16', **kwargs))
  assert img_c.dtype == tf.bfloat16.as_numpy_dtype
  np.testing.assert_allclose(img_c.astype(np.float32), img_b, atol=2.0 ** -8)


def test_argument_errors(shapes_data):
  args = (shapes_data['val_annotations'], shapes_data['val_images'], False)
  clash = lambda boxes, classes: {'image_info': tf.zeros([1])}
  with pytest.raises(ValueError, match=r"keys \['image_info'\] clash"):
    input_pipeline.build_dataset(*args, 2, 64, anchor_labeler=clash)
  with pytest.raises(ValueError, match='batch_size must be >= 1, got 0'):
    input_pipeline.build_dataset(*args, 0, 64)
  with pytest.raises(ValueError, match='output_size'):
    input_pipeline.build_dataset(*args, 2, (64, 0))
  with pytest.raises(ValueError, match='no TFRecord files match'):
    input_pipeline.build_dataset_from_tfrecords('/nonexistent/*.tfrecord',
                                                CategoryMap.from_ids([1]), False, 1, 64)


# ------------------------------------- DataConfig fields through task.build_inputs


def _data_config(shapes_data, split, **fields):
  """`task, data config` of the shapes experiment on the fixture's `split`, augmentation
  off, with `fields` set on the data config."""
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.task.train_data.annotation_file = shapes_data['train_annotations']
  params.task.train_data.image_dir = shapes_data['train_images']
  data = params.task.train_data if split == 'train' else params.task.validation_data
  data.annotation_file = shapes_data[f'{split}_annotations']
  data.image_dir = shapes_data[f'{split}_images']
  data.parser.aug_random_flip = data.parser.aug_ssd_random_crop = False
  data.override(fields)
  return task_factory.get_task(params.task), data


@pytest.mark.parametrize('drop_remainder,sizes', [(False, [3, 3, 1]), (True, [3, 3])])
def test_drop_remainder_is_honoured_for_evaluation(shapes_data, drop_remainder, sizes):
  task, data = _data_config(shapes_data, 'val', global_batch_size=3,
                            drop_remainder=drop_remainder)  # 7 val images
  assert [b[0].shape[0] for b in _collect(task.build_inputs(data))] == sizes


@pytest.mark.parametrize('drop_remainder,batch_dim', [(False, None), (True, 4)])
def test_drop_remainder_is_honoured_for_training(shapes_data, drop_remainder, batch_dim):
  # Training repeats, so no batch is ever short: the field decides whether the batch
  # size is static (what TPUs and `tf.function` retracing care about).
  task, data = _data_config(shapes_data, 'train', global_batch_size=4, seed=0,
                            drop_remainder=drop_remainder)  # 12 train images
  dataset = task.build_inputs(data)
  assert dataset.element_spec[0].shape[0] == batch_dim
  assert [b[0].shape[0] for b in _collect(dataset, 4)] == [4] * 4


def _training_ids(shapes_data, shuffle_buffer_size):
  task, data = _data_config(shapes_data, 'train', global_batch_size=4, seed=0,
                            shuffle_buffer_size=shuffle_buffer_size)
  return [int(i) for _, labels in _collect(task.build_inputs(data), 3)
          for i in labels['source_id']]


def test_shuffle_buffer_size_is_honoured(shapes_data):
  with open(shapes_data['train_annotations'], encoding='utf-8') as f:
    file_order = [im['id'] for im in json.load(f)['images']]
  assert _training_ids(shapes_data, 1) == file_order  # a buffer of 1 shuffles nothing
  shuffled = _training_ids(shapes_data, 1000)
  assert sorted(shuffled) == sorted(file_order) and shuffled != file_order


@pytest.mark.parametrize('field,value', [('shuffle_buffer_size', 0),
                                         ('shuffle_buffer_size', -5),
                                         ('drop_remainder', 'no'),
                                         ('dtype', 'float64'),
                                         ('dtype', 'int8'),
                                         ('dtype', 'bf16')])
def test_bad_data_config_fields_name_the_field(shapes_data, field, value):
  task, data = _data_config(shapes_data, 'train', **{field: value})
  with pytest.raises(ValueError, match=field):
    task.build_inputs(data)


def _first_batch(shapes_data, split, **fields):
  task, data = _data_config(shapes_data, split, global_batch_size=3, seed=0, **fields)
  return _collect(task.build_inputs(data), 1)[0]


@pytest.mark.parametrize('split', ['train', 'val'])
@pytest.mark.parametrize('dtype,np_dtype', [('float32', np.float32),
                                            ('bfloat16', tf.bfloat16.as_numpy_dtype),
                                            ('float16', np.float16)])
def test_dtype_is_the_image_dtype(shapes_data, split, dtype, np_dtype):
  images, labels = _first_batch(shapes_data, split, dtype=dtype)
  assert images.dtype == np_dtype
  reference, reference_labels = _first_batch(shapes_data, split)  # default float32
  assert reference.dtype == np.float32
  # The same pixels, rounded once (bfloat16 keeps 8 significant bits: 2**-8 in [-1, 1]).
  np.testing.assert_allclose(images.astype(np.float32), reference, atol=2.0 ** -8)
  assert labels['image_info'].dtype == np.float32  # labels keep their dtypes
  np.testing.assert_array_equal(labels['source_id'], reference_labels['source_id'])


def test_shipped_configs_keep_full_shuffles_and_complete_evaluation():
  for name in ('ssdlite_mnv2_coco', 'ssdlite_mnv2_shapes'):
    task = exp_factory.get_exp_config(name).task
    assert task.train_data.drop_remainder and not task.validation_data.drop_remainder
  shapes_task = exp_factory.get_exp_config('ssdlite_mnv2_shapes').task
  assert shapes_task.train_data.shuffle_buffer_size >= shapes.DEFAULT_NUM_TRAIN
  coco_task = exp_factory.get_exp_config('ssdlite_mnv2_coco').task
  assert coco_task.train_data.shuffle_buffer_size >= experiments.COCO_TRAIN_EXAMPLES
  assert ssdlite_cfg.SSDLiteTask().validation_data.drop_remainder is False
  for data in (shapes_task.train_data, shapes_task.validation_data,
               coco_task.train_data, coco_task.validation_data):
    assert data.dtype == 'float32'


# ---------------------------------------------------------------- augment.py


def test_window_keep_mask_follows_od_api_ioa():
  window = tf.constant([0.0, 0.0, 0.5, 0.5])
  boxes = tf.constant([[0.1, 0.1, 0.3, 0.3],    # inside: IoA 1
                       [0.4, 0.4, 0.8, 0.8],    # 0.1 x 0.1 of 0.4 x 0.4 inside: IoA 1/16
                       [0.5, 0.5, 0.9, 0.9]])   # touches the corner only: outside
  keep = augment._window_keep_mask  # pylint: disable=protected-access
  assert keep(boxes, window, 0.0).numpy().tolist() == [True, True, False]
  assert keep(boxes, window, 0.06).numpy().tolist() == [True, True, False]
  assert keep(boxes, window, 0.07).numpy().tolist() == [True, False, False]
  assert keep(boxes, window, 1.0).numpy().tolist() == [True, False, False]


def test_ssd_random_crop_window_statistics():
  image = tf.zeros([100, 200, 1], tf.uint8)
  boxes = tf.constant([[0.2, 0.2, 0.6, 0.5]])
  crop = tf.function(augment.ssd_random_crop)
  full = 0
  trials = 200
  for i in range(trials):
    out, new_boxes, kept, begin, size = crop(image, boxes, tf.constant([3, i]))
    h, w = size.numpy()
    assert out.shape[:2] == (h, w)
    assert np.all(begin.numpy() >= 0) and np.all(begin.numpy() + size.numpy() <= [100, 200])
    full += (h, w) == (100, 200)
    if (h, w) != (100, 200):
      area = h * w / (100 * 200)
      assert 0.1 - 0.02 <= area <= 1.0  # AREA_RANGE, up to pixel rounding
      assert 0.5 * 0.9 <= w / h <= 2.0 * 1.1  # ASPECT_RATIO_RANGE in pixels
    assert np.all(new_boxes.numpy() >= 0) and np.all(new_boxes.numpy() <= 1)
    assert kept.shape[0] == new_boxes.shape[0]
  # KEEP_ORIGINAL_PROB = 0.15 plus samples where no window satisfied the option.
  assert 0.1 * trials <= full <= 0.5 * trials


def test_make_anchor_labeler_wraps_tuple_assign_functions(shapes_data):
  anchors = np.array([[0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0, 0, 1, 1]], np.float32)

  def assign(anchors, boxes, classes):  # stand-in for ops.matching.assign_targets
    n = tf.shape(anchors)[0]
    return (tf.fill([n], tf.reduce_max(tf.concat([classes, [0]], 0))),
            tf.tile(anchors, [1, 1]), tf.fill([n], tf.size(classes) > 0),
            tf.zeros([n], tf.int32))

  labeler = input_pipeline.make_anchor_labeler(assign, anchors)
  ds = input_pipeline.build_dataset(shapes_data['val_annotations'],
                                    shapes_data['val_images'], False, 7, 64,
                                    anchor_labeler=labeler)
  (_, labels), = _collect(ds)
  assert labels['cls_targets'].shape == (7, 3)
  np.testing.assert_array_equal(labels['box_targets'][0], anchors)
  np.testing.assert_array_equal(labels['positive_mask'][:, 0], labels['num_gt'] > 0)
  np.testing.assert_array_equal(labels['cls_targets'][:, 0],
                                np.maximum(labels['gt_classes'].max(1), 0))
  bad = input_pipeline.make_anchor_labeler(lambda a, b, c: (c,), anchors)
  with pytest.raises(ValueError, match='assign_fn returned 1 tensors'):
    bad(tf.zeros([0, 4]), tf.zeros([0], tf.int32))
