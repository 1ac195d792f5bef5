"""Tests for mnv2_det.data.coco_reader, image_check and category_map."""

import json
import os

import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from mnv2_det.data import coco_reader
from mnv2_det.data.category_map import CategoryMap, UNKNOWN

IMAGE_H, IMAGE_W = 40, 50


def _base_coco():
  """Two images (one negative), two categories with non-contiguous ids."""
  return {
      'images': [
          {'id': 10, 'file_name': 'a.png', 'height': IMAGE_H, 'width': IMAGE_W},
          {'id': 20, 'file_name': 'b.png', 'height': IMAGE_H, 'width': IMAGE_W},
      ],
      'annotations': [
          {'id': 1, 'image_id': 10, 'category_id': 7, 'bbox': [5, 4, 10, 8],
           'area': 70.0, 'iscrowd': 0},
          {'id': 2, 'image_id': 10, 'category_id': 3, 'bbox': [20, 10, 20, 20],
           'area': 400.0, 'iscrowd': 1},
      ],
      'categories': [{'id': 7, 'name': 'seven'}, {'id': 3, 'name': 'three'}],
  }


@pytest.fixture
def image_dir(tmp_path):
  d = tmp_path / 'images'
  d.mkdir()
  for name in ('a.png', 'b.png'):
    Image.fromarray(np.full((IMAGE_H, IMAGE_W, 3), 128, np.uint8)).save(d / name)
  return str(d)


def _write(tmp_path, coco, name='ann.json'):
  path = tmp_path / name
  path.write_text(json.dumps(coco) if not isinstance(coco, str) else coco)
  return str(path)


def _read(tmp_path, image_dir, coco, **kwargs):
  return coco_reader.read_coco(_write(tmp_path, coco), image_dir, **kwargs)


def _error(tmp_path, image_dir, coco):
  with pytest.raises(ValueError) as info:
    _read(tmp_path, image_dir, coco)
  message = str(info.value)
  assert '\n' not in message  # one clear line
  assert 'ann.json' in message  # names the file
  return message


def test_reads_records_in_file_order(tmp_path, image_dir):
  ds = _read(tmp_path, image_dir, _base_coco())
  assert [r.image_id for r in ds.records] == [10, 20]
  a, b = ds.records
  assert a.file_path == os.path.join(image_dir, 'a.png')
  assert (a.height, a.width) == (IMAGE_H, IMAGE_W)
  # bbox [x=5, y=4, w=10, h=8] -> normalized [y0, x0, y1, x1] = [4/40, 5/50, 12/40, 15/50].
  np.testing.assert_allclose(a.boxes[0], [0.1, 0.1, 0.3, 0.3], rtol=1e-6)
  assert a.boxes.dtype == np.float32 and a.classes.dtype == np.int32
  # Sorted dataset ids [3, 7] -> contiguous [1, 2].
  np.testing.assert_array_equal(a.classes, [2, 1])
  np.testing.assert_array_equal(a.is_crowd, [False, True])
  np.testing.assert_allclose(a.area, [70.0, 400.0])
  assert b.num_instances == 0 and b.boxes.shape == (0, 4)  # valid negative
  assert ds.stats.num_negative_images == 1
  assert ds.stats.num_crowd == 1
  assert ds.category_map.dataset_ids == (3, 7)


def test_malformed_json(tmp_path, image_dir):
  message = _error(tmp_path, image_dir, '{"images": [}')
  assert 'malformed JSON at line 1' in message


def test_missing_annotation_file(tmp_path, image_dir):
  with pytest.raises(ValueError, match='nope.json: annotation file not found'):
    coco_reader.read_coco(str(tmp_path / 'nope.json'), image_dir)


def test_no_images(tmp_path, image_dir):
  coco = _base_coco()
  del coco['images']
  assert 'no `images` list' in _error(tmp_path, image_dir, coco)


def test_no_categories(tmp_path, image_dir):
  coco = _base_coco()
  del coco['categories']
  assert 'no `categories` list' in _error(tmp_path, image_dir, coco)


@pytest.mark.parametrize('section,index,field', [
    ('images', 1, 'file_name'),
    ('images', 0, 'height'),
    ('images', 1, 'width'),
    ('images', 0, 'id'),
    ('annotations', 1, 'bbox'),
    ('annotations', 0, 'category_id'),
    ('annotations', 1, 'image_id'),
    ('categories', 1, 'id'),
])
def test_missing_field_names_entry_and_field(tmp_path, image_dir, section, index, field):
  coco = _base_coco()
  del coco[section][index][field]
  message = _error(tmp_path, image_dir, coco)
  assert f'{section}[{index}] is missing field `{field}`' in message


