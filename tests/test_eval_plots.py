"""Evaluation plots (evaluation/plots.py, curves.py, confusion.py, train_plots.py), the
eval CLI's --plots, and early stopping (cli/early_stopping.py).

  - PR curve data written equals pycocotools' own eval['precision'] slices, exactly;
  - confusion-matrix counts of a planted case (one correct, one wrong class, one missed
    ground truth, one spurious detection, one below the threshold, one on a crowd);
  - the F1-best score threshold of a planted case, and F1 at hand-counted thresholds;
  - PNGs are valid images; tools/eval.py --plots writes them and the report's threshold;
  - training-time plots from the task's COCO metric, on disk and in TensorBoard;
  - early stopping: the patience rule, its config errors, and (slow) tools/train.py
    with learning rate 0 stopping after 2 of 4 evaluations with best_ckpt intact.
"""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import orbit
from PIL import Image
import pytest
import tensorflow as tf

from official.core import train_utils

from mnv2_det.cli import early_stopping
from mnv2_det.cli import eval as eval_cli
from mnv2_det.core import errors
from mnv2_det.data import shapes
from mnv2_det.evaluation import coco
from mnv2_det.evaluation import confusion
from mnv2_det.evaluation import curves
from mnv2_det.evaluation import plots
from mnv2_det.evaluation import train_plots
from mnv2_det.tasks import coco_metric
from detector_weights import spread_detector, tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'tools', 'train.py')
CAT, DOG, BIRD = 3, 7, 9  # non-contiguous dataset ids
PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _image(i, size=100):
  return {'id': i, 'width': size, 'height': size, 'file_name': f'{i}.png'}


def _ann(ann_id, image_id, cat, bbox, crowd=0):
  return {'id': ann_id, 'image_id': image_id, 'category_id': cat, 'bbox': list(bbox),
          'area': float(bbox[2] * bbox[3]), 'iscrowd': crowd}


def _det(image_id, cat, bbox, score):
  return {'image_id': image_id, 'category_id': cat, 'bbox': list(bbox), 'score': score}


CATEGORIES = [{'id': CAT, 'name': 'cat'}, {'id': DOG, 'name': 'dog'},
              {'id': BIRD, 'name': 'bird'}]


# ----------------------------------------------------------------- confusion matrix
def _planted_confusion():
  """Image 1: a cat found (0.9) and a dog called cat (0.8); image 2: a cat missed, a
  spurious dog (0.7) and a spurious bird below the threshold (0.3); image 3: a bird
  detection (0.95) on a crowd region, which is not counted."""
  gt = {'images': [_image(1), _image(2), _image(3)], 'categories': CATEGORIES,
        'annotations': [_ann(1, 1, CAT, [10, 10, 30, 30]), _ann(2, 1, DOG, [55, 55, 30, 30]),
                        _ann(3, 2, CAT, [10, 10, 20, 20]),
                        _ann(4, 3, BIRD, [0, 0, 60, 60], crowd=1)]}
  results = [_det(1, CAT, [11, 10, 30, 30], 0.9), _det(1, CAT, [55, 56, 30, 29], 0.8),
             _det(2, DOG, [60, 60, 25, 25], 0.7), _det(2, BIRD, [50, 5, 20, 20], 0.3),
             _det(3, BIRD, [10, 10, 20, 20], 0.95)]
  return coco.groundtruth_from_dataset(gt), results


def test_confusion_matrix_counts_of_a_planted_case():
  groundtruth, results = _planted_confusion()
  m = confusion.confusion_matrix(groundtruth, results, [1, 2, 3], score_threshold=0.5)
  assert m['labels'] == ['cat', 'dog', 'bird', 'background']
  assert m['rows'] == 'ground truth' and m['columns'] == 'prediction'
  #                    cat dog bird bg   (prediction)
  assert m['matrix'] == [[1, 0, 0, 1],    # cat: one found, one missed
                         [1, 0, 0, 0],    # dog: called cat
                         [0, 0, 0, 0],    # bird: only a crowd region
                         [0, 1, 0, 0]]    # background: the spurious dog
  assert m['crowd_ignored'] == 1
  # At 0.25 the spurious bird counts too.
  low = confusion.confusion_matrix(groundtruth, results, [1, 2, 3], score_threshold=0.25)
  assert low['matrix'][3] == [0, 1, 1, 0]
  # The same-class pass comes first: a correct and a wrong-class detection on one box.
  both = results + [_det(1, DOG, [55, 55, 30, 30], 0.6)]
  m2 = confusion.confusion_matrix(groundtruth, both, [1, 2, 3], score_threshold=0.5)
  assert m2['matrix'][1] == [0, 1, 0, 0] and m2['matrix'][3] == [1, 1, 0, 0]


