"""tools/check_data.py: reader findings with file names, statistics and anchor coverage on
a planted set whose best anchor IoUs are known by hand, plots, and exit 2 on refusals.

The set is read by the shapes experiment (256x256 'fixed', 1284 anchors, match IoU 0.5):
  full.png    a 256x256 box: best anchor the last layer's interpolated one (side
              sqrt(0.95 * 1.0)), IoU 0.95 -> covered;
  anchor.png  a box equal to the layer-1 anchor of scale 0.35 centred at (144, 144):
              IoU 1 -> covered;
  tiny.png    two identical 4x4 boxes centred on a layer-0 cell: best anchor the
              25.6 px (scale 0.1) one, IoU 16 / 25.6^2; the first gets it by force
              match (force_only), the second gets nothing (missed);
  crowd.png   a crowd box (not a target) and [128, 128, 200, 200], clipped to the
              bottom-right quadrant: best the layer-3 anchor at (192, 192), side
              0.65 * 256, IoU 128^2 / 166.4^2 -> covered;
  repair.png  a zero-width box (dropped) and [16, 16, 64, 64] without area / iscrowd
              (both filled): best the layer-1 anchor at (48, 48), IoU 64^2 / 89.6^2;
  missing.png not on disk: skipped;  empty.png  no annotation: a negative.
"""

import json
import os

import numpy as np
from PIL import Image
import pytest

from mnv2_det.analysis import anchor_coverage
from mnv2_det.analysis import data_check
from mnv2_det.cli import check_data
from mnv2_det.core import params as params_lib
from mnv2_det.data import coco_reader
from mnv2_det.data import input_pipeline
from mnv2_det.modeling import factory

SIDE = 256
EXPERIMENT = 'ssdlite_mnv2_shapes'
CATEGORIES = [{'id': 1, 'name': 'a'}, {'id': 4, 'name': 'b'}, {'id': 9, 'name': 'c'}]
IMAGES = ('full.png', 'anchor.png', 'tiny.png', 'crowd.png', 'repair.png', 'missing.png',
          'empty.png')
# Expected best IoUs of the six target boxes, in record order (module docstring).
BEST_IOU = [0.95, 1.0, 16 / 25.6**2, 16 / 25.6**2, 128**2 / 166.4**2, 64**2 / 89.6**2]


def _layer1_anchor_px():
  """[x, y, w, h] pixels of the layer-1 (8x8 grid), aspect-1, scale-0.35 anchor at
  (144, 144): exact float32 anchor coordinates times 256."""
  anchors = factory.build_anchors(params_lib.build_params(EXPERIMENT).task.model)
  centre = (anchors[:, :2] + anchors[:, 2:]) / 2
  size = anchors[:, 2:] - anchors[:, :2]
  index = np.flatnonzero((np.abs(centre - 144 / SIDE).max(1) < 1e-6) &
                         (np.abs(size - 0.35).max(1) < 1e-6))
  assert index.size == 1
  y0, x0, y1, x1 = (float(v) * SIDE for v in anchors[index[0]])
  return [x0, y0, x1 - x0, y1 - y0]


def _annotations():
  ann = lambda image, cat, bbox, **kw: dict(image_id=IMAGES.index(image) + 1,
                                            category_id=cat, bbox=bbox, **kw)
  full = dict(area=1.0, iscrowd=0)
  anns = [
      ann('full.png', 1, [0, 0, 256, 256], **full),
      ann('anchor.png', 4, _layer1_anchor_px(), **full),
      ann('tiny.png', 1, [134, 134, 4, 4], **full),
      ann('tiny.png', 1, [134, 134, 4, 4], **full),
      ann('crowd.png', 4, [0, 0, 50, 50], area=2500.0, iscrowd=1),
      ann('crowd.png', 9, [128, 128, 200, 200], **full),
      ann('repair.png', 1, [10, 10, 0, 5], **full),
      ann('repair.png', 9, [16, 16, 64, 64]),
      ann('missing.png', 4, [10, 10, 20, 20], **full),
  ]
  for i, a in enumerate(anns, 1):
    a['id'] = i
  return anns


def write_set(folder, annotations=None, categories=CATEGORIES, sizes=None):
  image_dir = os.path.join(folder, 'images')
  os.makedirs(image_dir, exist_ok=True)
  images = []
  for i, name in enumerate(IMAGES, 1):
    h, w = (sizes or {}).get(name, (SIDE, SIDE))
    images.append({'id': i, 'file_name': name, 'height': h, 'width': w})
    if name != 'missing.png':
      Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(os.path.join(image_dir, name))
  path = os.path.join(folder, 'ann.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'images': images, 'categories': categories,
               'annotations': _annotations() if annotations is None else annotations}, f)
  return path, image_dir


