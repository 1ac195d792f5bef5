"""Tests for mnv2_det.tools_lib.evaluate and tools/eval.py (pycocotools evaluation).

The checkpoint fixture is a tiny detector (128x128, multiplier 0.35) with deterministic
spread-out weights (`detector_weights.spread_weights`, as tests/test_export.py), so its sigmoid scores
are distinct and top-k comparisons between the checkpoint, its SavedModel and its
fp32 TFLite mean something. Its AP on the real labels is 0 (untrained), which would make
"exported AP == checkpoint AP" vacuous, so the exported models are compared (1)
detection by detection with the checkpoint and (2) by COCO stats against PSEUDO ground
truth: the checkpoint's own top PSEUDO_GT_PER_IMAGE detections per image. The
checkpoint's AP there is well above 0 and any resize / coordinate mismatch of an
exported path (boxes off by a few pixels) lowers its AP@[.5:.95].
"""

import json
import os
import shutil

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
import tensorflow as tf
import yaml

from official.core import task_factory
from official.core import train_utils

from mnv2_det.data import shapes
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.export import saved_model
from mnv2_det.export import tflite_convert
from mnv2_det.core import errors
from mnv2_det.core import params as params_lib
from mnv2_det.cli import eval as eval_cli
from mnv2_det.inference import detector as detector_lib
from mnv2_det.evaluation import coco
from detector_weights import spread_weights

EXPERIMENT = 'ssdlite_mnv2_shapes'
SHAPES_IDS = [1, 3, 7, 9, 12]  # non-contiguous dataset ids of the shapes set
NUM_VAL = 8
BATCH = 4
TINY_INPUT = [128, 128, 3]
TINY_MULTIPLIER = 0.35
NUM_CLASSES = 6  # shapes experiment: background + 5 categories
AP_TOLERANCE = 0.01  # exported fp32 vs checkpoint, every COCO stat
TOP_K = 10  # per-image detections compared between checkpoint and exported models
PSEUDO_GT_PER_IMAGE = 3
SCORE_ATOL = 1e-4
BOX_ATOL_PX = 0.05


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return shapes.generate(str(tmp_path_factory.mktemp('shapes')), num_train=8,
                         num_val=NUM_VAL, seed=5)


def _tiny_overrides(data, multiplier=TINY_MULTIPLIER):
  def split(name):
    return {'annotation_file': data[f'{name}_annotations'],
            'image_dir': data[f'{name}_images'], 'global_batch_size': BATCH}
  return {'task': {
      'model': {'input_size': TINY_INPUT,
                'backbone': {'mnv2_det': {'depth_multiplier': multiplier}}},
      'train_data': split('train'), 'validation_data': split('val')}}


@pytest.fixture(scope='module')
def config_file(data, tmp_path_factory):
  path = str(tmp_path_factory.mktemp('cfg') / 'tiny.yaml')
  with open(path, 'w', encoding='utf-8') as f:
    yaml.safe_dump(_tiny_overrides(data), f)
  return path


@pytest.fixture(scope='module')
def task_and_params(config_file):
  params = params_lib.build_params(EXPERIMENT, config_files=[config_file])
  return task_factory.get_task(params.task), params


def _groundtruth_image_fn(annotation_file, to_id=lambda dataset_id: dataset_id):
  """detect_image_fn replaying each image's own ground truth as detections (images come
  in the annotation file's order); `to_id` maps the dataset ids it reports."""
  with open(annotation_file, encoding='utf-8') as f:
    data = json.load(f)
  per_image = {i['id']: [] for i in data['images']}
  for a in data['annotations']:
    per_image[a['image_id']].append(a)
  queue = [per_image[i['id']] for i in data['images']]

  def detect(image):
    del image
    anns = queue.pop(0)
    boxes = [[y, x, y + h, x + w] for x, y, w, h in (a['bbox'] for a in anns)]
    return {'detection_boxes': np.array([boxes], np.float32).reshape([1, -1, 4]),
            'detection_scores': np.ones([1, len(anns)], np.float32),
            'detection_classes': np.array([[to_id(a['category_id']) for a in anns]],
                                          np.int32).reshape([1, -1]),
            'num_detections': np.array([len(anns)], np.int32)}
  return detect