# ----------------------------------------------------------------- F1 curve
def _planted_f1():
  """One class (cat) with 4 ground truths on 4 images; scores 0.9 TP, 0.8 TP, 0.6 FP,
  0.4 TP, 0.3 FP, 0.2 FP. F1 = 2TP / (TP + FP + 4): 0.4 above 0.8, 4/6 on (0.6, 0.8],
  4/7 on (0.4, 0.6], 6/8 = 0.75 on (0.3, 0.4] (the best), 6/9 on (0.2, 0.3], 6/10 below."""
  boxes = [[10, 10, 40, 40], [20, 20, 30, 30], [5, 50, 40, 30], [50, 5, 30, 40]]
  gt = {'images': [_image(i) for i in range(1, 5)], 'categories': CATEGORIES,
        'annotations': [_ann(i, i, CAT, boxes[i - 1]) for i in range(1, 5)]}
  miss = [70, 70, 20, 20]  # overlaps no ground truth
  results = [_det(1, CAT, boxes[0], 0.9), _det(2, CAT, boxes[1], 0.8),
             _det(1, CAT, miss, 0.6), _det(3, CAT, boxes[2], 0.4),
             _det(2, CAT, miss, 0.3), _det(3, CAT, miss, 0.2)]
  groundtruth = coco.groundtruth_from_dataset(gt)
  return coco.run_cocoeval(groundtruth, results, [1, 2, 3, 4]), results


def test_f1_best_threshold_of_a_planted_case():
  evaluator, _ = _planted_f1()
  f1 = curves.f1_curve(evaluator)
  # Only cat has ground truth: dog and bird are left out of the mean.
  assert [c['name'] for c in f1['classes']] == ['cat']
  thresholds = np.asarray(f1['thresholds'])
  expected = {0.85: 2 / 5, 0.7: 4 / 6, 0.5: 4 / 7, 0.35: 6 / 8, 0.25: 6 / 9, 0.1: 6 / 10}
  for t, value in expected.items():
    i = int(np.argmin(np.abs(thresholds - t)))
    assert f1['mean_f1'][i] == pytest.approx(value, abs=1e-12), t
  # The lowest grid threshold above the 0.3 false positive.
  assert f1['best_score_threshold'] == pytest.approx(0.301, abs=1e-12)
  assert f1['best_f1'] == pytest.approx(0.75, abs=1e-12)
  assert f1['precision'] == pytest.approx(0.75) and f1['recall'] == pytest.approx(0.75)
  # The report carries it, and prints it.
  report = {'num_images': 4, 'num_detections': 6, 'images_per_second': 1.0,
            **coco.summarize_cocoeval(evaluator)}
  assert report['f1'] == curves.f1_summary(f1)
  assert ('best F1 0.750 at score threshold 0.301 (IoU 0.5; class means: precision 0.750, '
          'recall 0.750)') in coco.format_report(report)


def test_f1_averages_the_classes_with_ground_truth():
  groundtruth, results = _planted_confusion()
  evaluator = coco.run_cocoeval(groundtruth, results, [1, 2, 3])
  f1 = curves.f1_curve(evaluator)
  assert [c['name'] for c in f1['classes']] == ['cat', 'dog']  # bird: crowd only
  i = int(np.argmin(np.abs(np.asarray(f1['thresholds']) - 0.5)))
  # cat: TP 1 (0.9), FP 1 (0.8 on the dog), 2 gt -> 2/4; dog: TP 0 -> 0.
  assert f1['classes'][0]['f1'][i] == pytest.approx(0.5)
  assert f1['classes'][1]['f1'][i] == 0.0
  assert f1['mean_f1'][i] == pytest.approx(0.25)