def _run(argv, capsys):
  code = check_data.main(argv)
  out, err = capsys.readouterr()
  return code, out, err


@pytest.fixture(scope='module')
def planted(tmp_path_factory):
  folder = str(tmp_path_factory.mktemp('planted'))
  path, image_dir = write_set(folder)
  out = os.path.join(folder, 'report')
  code = check_data.main(['--annotation_file', path, '--image_dir', image_dir,
                          '--experiment', EXPERIMENT, '--output', out,
                          '--input_sizes', '256,512', '--min_scales', '0.2,0.5'])
  assert code == 0
  with open(os.path.join(out, check_data.REPORT_FILE), encoding='utf-8') as f:
    return {'report': json.load(f), 'out': out, 'path': path, 'image_dir': image_dir}


def test_reader_findings_named(planted):
  r = planted['report']['reader']
  assert (r['num_images'], r['num_annotations'], r['num_boxes_kept'], r['num_crowd'],
          r['num_negative_images']) == (6, 9, 7, 1, 1)
  assert (r['clipped_boxes'], r['dropped_boxes'], r['filled_area'],
          r['filled_iscrowd']) == (1, 1, 1, 1)
  assert r['skipped_images'] == [{'file_name': 'missing.png', 'reason': 'file not found'}]
  listed = {k: [(f['file_name'], f['where']) for f in v['listed']]
            for k, v in r['findings'].items()}
  assert listed == {'clipped_box': [('crowd.png', 'annotations[5]')],
                    'dropped_box': [('repair.png', 'annotations[6]')],
                    'filled_area': [('repair.png', 'annotations[7]')],
                    'filled_iscrowd': [('repair.png', 'annotations[7]')],
                    'skipped_image': [('missing.png', 'images[5]')]}
  assert r['findings']['clipped_box']['listed'][0]['detail'] == (
      'bbox [128.0, 128.0, 200.0, 200.0] clipped to [128.0, 128.0, 128.0, 128.0]')


def test_reader_records_findings_only_when_asked(planted):
  ds = coco_reader.read_coco(planted['path'], planted['image_dir'])
  assert ds.stats.findings is None and ds.stats.clipped_boxes == 1


def test_classes_sizes_aspects(planted):
  report = planted['report']
  assert [(c['name'], c['id'], c['boxes'], c['crowd'], c['images'])
          for c in report['classes']] == [('a', 1, 3, 0, 2), ('b', 4, 1, 1, 2),
                                          ('c', 9, 2, 0, 2)]
  assert report['sizes']['input'] == {'small': 2, 'medium': 2, 'large': 2}
  # The JSON `area` fields: 1.0 (x5 non-crowd with area given) and the filled 64^2.
  assert report['sizes']['original_area_field'] == {'small': 5, 'medium': 1, 'large': 0}
  aspects = report['aspect_ratios']
  assert sum(aspects['input']['counts']) == 6
  assert aspects['input']['counts'][12] == 6  # every box is square: bin [1, 2^(1/4))
  assert aspects['anchor_aspect_ratios'] == pytest.approx([1.0, 2.0, 0.5, 3.0, 1 / 3])
  assert report['model']['num_anchors'] == 1284


def test_anchor_coverage_counts(planted):
  cov = planted['report']['anchor_coverage']
  t = cov['total']
  assert (t['boxes'], t['covered'], t['force_only'], t['missed']) == (6, 4, 1, 1)
  assert t['covered_share'] == pytest.approx(4 / 6)
  assert cov['no_positive_anchor'] == 1
  per_class = {k: (v['boxes'], v['covered'], v['force_only'], v['missed'])
               for k, v in cov['per_class'].items()}
  assert per_class == {'a': (3, 1, 1, 1), 'b': (1, 1, 0, 0), 'c': (2, 2, 0, 0)}
  per_size = {k: (v['boxes'], v['covered'], v['force_only'], v['missed'])
              for k, v in cov['per_size'].items()}
  assert per_size == {'small': (2, 0, 1, 1), 'medium': (2, 2, 0, 0),
                      'large': (2, 2, 0, 0)}
  bins = cov['by_size_bin']
  four_px = int(np.digitize(4.0, bins['edges'][1:-1]))  # sqrt(16) = 4 px
  assert bins['bins'][four_px]['boxes'] == 2 and bins['bins'][four_px]['force_only'] == 1
  assert sum(b['boxes'] for b in bins['bins']) == 6