def _empty_image_fn(image):
  del image
  return {'detection_boxes': np.zeros([1, 0, 4]), 'detection_scores': np.zeros([1, 0]),
          'detection_classes': np.zeros([1, 0], np.int32),
          'num_detections': np.zeros([1], np.int32)}


def test_to_coco_results_dataset_ids_and_xywh():
  category_map = CategoryMap.from_ids(SHAPES_IDS)
  detections = {
      # yxyx original pixels: (10, 20)-(50, 80) -> x 20, y 10, w 60, h 40.
      'detection_boxes': np.array([[[10., 20., 50., 80.], [0., 0., 5., 5.],
                                    [1., 1., 2., 2.]]]),
      'detection_scores': np.array([[0.9, 0.5, 0.1]]),
      # contiguous 5 -> dataset id 12; 0 (background) is dropped; 1 -> 1 is padding.
      'detection_classes': np.array([[5, 0, 1]]),
      'num_detections': np.array([2])}
  results = coco.to_coco_results(np.array([42]), detections, category_map)
  assert results == [{'image_id': 42, 'category_id': 12, 'bbox': [20.0, 10.0, 60.0, 40.0],
                      'score': 0.9}]


def test_perfect_detections_give_ap_1(task_and_params):
  _, params = task_and_params
  val = params.task.validation_data
  report = coco.evaluate_images(_groundtruth_image_fn(val.annotation_file),
                                val.annotation_file, val.image_dir)
  assert report['num_images'] == NUM_VAL
  stats = report['stats']
  assert list(stats) == list(coco.STAT_NAMES)
  for name in ('AP', 'AP50', 'AP75', 'ARmax100'):
    assert stats[name] == pytest.approx(1.0), name
  # AR@1 keeps one detection per image and class: recall of class k is
  # sum_i min(1, n_ik) / sum_i n_ik (n_ik objects of class k in image i), averaged.
  with open(params.task.validation_data.annotation_file, encoding='utf-8') as f:
    annotations = json.load(f)['annotations']
  recalls = []
  for cat in SHAPES_IDS:
    counts = {}
    for a in annotations:
      if a['category_id'] == cat:
        counts[a['image_id']] = counts.get(a['image_id'], 0) + 1
    if counts:
      recalls.append(len(counts) / sum(counts.values()))
  assert stats['ARmax1'] == pytest.approx(np.mean(recalls))
  for name, value in stats.items():  # 1, or -1 in an area range without ground truth
    if name != 'ARmax1':
      assert value == pytest.approx(1.0) or name in report['stats_without_groundtruth']
  assert [r['dataset_id'] for r in report['per_class']] == SHAPES_IDS
  for row in report['per_class']:
    assert row['AP'] == pytest.approx(1.0) or row['num_groundtruths'] == 0
  assert report['images_per_second'] > 0


def test_contiguous_ids_instead_of_dataset_ids_lower_ap(task_and_params):
  """The trap our conversion avoids: contiguous 1..5 read as ids 1, 2, 3, 4, 5."""
  task, params = task_and_params
  val = params.task.validation_data
  contiguous = task.category_map.contiguous_of
  report = coco.evaluate_images(
      _groundtruth_image_fn(val.annotation_file, lambda i: int(contiguous([i])[0])),
      val.annotation_file, val.image_dir)
  assert report['stats']['AP'] < 0.5  # only id 1 (circle) coincides


def test_empty_detections_give_zero_ap(task_and_params):
  _, params = task_and_params
  val = params.task.validation_data
  report = coco.evaluate_images(_empty_image_fn, val.annotation_file, val.image_dir,
                                max_images=6)
  assert report['num_images'] == 6 and report['num_detections'] == 0
  assert report['stats']['AP'] == 0.0
  for name, value in report['stats'].items():
    expected = (coco.NO_GROUNDTRUTH if name in report['stats_without_groundtruth']
                else 0.0)
    assert value == expected, name
  assert 'no ground truth' in coco.format_report(report) or not report[
      'stats_without_groundtruth']