# ----------------------------------------------------------------- PR curves
def _jittered_case(seed=4, num_images=12):
  """Ground truth of 3 classes and imperfect detections (jitter, wrong classes,
  misses, false positives, random distinct scores)."""
  rng = np.random.default_rng(seed)
  images, anns, results = [], [], []
  for i in range(1, num_images + 1):
    images.append(_image(i, 200))
    for _ in range(rng.integers(1, 5)):
      x, y = rng.uniform(0, 140, 2)
      w, h = rng.uniform(10, 60, 2)
      cat = int(rng.choice([CAT, DOG, BIRD]))
      anns.append(_ann(len(anns) + 1, i, cat, [x, y, w, h]))
      if rng.random() < 0.2:
        continue  # missed
      jitter = rng.normal(0, 0.1, 4) * [w, h, w, h]
      det_cat = cat if rng.random() > 0.2 else int(rng.choice([CAT, DOG, BIRD]))
      results.append(_det(i, det_cat, list(np.array([x, y, w, h]) + jitter),
                          float(rng.uniform(0.05, 1))))
    for _ in range(rng.integers(0, 3)):
      results.append(_det(i, int(rng.choice([CAT, DOG])),
                          list(rng.uniform(0, 140, 2)) + list(rng.uniform(10, 50, 2)),
                          float(rng.uniform(0.05, 0.6))))
  groundtruth = coco.groundtruth_from_dataset(
      {'images': images, 'annotations': anns, 'categories': CATEGORIES})
  return coco.run_cocoeval(groundtruth, results, range(1, num_images + 1)), results


@pytest.fixture(scope='module')
def written(tmp_path_factory):
  evaluator, results = _jittered_case()
  out = str(tmp_path_factory.mktemp('plots') / 'out')
  rendered = plots.make_plots(evaluator, results, score_threshold=0.4)
  return evaluator, out, plots.write_plots(rendered, out), rendered


def _load(out, name):
  with open(os.path.join(out, name + '.json'), encoding='utf-8') as f:
    return json.load(f)


def test_pr_curve_data_equals_pycocotools_precision(written):
  evaluator, out, _, _ = written
  precision = evaluator.eval['precision']  # [T, R, K, A, M]
  assert precision.shape == (10, 101, 3, 4, 3)
  iou50, iou50_95 = _load(out, plots.PR_IOU50), _load(out, plots.PR_IOU50_95)
  assert iou50['recall'] == list(evaluator.params.recThrs)
  assert [c['dataset_id'] for c in iou50['classes']] == [CAT, DOG, BIRD]
  for k, (c50, c5095) in enumerate(zip(iou50['classes'], iou50_95['classes'])):
    assert np.array_equal(c50['precision_iou50'], precision[0, :, k, 0, -1]), k
    assert np.array_equal(c5095['precision_iou50_95'],
                          precision[:, :, k, 0, -1].mean(axis=0)), k
  # The per-class AP beside each curve is the report's.
  per_class = coco.summarize_cocoeval(evaluator)['per_class']
  assert [c['AP50'] for c in iou50['classes']] == [r['AP50'] for r in per_class]
  assert [c['AP'] for c in iou50_95['classes']] == [r['AP'] for r in per_class]
  assert np.array_equal(iou50['mean_iou50'], precision[0, :, :, 0, -1].mean(axis=1))
  # A class without ground truth (-1 in pycocotools) is left out.
  groundtruth, results = _planted_confusion()
  pr = curves.pr_curves(coco.run_cocoeval(groundtruth, results, [1, 2, 3]))
  assert [c['name'] for c in pr['classes']] == ['cat', 'dog']