def test_best_iou_and_positives_match_hand_values(planted):
  params = params_lib.build_params(EXPERIMENT)
  ds = coco_reader.read_coco(planted['path'], planted['image_dir'])
  gt = anchor_coverage.input_frame_boxes(ds.records, (SIDE, SIDE), 'fixed')
  anchors = factory.build_anchors(params.task.model)
  best = anchor_coverage.best_iou(gt.boxes, anchors)
  np.testing.assert_allclose(best, BEST_IOU, rtol=2e-6)
  positives = anchor_coverage.positives_per_box(gt, anchors, 0.5, 0.5)
  assert positives[2:4].tolist() == [1, 0]  # the force match, then nothing
  assert positives.min() == 0 and (positives[[0, 1, 4, 5]] >= 1).all()


def _numpy_iou(boxes, anchors):
  """[M, N] float64 IoU, written out here independently of the library."""
  b, a = boxes[:, None, :].astype(np.float64), anchors[None, :, :].astype(np.float64)
  ih = np.clip(np.minimum(b[..., 2], a[..., 2]) - np.maximum(b[..., 0], a[..., 0]), 0, None)
  iw = np.clip(np.minimum(b[..., 3], a[..., 3]) - np.maximum(b[..., 1], a[..., 1]), 0, None)
  area = lambda x: (x[..., 2] - x[..., 0]) * (x[..., 3] - x[..., 1])
  return ih * iw / (area(b) + area(a) - ih * iw)


def test_alternatives_table(planted):
  rows = planted['report']['alternatives']
  assert [(r['input_size'], r['min_scale'], r['num_anchors']) for r in rows] == [
      ([256, 256], 0.2, 1284), ([256, 256], 0.5, 1284), ([512, 512], 0.2, 5118),
      ([512, 512], 0.5, 5118)]
  base = rows[0]
  assert base['covered_share'] == pytest.approx(4 / 6)  # the experiment's own anchors
  assert base['per_size'] == {'small': 0.0, 'medium': 1.0, 'large': 1.0}
  # min_scale 0.5: the smallest layer-1 anchor is 151 px; the 64 and 89.6 px boxes'
  # best IoUs drop to 0.18 and 0.43.
  assert rows[1]['per_size']['medium'] == 0.0
  ds = coco_reader.read_coco(planted['path'], planted['image_dir'])
  model = params_lib.build_params(EXPERIMENT).task.model
  for row in rows:
    config = model.replace(input_size=row['input_size'] + [3],
                           anchor=model.anchor.replace(min_scale=row['min_scale']))
    gt = anchor_coverage.input_frame_boxes(ds.records, row['input_size'], 'fixed')
    best = _numpy_iou(gt.boxes, factory.build_anchors(config)).max(1)
    assert row['covered_share'] == pytest.approx(np.mean(best >= 0.5))


def test_default_alternatives():
  model = params_lib.build_params('ssdlite_mnv2_coco').task.model
  sizes, scales = data_check.default_alternatives(model)
  assert sizes == [(320, 320), (480, 480), (640, 640)]
  assert scales == [0.1, 0.15, 0.2, 0.3]


def test_plots_written(planted):
  out = planted['out']
  assert sorted(os.listdir(out)) == sorted(['report.json', 'classes.png', 'box_sizes.png',
                                            'aspect_ratios.png', 'coverage.png'])
  assert planted['report']['plots'] == ['classes.png', 'box_sizes.png',
                                        'aspect_ratios.png', 'coverage.png']
  for name in planted['report']['plots']:
    with Image.open(os.path.join(out, name)) as im:
      assert im.format == 'PNG' and im.size == (700, 400)


def test_summary_printed(planted, capsys):
  code, out, _ = _run(['--annotation_file', planted['path'], '--image_dir',
                       planted['image_dir'], '--experiment', EXPERIMENT,
                       '--input_sizes', '256', '--min_scales', '0.2'], capsys)
  assert code == 0
  assert ('anchor coverage (1284 anchors, best IoU >= 0.5): covered 66.7%, only by force '
          'match 16.7%, missed 16.7%') in out
  assert 'skipped_image: missing.png images[5]: file not found' in out
  assert 'sizes in the 256x256 fixed input: small 2, medium 2, large 2' in out


def test_keep_aspect_boxes_equal_the_parsers(tmp_path):
  """input_frame_boxes reproduces the parser's gt_boxes (keep_aspect: content scaled
  to fit, padding bottom/right) on a 64x128 image."""
  boxes = [{'id': 1, 'image_id': 1, 'category_id': 1, 'bbox': [8, 4, 40, 30],
            'area': 1.0, 'iscrowd': 0},
           {'id': 2, 'image_id': 1, 'category_id': 4, 'bbox': [100, 50, 28, 14],
            'area': 1.0, 'iscrowd': 0}]
  path, image_dir = write_set(str(tmp_path), boxes, sizes={'full.png': (64, 128)})
  ds = coco_reader.read_coco(path, image_dir)
  gt = anchor_coverage.input_frame_boxes(ds.records, (SIDE, SIDE), 'keep_aspect')
  _, labels = next(iter(input_pipeline.build_dataset(
      path, image_dir, is_training=False, batch_size=1, output_size=[SIDE, SIDE],
      resize_mode='keep_aspect')))
  np.testing.assert_array_equal(gt.boxes, labels['gt_boxes'][0, :2].numpy())
  np.testing.assert_allclose(gt.height_px, [60, 28])  # x2 scale: 30, 14 px -> 60, 28
  np.testing.assert_allclose(gt.width_px, [80, 56])


