"""Tests for mnv2_det.data.shapes (synthetic COCO dataset generator)."""

import io
import json
import os
import contextlib

import numpy as np
from PIL import Image
import pytest

from mnv2_det.data import shapes

NUM_TRAIN = 48
NUM_VAL = 8
# A shape pixel is within the per-channel colour jitter (20) plus JPEG error
# of its class colour; grey backgrounds are > 100 away from every class colour.
COLOUR_TOLERANCE = 60


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
  out = tmp_path_factory.mktemp('shapes')
  return shapes.generate(str(out), NUM_TRAIN, NUM_VAL, seed=3)


def _load(path):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def test_same_seed_gives_byte_identical_json(tmp_path):
  a = shapes.generate(str(tmp_path / 'a'), 6, 2, seed=11)
  b = shapes.generate(str(tmp_path / 'b'), 6, 2, seed=11)
  c = shapes.generate(str(tmp_path / 'c'), 6, 2, seed=12)
  for key in ('train_annotations', 'val_annotations'):
    with open(a[key], 'rb') as fa, open(b[key], 'rb') as fb, open(c[key], 'rb') as fc:
      bytes_a = fa.read()
      assert bytes_a == fb.read()
      assert bytes_a != fc.read()
  # Images too (same Pillow / libjpeg).
  name = sorted(os.listdir(a['train_images']))[0]
  with open(os.path.join(a['train_images'], name), 'rb') as fa, open(
      os.path.join(b['train_images'], name), 'rb') as fb:
    assert fa.read() == fb.read()


def test_train_and_val_differ(dataset):
  train = _load(dataset['train_annotations'])
  val = _load(dataset['val_annotations'])
  assert [a['bbox'] for a in train['annotations'][:5]] != [
      a['bbox'] for a in val['annotations'][:5]]


def test_coco_structure_and_non_contiguous_ids(dataset):
  coco = _load(dataset['train_annotations'])
  assert set(coco) >= {'images', 'annotations', 'categories', 'info', 'licenses'}
  ids = [c['id'] for c in coco['categories']]
  assert ids == [1, 3, 7, 9, 12]  # gaps exercise the id <-> index table
  assert ids != list(range(1, len(ids) + 1))
  assert len(coco['images']) == NUM_TRAIN
  assert {a['category_id'] for a in coco['annotations']} == set(ids)
  ann_ids = [a['id'] for a in coco['annotations']]
  assert len(set(ann_ids)) == len(ann_ids)
  images = {im['id']: im for im in coco['images']}
  for a in coco['annotations']:
    assert set(a) >= {'id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd'}
    im = images[a['image_id']]
    x, y, w, h = a['bbox']
    assert w > 0 and h > 0
    assert 0 <= x and x + w <= im['width'] and 0 <= y and y + h <= im['height']
    assert a['area'] == w * h
    assert a['iscrowd'] == 0


def test_sizes_shapes_and_files(dataset):
  coco = _load(dataset['train_annotations'])
  heights = [im['height'] for im in coco['images']]
  widths = [im['width'] for im in coco['images']]
  lo, hi = shapes.IMAGE_SIDE_RANGE
  assert min(heights + widths) >= lo and max(heights + widths) <= hi
  assert sum(h != w for h, w in zip(heights, widths)) >= NUM_TRAIN - 2
  for im in coco['images'][:10]:
    with Image.open(os.path.join(dataset['train_images'], im['file_name'])) as f:
      assert f.size == (im['width'], im['height'])
      assert f.mode == 'RGB'


def test_statistics_cover_all_coco_size_ranges(dataset):
  stats = shapes.statistics(dataset['train_annotations'])
  assert stats['images'] == NUM_TRAIN
  assert stats['small'] + stats['medium'] + stats['large'] == stats['objects']
  # Each COCO range gets a real share (sampling odds 0.35 / 0.40 / 0.25).
  for key in ('small', 'medium', 'large'):
    assert stats[key] >= 0.1 * stats['objects'], stats
  assert stats['overlapping_pairs'] > 0
  assert all(v > 0 for v in stats['per_category'].values())
  assert stats['non_square_images'] >= NUM_TRAIN - 2


def test_boxes_are_tight_around_class_coloured_pixels(dataset):
  coco = _load(dataset['train_annotations'])
  colours = {c[0]: np.array(c[2], np.int32) for c in shapes.CATEGORIES}
  by_image = {}
  for a in coco['annotations']:
    by_image.setdefault(a['image_id'], []).append(a)
  tight = total = 0
  for im in coco['images'][:16]:
    pixels = np.asarray(Image.open(
        os.path.join(dataset['train_images'], im['file_name'])), np.int32)
    for a in by_image.get(im['id'], []):
      x, y, w, h = (int(v) for v in a['bbox'])
      patch = pixels[y:y + h, x:x + w]
      match = np.abs(patch - colours[a['category_id']]).max(-1) < COLOUR_TOLERANCE
      # Tight: every edge row/column of the box holds a shape pixel.
      edges = (match[0].any(), match[-1].any(), match[:, 0].any(), match[:, -1].any())
      tight += all(edges)
      total += 1
      assert match.mean() > 0.1, a  # the shape is really there
  assert total > 20
  # A later, smaller shape may cover an edge; nearly all boxes stay tight.
  assert tight >= 0.9 * total


def test_negative_images_exist_in_larger_sets(tmp_path):
  paths = shapes.generate(str(tmp_path), 120, 0, seed=0)
  stats = shapes.statistics(paths['train_annotations'])
  # NEGATIVE_PROB = 0.05 of 120 -> about 6 empty images.
  assert 1 <= stats['negative_images'] <= 15
  assert stats['images'] == 120
  assert shapes.statistics(paths['val_annotations'])['images'] == 0


def test_cli_prints_paths_and_statistics(tmp_path):
  out = io.StringIO()
  with contextlib.redirect_stdout(out):
    shapes.main([str(tmp_path), '--num_train', '3', '--num_val', '2', '--seed', '5'])
  report = json.loads(out.getvalue())
  assert report['statistics']['train']['images'] == 3
  assert report['statistics']['val']['images'] == 2
  assert os.path.isfile(report['paths']['val_annotations'])
  assert len(os.listdir(tmp_path / 'train')) == 3


def test_rejects_negative_counts(tmp_path):
  with pytest.raises(ValueError, match='num_train=-1'):
    shapes.generate(str(tmp_path), -1, 0)