def test_written_files_are_valid_pngs_and_the_json_is_the_plotted_data(written):
  evaluator, out, paths, rendered = written
  names = sorted(os.path.basename(p) for p in paths)
  assert names == sorted(n + s for n in plots.PLOT_NAMES for s in ('.json', '.png'))
  assert sorted(os.listdir(out)) == names  # no temporary file left
  for name in plots.PLOT_NAMES:
    path = os.path.join(out, name + '.png')
    with open(path, 'rb') as f:
      assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
      image.verify()
    with Image.open(path) as image:
      assert image.format == 'PNG' and image.width >= 500 and image.height >= 500
      # Not a blank canvas.
      assert len(set(np.asarray(image.convert('L')).reshape(-1).tolist())) > 10
  matrix = _load(out, plots.CONFUSION)
  assert matrix['score_threshold'] == 0.4 and rendered.confusion_score_threshold == 0.4
  _, results = _jittered_case()
  assert matrix == confusion.confusion_matrix(evaluator.cocoGt, results,
                                              evaluator.params.imgIds, 0.4)
  assert _load(out, plots.F1) == curves.f1_curve(evaluator)


def test_confusion_threshold_defaults_to_the_best_f1_one():
  evaluator, results = _planted_f1()
  rendered = plots.make_plots(evaluator, results)
  assert rendered.confusion_score_threshold == pytest.approx(0.301)
  # Kept at >= 0.301: 0.9, 0.8, 0.4 found; 0.6 spurious; one cat missed.
  assert rendered.data[plots.CONFUSION]['matrix'][0] == [3, 0, 0, 1]
  assert rendered.data[plots.CONFUSION]['matrix'][3] == [1, 0, 0, 0]
  with pytest.raises(ValueError, match='score threshold must be in'):
    plots.make_plots(evaluator, results, score_threshold=1.5)


def test_plots_folder_that_is_a_file_is_refused(tmp_path, written):
  _, _, _, rendered = written
  path = tmp_path / 'a_file'
  path.write_text('x')
  with pytest.raises(ValueError, match='is not a folder'):
    plots.write_plots(rendered, str(path))


# ----------------------------------------------------------------- eval CLI
@pytest.fixture(scope='module')
def model_dir(tmp_path_factory):
  """A tiny spread-weights checkpoint + params.yaml on a generated shapes set."""
  data_dir = str(tmp_path_factory.mktemp('shapes'))
  shapes.generate(data_dir, num_train=4, num_val=6, seed=8)
  params, _, model = spread_detector(tiny_overrides(data_dir, input_size=96))
  path = str(tmp_path_factory.mktemp('run'))
  checkpoint = tf.train.Checkpoint(global_step=tf.Variable(0, dtype=tf.int64),
                                   model=model, **model.checkpoint_items)
  tf.train.CheckpointManager(checkpoint, path, max_to_keep=1).save(checkpoint_number=0)
  train_utils.serialize_config(params, path)
  return path


def test_eval_cli_plots(model_dir, tmp_path, capsys):
  out, report_path = str(tmp_path / 'plots'), str(tmp_path / 'report.json')
  detections = str(tmp_path / 'det.json')
  code = eval_cli.main(['--checkpoint', model_dir, '--plots', out, '--report', report_path,
                        '--detections', detections, '--confusion_score_threshold', '0.2'])
  stdout = capsys.readouterr().out
  assert code == 0
  with open(report_path, encoding='utf-8') as f:
    report = json.load(f)
  assert sorted(os.listdir(out)) == sorted(
      n + s for n in plots.PLOT_NAMES for s in ('.json', '.png'))
  for name in plots.PLOT_NAMES:
    with Image.open(os.path.join(out, name + '.png')) as image:
      image.verify()
  assert report['analysis']['plots_dir'] == out
  assert len(report['analysis']['files']) == 8
  # The report's threshold is the F1 curve's, on pycocotools' own evaluation of the
  # written detections (without the flag the confusion matrix would use it:
  # test_confusion_threshold_defaults_to_the_best_f1_one).
  with open(detections, encoding='utf-8') as f:
    results = json.load(f)
  assert report['num_detections'] == len(results) > 0
  groundtruth = coco.load_groundtruth(report['annotation_file'])
  image_ids = [i['id'] for i in groundtruth.dataset['images']]
  f1 = curves.f1_curve(coco.run_cocoeval(groundtruth, results, image_ids))
  assert report['f1'] == curves.f1_summary(f1)
  assert report['f1']['best_score_threshold'] is not None
  assert report['analysis']['confusion_score_threshold'] == 0.2
  matrix = _load(out, plots.CONFUSION)
  assert matrix == confusion.confusion_matrix(groundtruth, results, image_ids, 0.2)
  assert f'score threshold {report["f1"]["best_score_threshold"]:.3f}' in stdout
  assert f'plots written to {out}' in stdout