def _refused(argv, capsys, folder):
  before = sorted(os.listdir(folder))
  code, out, err = _run(argv + ['--output', os.path.join(folder, 'report')], capsys)
  assert code == 2 and err.count('\n') == 1 and err.startswith('error: '), err
  assert sorted(os.listdir(folder)) == before  # nothing written
  return err


def test_refused_file_exits_2(tmp_path, capsys):
  path, image_dir = write_set(str(tmp_path))
  with open(path, 'w', encoding='utf-8') as f:
    f.write('{"images": [')
  err = _refused(['--annotation_file', path, '--image_dir', image_dir], capsys, tmp_path)
  assert err.startswith(f'error: {path}: malformed JSON at line 1')

  bad = _annotations() + [{'id': 99, 'image_id': 1, 'category_id': 5, 'bbox': [0, 0, 1, 1]}]
  path, image_dir = write_set(str(tmp_path), bad)
  err = _refused(['--annotation_file', path, '--image_dir', image_dir], capsys, tmp_path)
  assert err == (f'error: {path}: annotations[9] has unknown category id 5 (known: '
                 '[1, 4, 9])\n')

  path, image_dir = write_set(str(tmp_path))
  for name in os.listdir(image_dir):
    os.remove(os.path.join(image_dir, name))
  err = _refused(['--annotation_file', path, '--image_dir', image_dir], capsys, tmp_path)
  assert err == f'error: {path}: no usable images (skipped 7)\n'


def test_experiment_refusals_exit_2(tmp_path, capsys):
  many = [{'id': i, 'name': f'k{i}'} for i in range(1, 7)]  # 6 + background > 6
  path, image_dir = write_set(str(tmp_path), [], categories=many)
  args = ['--annotation_file', path, '--image_dir', image_dir]
  err = _refused(args + ['--experiment', EXPERIMENT], capsys, tmp_path)
  assert 'need task.model.num_classes >= 7' in err and err.startswith(f'error: {path}: ')
  code, out, _ = _run(args + ['--input_sizes', '256', '--min_scales', '0.2'], capsys)
  assert code == 0 and 'num_classes >= 7' in out  # no experiment named: not checked

  path, image_dir = write_set(str(tmp_path))
  err = _refused(['--annotation_file', path, '--image_dir', image_dir, '--experiment',
                  EXPERIMENT, '--params_override',
                  "task.model.input_size=[250,250,3],"
                  "task.train_data.parser.resize_mode='keep_aspect'"], capsys, tmp_path)
  assert "resize_mode='keep_aspect' needs output_size a multiple of 32" in err


def test_bad_flags_and_existing_output(planted, capsys):
  base = ['--annotation_file', planted['path'], '--image_dir', planted['image_dir']]
  code, _, err = _run(base + ['--input_sizes', '256x'], capsys)
  assert code == 2 and "--input_sizes: '256x' is not N or HxW" in err
  code, _, err = _run(base + ['--min_scales', '0,0.2'], capsys)
  assert code == 2 and '--min_scales: every value must be in (0, 1)' in err
  before = os.path.getmtime(os.path.join(planted['out'], 'report.json'))
  code, _, err = _run(base + ['--output', planted['out']], capsys)
  assert code == 2 and 'already exists' in err
  assert os.path.getmtime(os.path.join(planted['out'], 'report.json')) == before


def test_failed_write_leaves_no_output(planted, tmp_path, capsys, monkeypatch):
  """The report folder appears only complete: a failure while writing leaves nothing."""
  def fail(report, folder):
    open(os.path.join(folder, 'classes.png'), 'wb').close()
    raise ValueError('plotting failed')
  monkeypatch.setattr(check_data.data_plots, 'write_plots', fail)
  code, _, err = _run(['--annotation_file', planted['path'], '--image_dir',
                       planted['image_dir'], '--input_sizes', '256', '--min_scales', '0.2',
                       '--output', str(tmp_path / 'new' / 'report')], capsys)
  assert code == 2 and err == 'error: plotting failed\n'
  assert os.listdir(tmp_path) == []