@pytest.mark.parametrize('bbox', [[1, 2, 3], 'box', [1, 2, 'x', 4]])
def test_bbox_must_be_four_numbers(tmp_path, image_dir, bbox):
  coco = _base_coco()
  coco['annotations'][0]['bbox'] = bbox
  assert 'annotations[0] field `bbox` must be 4 numbers' in _error(
      tmp_path, image_dir, coco)


def test_non_integer_height(tmp_path, image_dir):
  coco = _base_coco()
  coco['images'][0]['height'] = 'tall'
  assert "images[0] field `height` must be an integer, got 'tall'" in _error(
      tmp_path, image_dir, coco)


def test_unknown_category_id(tmp_path, image_dir):
  coco = _base_coco()
  coco['annotations'][1]['category_id'] = 5
  message = _error(tmp_path, image_dir, coco)
  assert 'annotations[1] has unknown category id 5 (known: [3, 7])' in message


def test_unknown_image_id(tmp_path, image_dir):
  coco = _base_coco()
  coco['annotations'][0]['image_id'] = 99
  assert 'annotations[0] refers to unknown image id 99' in _error(
      tmp_path, image_dir, coco)


def test_duplicate_ids(tmp_path, image_dir):
  coco = _base_coco()
  coco['images'][1]['id'] = 10
  assert 'images[1] duplicates image id 10' in _error(tmp_path, image_dir, coco)
  coco = _base_coco()
  coco['categories'][1]['id'] = 7
  assert 'categories[1] duplicates category id 7' in _error(tmp_path, image_dir, coco)


@pytest.mark.parametrize('bbox', [
    [5, 5, -3, 4],   # negative width
    [5, 5, 4, -1],   # negative height
    [5, 5, 0, 4],    # zero width
    [60, 5, 4, 4],   # entirely right of the 50-pixel-wide image
    [5, 5, float('nan'), 4],
])
def test_degenerate_boxes_dropped_and_counted(tmp_path, image_dir, bbox):
  coco = _base_coco()
  coco['annotations'].append({'id': 3, 'image_id': 20, 'category_id': 3,
                              'bbox': bbox, 'area': 1.0, 'iscrowd': 0})
  ds = _read(tmp_path, image_dir, coco)
  assert ds.stats.dropped_boxes == 1
  assert ds.records[1].num_instances == 0
  assert ds.records[0].num_instances == 2  # others untouched
  assert ds.stats.num_annotations == 3


def test_out_of_image_box_clipped(tmp_path, image_dir):
  coco = _base_coco()
  # x in [-10, 30) clips to [0, 30); y in [30, 50) clips to [30, 40).
  coco['annotations'][0]['bbox'] = [-10, 30, 40, 20]
  ds = _read(tmp_path, image_dir, coco)
  assert ds.stats.clipped_boxes == 1
  assert ds.stats.dropped_boxes == 0
  np.testing.assert_allclose(ds.records[0].boxes[0], [30 / 40, 0, 1, 30 / 50], rtol=1e-6)
  assert ds.records[0].area[0] == 70.0  # a given area is kept


def test_missing_area_and_iscrowd_filled(tmp_path, image_dir):
  coco = _base_coco()
  del coco['annotations'][0]['area']
  del coco['annotations'][0]['iscrowd']
  coco['annotations'][1]['bbox'] = [40, 10, 20, 20]  # clipped to width 10
  del coco['annotations'][1]['area']
  ds = _read(tmp_path, image_dir, coco)
  assert ds.stats.filled_area == 2 and ds.stats.filled_iscrowd == 1
  rec = ds.records[0]
  np.testing.assert_allclose(rec.area, [10 * 8, 10 * 20])  # from the clipped box
  np.testing.assert_array_equal(rec.is_crowd, [False, True])


def test_annotations_key_optional(tmp_path, image_dir):
  coco = _base_coco()
  del coco['annotations']
  ds = _read(tmp_path, image_dir, coco)
  assert ds.stats.num_negative_images == 2


def test_given_category_map(tmp_path, image_dir):
  wide = CategoryMap.from_ids([1, 3, 7])
  ds = _read(tmp_path, image_dir, _base_coco(), category_map=wide)
  np.testing.assert_array_equal(ds.records[0].classes, [3, 2])
  with pytest.raises(ValueError, match=r'category ids \[7\] are not in the given'):
    _read(tmp_path, image_dir, _base_coco(), category_map=CategoryMap.from_ids([3]))


def test_read_category_map(tmp_path):
  path = _write(tmp_path, _base_coco())
  cmap = coco_reader.read_category_map(path)
  assert cmap.names == ('three', 'seven')