@pytest.mark.parametrize('extra, message', [
    (['--plots', 'FILE'], 'is not a folder'),
    (['--plots', 'DIR', '--confusion_score_threshold', '1.5'],
     '--confusion_score_threshold must be in [0, 1], got 1.5'),
    (['--confusion_score_threshold', '0.3'], '--confusion_score_threshold needs --plots'),
])
def test_eval_cli_plot_flag_errors_are_one_line(model_dir, tmp_path, capsys, extra, message):
  a_file = tmp_path / 'file'
  a_file.write_text('x')
  extra = [str(a_file) if e == 'FILE' else str(tmp_path / 'd') if e == 'DIR' else e
           for e in extra]
  code = eval_cli.main(['--checkpoint', model_dir] + extra)
  err = capsys.readouterr().err
  assert code == errors.ERROR_EXIT_CODE
  assert err.startswith('error: ') and message in err and len(err.splitlines()) == 1
  assert not os.path.exists(tmp_path / 'd')


# ----------------------------------------------------------------- training-time plots
def _groundtruths(dataset, chunk, n=5):
  """The pipeline's `groundtruths` (MG's keys; boxes original pixels yxyx) of `chunk`."""
  boxes = np.zeros([len(chunk), n, 4], np.float32)
  classes = -np.ones([len(chunk), n], np.int32)
  crowds = np.zeros([len(chunk), n], np.int32)
  areas = np.zeros([len(chunk), n], np.float32)
  counts = np.zeros([len(chunk)], np.int32)
  for b, image_id in enumerate(chunk):
    mine = [a for a in dataset['annotations'] if a['image_id'] == image_id]
    for j, a in enumerate(mine):
      x, y, w, h = a['bbox']
      boxes[b, j], classes[b, j] = [y, x, y + h, x + w], a['category_id']
      crowds[b, j], areas[b, j] = a['iscrowd'], a['area']
    counts[b] = len(mine)
  sizes = {i['id']: i for i in dataset['images']}
  return {'source_id': tf.constant(chunk, tf.int64),
          'height': tf.constant([sizes[i]['height'] for i in chunk]),
          'width': tf.constant([sizes[i]['width'] for i in chunk]),
          'num_detections': tf.constant(counts), 'boxes': tf.constant(boxes),
          'classes': tf.constant(classes), 'is_crowds': tf.constant(crowds),
          'areas': tf.constant(areas)}


def _metric_fed(groundtruth_json, results, batch=2, from_pipeline=False):
  """A RecordingCOCOEvaluator fed `results` in the task's prediction format; with
  `from_pipeline` it has no annotation file and gets the ground truth as for TFRecords."""
  metric = coco_metric.RecordingCOCOEvaluator(
      annotation_file=None if from_pipeline else groundtruth_json, include_mask=False,
      need_rescale_bboxes=False)
  with open(groundtruth_json, encoding='utf-8') as f:
    dataset = json.load(f)
  ids = [i['id'] for i in dataset['images']]
  n = 5
  for start in range(0, len(ids), batch):
    chunk = ids[start:start + batch]
    boxes = np.zeros([len(chunk), n, 4], np.float32)
    scores = np.zeros([len(chunk), n], np.float32)
    classes = -np.ones([len(chunk), n], np.int32)
    counts = np.zeros([len(chunk)], np.int32)
    for b, image_id in enumerate(chunk):
      mine = [r for r in results if r['image_id'] == image_id]
      for j, r in enumerate(mine):
        x, y, w, h = r['bbox']
        boxes[b, j] = [y, x, y + h, x + w]
        scores[b, j], classes[b, j] = r['score'], r['category_id']
      counts[b] = len(mine)
    metric.update_state(_groundtruths(dataset, chunk) if from_pipeline else None, {
        'source_id': tf.constant(chunk, tf.int64), 'detection_boxes': tf.constant(boxes),
        'detection_scores': tf.constant(scores), 'detection_classes': tf.constant(classes),
        'num_detections': tf.constant(counts),
        'image_info': tf.ones([len(chunk), 4, 2])})
  return metric