def test_groundtruth_without_area_and_iscrowd(tmp_path):
  data = {'images': [{'id': 7, 'file_name': 'a.jpg', 'height': 100, 'width': 100}],
          'annotations': [{'id': 1, 'image_id': 7, 'category_id': 3,
                           'bbox': [10, 10, 50, 60]}],
          'categories': [{'id': 3, 'name': 'square'}]}
  path = str(tmp_path / 'gt.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(data, f)
  gt = coco.load_groundtruth(path)  # pycocotools alone raises KeyError('area')
  result = coco.coco_evaluate(
      gt, [{'image_id': 7, 'category_id': 3, 'bbox': [10, 10, 50, 60], 'score': 1.0}], [7])
  # area 3000 is "medium" (32^2..96^2): APs and APl have no ground truth.
  assert result['stats']['AP'] == pytest.approx(1.0)
  assert result['stats_without_groundtruth'] == ['APs', 'APl', 'ARs', 'ARl']
  with pytest.raises(ValueError, match='image ids \\[8\\]'):
    coco.coco_evaluate(gt, [], [7, 8], path)


@pytest.fixture(scope='module')
def trained_like(task_and_params):
  """The tiny model with `detector_weights.spread_weights` (built once, shared by the fixtures)."""
  task, _ = task_and_params
  model = task.build_model()
  spread_weights(model, NUM_CLASSES)
  return model


@pytest.fixture(scope='module')
def model_dir(task_and_params, trained_like, tmp_path_factory):
  """The tiny model saved like the Model Garden trainer, + params.yaml."""
  task, params = task_and_params
  path = str(tmp_path_factory.mktemp('run'))
  model = trained_like
  checkpoint = tf.train.Checkpoint(global_step=tf.Variable(0, dtype=tf.int64),
                                   model=model, **model.checkpoint_items)
  tf.train.CheckpointManager(checkpoint, path, max_to_keep=1).save(checkpoint_number=0)
  train_utils.serialize_config(params, path)
  return path


def test_cli_end_to_end_on_fresh_checkpoint(model_dir, data, tmp_path, capsys):
  report_path, detections = str(tmp_path / 'report.json'), str(tmp_path / 'det.json')
  # The model_dir's params.yaml carries the tiny model and the data paths: no --experiment.
  code = eval_cli.main(['--checkpoint', model_dir, '--report', report_path,
                        '--detections', detections])
  out = capsys.readouterr().out
  assert code == 0
  with open(report_path, encoding='utf-8') as f:
    report = json.load(f)
  assert report['checkpoint'].endswith('ckpt-0')
  assert report['num_images'] == NUM_VAL and report['num_detections'] > 0
  assert list(report['stats']) == list(coco.STAT_NAMES)
  assert [r['dataset_id'] for r in report['per_class']] == SHAPES_IDS
  # The printed table is the report's, and the report is what pycocotools itself says
  # of the written detections.
  for name, value in report['stats'].items():
    assert f'\n{name:9s}{value:7.3f}' in out, name
  gt = COCO(data['val_annotations'])
  evaluator = COCOeval(gt, gt.loadRes(detections), 'bbox')
  evaluator.evaluate()
  evaluator.accumulate()
  evaluator.summarize()
  np.testing.assert_allclose(list(report['stats'].values()), evaluator.stats, atol=1e-12)


def _run_cli_expecting_error(argv, capsys):
  code = eval_cli.main(argv)
  err = capsys.readouterr().err
  assert code == errors.ERROR_EXIT_CODE
  assert err.startswith('error: ') and 'Traceback' not in err
  return err


def test_cli_errors_name_the_path(model_dir, tmp_path, capsys):
  missing = str(tmp_path / 'nope')
  err = _run_cli_expecting_error(['--experiment', EXPERIMENT, '--checkpoint', missing],
                                 capsys)
  assert missing in err and 'does not exist' in err
  empty = str(tmp_path / 'empty')
  os.makedirs(empty)
  err = _run_cli_expecting_error(['--experiment', EXPERIMENT, '--checkpoint', empty],
                                 capsys)
  assert empty in err and 'no checkpoint' in err
  err = _run_cli_expecting_error(
      ['--experiment', EXPERIMENT, '--checkpoint', model_dir, '--params_override',
       'task.model.backbone.mnv2_det.depth_multiplier=0.5'], capsys)
  assert os.path.join(model_dir, 'ckpt-0') in err and 'architecture' in err
  damaged = str(tmp_path / 'damaged')
  shutil.copytree(model_dir, damaged)
  data_file = os.path.join(damaged, 'ckpt-0.data-00000-of-00001')
  with open(data_file, 'r+b') as f:
    f.truncate(os.path.getsize(data_file) // 2)
  err = _run_cli_expecting_error(['--experiment', EXPERIMENT, '--checkpoint', damaged],
                                 capsys)
  assert os.path.join(damaged, 'ckpt-0') in err and 'cannot be read' in err


# ----------------------------------------------------------------- exported models
@pytest.fixture(scope='module')
def exported(task_and_params, trained_like, tmp_path_factory):
  """SavedModel folder and fp32 .tflite of the model_dir model."""
  task, params = task_and_params
  out = tmp_path_factory.mktemp('exported')
  sm = saved_model.export_saved_model(params, trained_like, task.category_map,
                                      str(out / 'sm'))
  fp32 = tflite_convert.export_tflite(params, trained_like, task.category_map,
                                      str(out / 'fp32.tflite'), 'fp32')
  return {'saved_model': sm, 'tflite': fp32}


def _eval_cli(argv):
  """eval_cli.run on parsed flags: the report, without the exit-code wrapper."""
  return eval_cli.run(eval_cli.main_parser().parse_args(argv))


@pytest.fixture(scope='module')
def checkpoint_run(model_dir, data, tmp_path_factory):
  """The checkpoint's COCO results on the val split, the pseudo ground truth made of
  its top PSEUDO_GT_PER_IMAGE results per image, and its report on that."""
  out = tmp_path_factory.mktemp('ckpt_eval')
  base = ['--experiment', EXPERIMENT, '--checkpoint', model_dir]
  val_report = _eval_cli(base + ['--detections', str(out / 'det.json')])
  with open(out / 'det.json', encoding='utf-8') as f:
    results = json.load(f)
  with open(data['val_annotations'], encoding='utf-8') as f:
    pseudo = json.load(f)
  pseudo['annotations'] = [
      {'id': i + 1, 'image_id': r['image_id'], 'category_id': r['category_id'],
       'bbox': r['bbox'], 'area': r['bbox'][2] * r['bbox'][3], 'iscrowd': 0}
      for i, r in enumerate(r for rows in _top_k_by_image(results).values()
                            for r in rows[:PSEUDO_GT_PER_IMAGE])]
  pseudo_file = str(out / 'pseudo_gt.json')
  with open(pseudo_file, 'w', encoding='utf-8') as f:
    json.dump(pseudo, f)
  report = _eval_cli(base + ['--params_override', f'task.annotation_file={pseudo_file}'])
  return {'results': results, 'pseudo_file': pseudo_file, 'report': report,
          'val_report': val_report}


def _top_k_by_image(results):
  by_image = {}
  for r in results:
    by_image.setdefault(r['image_id'], []).append(r)
  return {i: sorted(rs, key=lambda r: -r['score'])[:TOP_K] for i, rs in by_image.items()}


@pytest.mark.parametrize('kind', ['saved_model', 'tflite'])
def test_exported_fp32_model_matches_checkpoint(kind, exported, checkpoint_run, data,
                                                tmp_path):
  detections = str(tmp_path / 'det.json')
  # Images + annotations from --experiment + the SavedModel's params.yaml, or flags.
  source = (['--experiment', EXPERIMENT] if kind == 'saved_model' else
            ['--annotation_file', data['val_annotations'], '--image_dir', data['val_images']])
  report = _eval_cli(['--model', exported[kind], '--detections', detections] + source)
  assert report['format'] == kind and report['num_images'] == NUM_VAL
  # Checkpoint and export are scored through the same Detector: the SavedModel runs the
  # checkpoint's own serving function, so its val-split stats are identical.
  tolerance = 0.0 if kind == 'saved_model' else AP_TOLERANCE
  for name, value in checkpoint_run['val_report']['stats'].items():
    assert report['stats'][name] == pytest.approx(value, abs=tolerance), name
  with open(detections, encoding='utf-8') as f:
    got = _top_k_by_image(json.load(f))
  want = _top_k_by_image(checkpoint_run['results'])
  assert sorted(got) == sorted(want) and len(want) == NUM_VAL
  for image_id, rows in want.items():
    assert len(rows) == TOP_K
    assert [r['category_id'] for r in got[image_id]] == [r['category_id'] for r in rows]
    np.testing.assert_allclose([r['score'] for r in got[image_id]],
                               [r['score'] for r in rows], atol=SCORE_ATOL)
    np.testing.assert_allclose([r['bbox'] for r in got[image_id]],
                               [r['bbox'] for r in rows], atol=BOX_ATOL_PX)
  # Same COCO stats on the pseudo ground truth (evaluate_images called directly).
  want_stats = checkpoint_run['report']['stats']
  assert want_stats['AP'] > 0.2  # not a vacuous 0 == 0
  detector = detector_lib.load_detector(exported[kind], num_threads=1)
  report = coco.evaluate_images(detector.detect, checkpoint_run['pseudo_file'],
                                data['val_images'])
  for name, value in want_stats.items():
    assert report['stats'][name] == pytest.approx(value, abs=AP_TOLERANCE), name


def test_cli_model_errors(exported, model_dir, tmp_path, capsys):
  err = _run_cli_expecting_error(['--model', exported['tflite'], '--checkpoint',
                                  model_dir], capsys)
  assert 'exactly one' in err
  missing = str(tmp_path / 'nope.tflite')
  err = _run_cli_expecting_error(['--model', missing, '--annotation_file', 'x.json',
                                  '--image_dir', str(tmp_path)], capsys)
  assert missing in err and 'does not exist' in err
  err = _run_cli_expecting_error(['--model', exported['tflite']], capsys)
  assert '--annotation_file' in err and '--experiment' in err
  err = _run_cli_expecting_error(['--model', str(tmp_path)], capsys)
  assert str(tmp_path) in err and 'saved_model.pb' in err


def _damaged_val_copy(data, tmp_path):
  """A copy of the val images with a corrupt JPEG, a 0-byte file and a missing file."""
  image_dir = tmp_path / 'val'
  shutil.copytree(data['val_images'], image_dir)
  with open(data['val_annotations'], encoding='utf-8') as f:
    names = [image['file_name'] for image in json.load(f)['images'][:3]]
  (image_dir / names[0]).write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (image_dir / names[1]).write_bytes(b'')
  (image_dir / names[2]).unlink()
  return str(image_dir), names


def test_unreadable_val_images_are_skipped_and_counted(model_dir, exported, data, tmp_path,
                                                       capsys, caplog):
  image_dir, names = _damaged_val_copy(data, tmp_path)
  reports = [
      _eval_cli(['--experiment', EXPERIMENT, '--checkpoint', model_dir, '--params_override',
                 f'task.validation_data.image_dir={image_dir}']),
      _eval_cli(['--model', exported['tflite'], '--annotation_file',
                 data['val_annotations'], '--image_dir', image_dir])]
  for report in reports:
    assert report['num_images'] == NUM_VAL - len(names)
    assert report['images_not_evaluated'] == len(names)
  assert capsys.readouterr().out.count(f'skipped {len(names)} unreadable image(s)') == 2
  for name in names:
    assert name in caplog.text