def _bad_images_dir(tmp_path):
  """a.png good, b.jpg garbage, c.jpg empty, d.png missing, e.jpg truncated,
  f.png wrong size."""
  d = tmp_path / 'bad'
  d.mkdir()
  pixels = np.random.default_rng(0).integers(0, 255, (IMAGE_H, IMAGE_W, 3), np.uint8)
  Image.fromarray(pixels).save(d / 'a.png')
  (d / 'b.jpg').write_bytes(b'this is not a jpeg at all')
  (d / 'c.jpg').write_bytes(b'')
  Image.fromarray(pixels).save(d / 'full.jpg', quality=90)
  data = (d / 'full.jpg').read_bytes()
  (d / 'e.jpg').write_bytes(data[:len(data) // 2])
  Image.fromarray(pixels[:10]).save(d / 'f.png')
  coco = _base_coco()
  coco['images'] = [
      {'id': i + 1, 'file_name': n, 'height': IMAGE_H, 'width': IMAGE_W}
      for i, n in enumerate(['a.png', 'b.jpg', 'c.jpg', 'd.png', 'e.jpg', 'f.png'])]
  coco['annotations'] = [dict(coco['annotations'][0], image_id=2)]
  return str(d), coco


def test_bad_images_skipped_with_names(tmp_path, caplog):
  image_dir, coco = _bad_images_dir(tmp_path)
  ds = _read(tmp_path, image_dir, coco)  # default level 'verify'
  skipped = dict(ds.stats.skipped_images)
  assert [r.file_path for r in ds.records] == [os.path.join(image_dir, 'a.png')]
  assert skipped['b.jpg'].startswith('unreadable image')
  assert skipped['c.jpg'] == 'file is empty (0 bytes)'
  assert skipped['d.png'] == 'file not found'
  assert skipped['e.jpg'] == 'truncated JPEG (no end-of-image marker)'
  assert 'pixel size 50x10 differs from annotation 50x40' in skipped['f.png']
  assert ds.stats.num_images == 1
  # The warning names the count and the files.
  assert 'skipped 5 unreadable image(s)' in caplog.text
  assert 'c.jpg: file is empty' in caplog.text
  ds = _read(tmp_path, image_dir, coco, check_images='decode')
  assert [r.image_id for r in ds.records] == [1]
  # 'exists' only looks at presence and size.
  ds = _read(tmp_path, image_dir, coco, check_images='exists')
  assert len(ds.records) == 4


def test_bad_image_raise_names_file(tmp_path):
  image_dir, coco = _bad_images_dir(tmp_path)
  with pytest.raises(ValueError, match=r'b\.jpg \(id 2\): unreadable image'):
    _read(tmp_path, image_dir, coco, on_bad_image='raise')
  with pytest.raises(ValueError, match='on_bad_image'):
    _read(tmp_path, image_dir, coco, on_bad_image='ignore')
  with pytest.raises(ValueError, match='check level'):
    _read(tmp_path, image_dir, coco, check_images='paranoid')


# ---------------------------------------------------------------- CategoryMap


def test_category_map_both_directions():
  cmap = CategoryMap.from_categories([{'id': 9, 'name': 'c'}, {'id': 1, 'name': 'a'},
                                      {'id': 3, 'name': 'b'}])
  assert cmap.dataset_ids == (1, 3, 9) and cmap.num_classes == 4
  assert cmap.contiguous_names == ('background', 'a', 'b', 'c')
  # to_contiguous is a dense lookup over 0..max_id; gaps are UNKNOWN.
  np.testing.assert_array_equal(
      cmap.to_contiguous, [UNKNOWN, 1, UNKNOWN, 2, UNKNOWN, UNKNOWN, UNKNOWN, UNKNOWN,
                           UNKNOWN, 3])
  np.testing.assert_array_equal(cmap.to_dataset, [UNKNOWN, 1, 3, 9])
  ids = np.array([1, 3, 9])
  np.testing.assert_array_equal(cmap.to_dataset[cmap.to_contiguous[ids]], ids)
  np.testing.assert_array_equal(cmap.contiguous_of([9, 2, 100, -4]),
                                [3, UNKNOWN, UNKNOWN, UNKNOWN])
  np.testing.assert_array_equal(
      cmap.tf_to_contiguous(tf.constant([9, 2, 100, -4], tf.int64)).numpy(),
      [3, UNKNOWN, UNKNOWN, UNKNOWN])
  np.testing.assert_array_equal(
      cmap.tf_to_dataset(tf.constant([[0, 1], [3, 7]])).numpy(),
      [[UNKNOWN, 1], [9, UNKNOWN]])
  assert cmap.label_map() == {1: 'a', 3: 'b', 9: 'c'}


def test_category_map_validation():
  with pytest.raises(ValueError, match='unique and sorted'):
    CategoryMap((3, 1), ('a', 'b'))
  with pytest.raises(ValueError, match='2 ids but 1 names'):
    CategoryMap((1, 3), ('a',))