def _event_tags(folder):
  tags = set()
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      tags.update(v.tag for v in event.summary.value)
  return tags


def test_training_time_plots_from_the_task_metric(tmp_path):
  groundtruth, results = _planted_confusion()
  gt_file = str(tmp_path / 'gt.json')
  with open(gt_file, 'w', encoding='utf-8') as f:
    json.dump(groundtruth.dataset, f)
  metric = _metric_fed(gt_file, results)
  lines = []
  model_dir = str(tmp_path / 'run')
  action = train_plots.EvalPlotsAction(metric, model_dir, os.path.join(model_dir, 'validation'),
                                       lambda: 7, score_threshold=0.5, printer=lambda *a, **k:
                                       lines.append(a[0]))
  logs = metric.result()  # what the task's reduce_aggregated_logs returns
  action(logs)
  out = os.path.join(model_dir, 'plots', 'step_7')
  m = _load(out, plots.CONFUSION)
  assert m['matrix'] == [[1, 0, 0, 1], [1, 0, 0, 0], [0, 0, 0, 0], [0, 1, 0, 0]]
  # The plots' COCOeval is Model Garden's evaluation (its stats are float32).
  evaluator = coco.run_cocoeval(coco.load_groundtruth(gt_file), results, [1, 2, 3])
  np.testing.assert_allclose([logs[n] for n in coco.STAT_NAMES], evaluator.stats, atol=3e-8)
  precision = evaluator.eval['precision']
  for k, c in enumerate(_load(out, plots.PR_IOU50)['classes']):
    assert np.allclose(c['precision_iou50'], precision[0, :, k, 0, -1], atol=1e-6)
  assert len(lines) == 1 and lines[0].startswith(f'eval plots of step 7 in {out}')
  tags = _event_tags(os.path.join(model_dir, 'validation'))
  assert {f'plots/{n}' for n in plots.PLOT_NAMES} <= tags
  assert {'plots/best_f1_score_threshold', 'plots/best_f1'} <= tags
  # Nothing kept once used; an evaluator that keeps nothing copies nothing.
  assert metric.last is None
  plain = _metric_fed(gt_file, results)
  plain.result()
  assert plain.last is None
  # Ground truth from the pipeline (TFRecord validation data): the same plots, named
  # by the task's label map.
  piped = _metric_fed(gt_file, results, from_pipeline=True)
  names = {CAT: 'cat', DOG: 'dog', BIRD: 'bird'}
  train_plots.EvalPlotsAction(piped, model_dir, os.path.join(model_dir, 'validation'),
                              lambda: 9, score_threshold=0.5, label_map=names,
                              printer=lambda *a, **k: None)(piped.result())
  out9 = os.path.join(model_dir, 'plots', 'step_9')
  assert _load(out9, plots.CONFUSION) == m
  assert _load(out9, plots.PR_IOU50) == _load(out, plots.PR_IOU50)


# ----------------------------------------------------------------- early stopping
@pytest.mark.parametrize('comp, values, min_delta, stops_after', [
    ('higher', [0.1, 0.2, 0.2, 0.3, 0.25, 0.31], 0.0, None),  # patience 2 never runs out
    ('higher', [0.1, 0.2, 0.2, 0.19, 0.5], 0.0, 4),
    ('higher', [0.1, 0.105, 0.109, 0.2], 0.01, 3),  # +0.005, +0.009 are not > 0.01
    ('lower', [1.0, 0.9, 0.95, 0.91, 0.1], 0.0, 4),
])
def test_early_stopping_patience(comp, values, min_delta, stops_after):
  stopper = early_stopping.EarlyStopping(2, 'AP', comp, min_delta)
  stopped = None
  for i, value in enumerate(values, 1):
    if stopper.update({'AP': np.float32(value), 'other': 1.0}, step=10 * i):
      stopped = i
      break
  assert stopped == stops_after
  if stopped:
    line = stopper.reason(10 * stopped)
    assert line.startswith(f'early stopping at step {10 * stopped}: AP has not improved')
    assert '(trainer.early_stopping.patience 2)' in line


def test_early_stopping_config_errors():
  for kwargs, message in [({'patience': 0}, 'patience must be >= 1'),
                          ({'metric_comp': 'up'}, 'metric_comp must be one of'),
                          ({'min_delta': -1.0}, 'min_delta must be >= 0')]:
    with pytest.raises(ValueError, match=message):
      early_stopping.EarlyStopping(**{'patience': 1, **kwargs})
  stopper = early_stopping.EarlyStopping(1, 'APX')
  with pytest.raises(ValueError, match=r"metric 'APX' is not among the eval metrics \(AP"):
    stopper.update({'AP': 0.1, 'AP50': 0.2}, step=1)


class _FakeTrainer(orbit.AbstractTrainer):
  def __init__(self, step):
    self.step = step

  def train(self, num_steps):
    self.step.assign_add(int(num_steps))


class _FakeEvaluator(orbit.AbstractEvaluator):
  """Returns the next AP of `values` at each evaluation."""

  def __init__(self, values):
    self.values = list(values)

  def evaluate(self, num_steps):
    return {'AP': np.float32(self.values.pop(0))}


@pytest.mark.parametrize('values, stop_step', [
    ([0.1, 0.2, 0.2, 0.2, 0.9], 8),   # best at 4, no better at 6 and 8: stops at 8 of 10
    ([0.1, 0.2, 0.3, 0.3, 0.3], None),  # would stop at 10, the last evaluation anyway
    ([0.1, 0.2, 0.3, 0.4, 0.5], None),
])
def test_controller_leaves_orbits_loop(tmp_path, values, stop_step):
  step = tf.Variable(0, dtype=tf.int64)
  checkpoint = tf.train.Checkpoint(step=step)
  manager = tf.train.CheckpointManager(checkpoint, str(tmp_path), max_to_keep=None,
                                       step_counter=step, checkpoint_interval=100)
  evaluator, lines = _FakeEvaluator(values), []
  stopper = early_stopping.EarlyStopping(2)
  controller = early_stopping.EarlyStoppingController(
      global_step=step, trainer=_FakeTrainer(step), evaluator=evaluator,
      steps_per_loop=2, checkpoint_manager=manager, stopper=stopper,
      best_dir=str(tmp_path), printer=lambda line, **k: lines.append(line))
  output = controller.train_and_evaluate(train_steps=10, eval_interval=2)
  if stop_step is None:
    assert int(step.numpy()) == 10 and not lines and not evaluator.values
    return
  assert int(step.numpy()) == stop_step and len(evaluator.values) == 1
  assert output == {'AP': np.float32(values[3])}
  assert lines == [f'early stopping at step {stop_step}: AP has not improved on its best '
                   f'0.2000 (step 4) for 2 evaluation(s) (trainer.early_stopping.patience '
                   f'2); best checkpoint: {tmp_path}']
  assert manager.latest_checkpoint.endswith(f'ckpt-{stop_step}')  # saved at the stop
  # Outside train_and_evaluate (e.g. a post-training eval) nothing is counted.
  controller.evaluate()
  assert stopper.evals_without_improvement == 2


def _events_with_tag(folder, tag):
  steps = []
  for path in glob.glob(os.path.join(folder, 'events.out.tfevents.*')):
    for event in tf.compat.v1.train.summary_iterator(path):
      if any(v.tag == tag for v in event.summary.value):
        steps.append(event.step)
  return sorted(steps)


@pytest.mark.slow
def test_train_and_eval_stops_early_and_keeps_best_ckpt(tmp_path):
  """Learning rate 0 and frozen BN: the weights never change, so AP never improves on
  the first evaluation's; patience 1 stops after the 2nd of 4 scheduled evaluations.
  Also the test of `task.model.freeze_batchnorm` through tools/train.py."""
  data_dir = str(tmp_path / 'shapes')
  shapes.generate(data_dir, num_train=8, num_val=4, seed=3)
  overrides = ','.join([
      tiny_overrides(data_dir, input_size=96),
      'task.train_data.global_batch_size=4', 'task.validation_data.global_batch_size=4',
      'task.model.freeze_batchnorm=true',
      'trainer.optimizer_config.learning_rate.cosine.initial_learning_rate=0.0',
      'trainer.optimizer_config.warmup.linear.warmup_learning_rate=0.0',
      'trainer.train_steps=8', 'trainer.validation_interval=2', 'trainer.steps_per_loop=2',
      'trainer.summary_interval=2', 'trainer.checkpoint_interval=2',
      'trainer.early_stopping.patience=1',
      'runtime.distribution_strategy=one_device', 'runtime.num_gpus=0'])
  model_dir = tmp_path / 'run'
  result = subprocess.run(
      [sys.executable, TRAIN, '--experiment', 'ssdlite_mnv2_shapes', '--mode',
       'train_and_eval', '--model_dir', str(model_dir), '--params_override', overrides],
      capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'),
      timeout=900)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = [l for l in result.stdout.splitlines() if l.startswith('early stopping')]
  assert len(lines) == 1, result.stdout[-3000:]
  assert lines[0].startswith('early stopping at step 4: AP has not improved on its best')
  assert '(step 2) for 1 evaluation(s) (trainer.early_stopping.patience 1)' in lines[0]
  assert lines[0].endswith(f'best checkpoint: {model_dir / "best_ckpt"}')
  # Stopped at step 4 of 8: the last checkpoint is step 4, two evaluations ran.
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-4')
  assert _events_with_tag(str(model_dir / 'validation'), 'AP') == [2, 4]
  # best_ckpt is the first evaluation's, intact and equal to the (unchanged) weights.
  with open(model_dir / 'best_ckpt' / 'info.json', encoding='utf-8') as f:
    info = json.load(f)
  best = tf.train.latest_checkpoint(str(model_dir / 'best_ckpt'))
  assert best is not None and best.endswith('ckpt-2') and info['AP'] >= 0
  best_reader, last_reader = tf.train.load_checkpoint(best), tf.train.load_checkpoint(
      tf.train.latest_checkpoint(str(model_dir)))
  kernels = [n for n in best_reader.get_variable_to_shape_map()
             if n.endswith('kernel/.ATTRIBUTES/VARIABLE_VALUE') and 'OPTIMIZER_SLOT' not in n]
  assert len(kernels) > 50
  for name in kernels:
    np.testing.assert_array_equal(best_reader.get_tensor(name), last_reader.get_tensor(name))
  # task.model.freeze_batchnorm: every BN moving statistic is still at its initial
  # value (mean 0, variance 1); BN in training mode would have moved them all even at
  # learning rate 0. (backbone 52 + extra layers 12 + head 12 = 76 BN layers.)
  moving = [n for n in last_reader.get_variable_to_shape_map()
            if n.endswith(('moving_mean/.ATTRIBUTES/VARIABLE_VALUE',
                           'moving_variance/.ATTRIBUTES/VARIABLE_VALUE'))]
  assert len(moving) == 2 * 76
  for name in moving:
    value = last_reader.get_tensor(name)
    np.testing.assert_array_equal(value, 0.0 if 'moving_mean' in name else 1.0, err_msg=name)
  # The training-time plots of both evaluations, on disk and in TensorBoard.
  for step in (2, 4):
    out = model_dir / 'plots' / f'step_{step}'
    assert sorted(os.listdir(out)) == sorted(
        n + s for n in plots.PLOT_NAMES for s in ('.json', '.png'))
  assert _events_with_tag(str(model_dir / 'validation'), 'plots/confusion_matrix') == [2, 4]
  assert 'Traceback' not in result.stderr
