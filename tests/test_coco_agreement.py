"""The two COCO scoring paths agree: the task's Model Garden COCOEvaluator (training-time
validation) and our pycocotools library (`mnv2_det.evaluation.coco`, tools/eval.py).

The same imperfect detections (ground truth jittered by a seeded RNG, some with a wrong
class, some dropped, a duplicate now and then, random false positives, one image with no
detections at all; distinct random scores) go
  (a) through the task itself: `validation_step` with a stand-in model that returns them
      (and zero logits for the loss), then `aggregate_logs` / `reduce_aggregated_logs`,
      with the COCOEvaluator `build_metrics` constructs: from the validation annotation
      file, and, as for TFRecord validation data, without one (ground truth from the
      pipeline's `groundtruths`);
  (b) through `coco.to_coco_results` + `coco.coco_evaluate` on `coco.load_groundtruth`.
All 12 COCO stats must agree to STAT_TOLERANCE. They do, and more: both paths run the same
COCOeval on the same ground truth and boxes, and the task's values are exactly ours rounded
to float32 (COCOEvaluator.evaluate casts its stats to float32), a difference of at most
~3e-8 for stats in [0, 1] (1.3e-8 here). Two annotations of the val set are marked
crowd so that both paths' crowd handling is exercised. No detector runs.
"""

import json

import numpy as np
import pytest
import tensorflow as tf

from official.core import task_factory

from mnv2_det.core import params as params_lib
from mnv2_det.data import shapes
from mnv2_det.evaluation import coco
from mnv2_det.modeling import factory
from mnv2_det.ops import postprocess
from detector_weights import SHAPES_EXPERIMENT, tiny_overrides

NUM_VAL = 16
BATCH = 6  # 16 images: two full batches and a partial one
SEED = 11
STAT_TOLERANCE = 1e-6
MAX_DETECTIONS = postprocess.MAX_TOTAL  # the model's padded output size
CROWD_ANNOTATIONS = (2, 7)  # annotation ids marked iscrowd in the val set
JITTER = 0.08  # box edge noise, in units of the box side
WRONG_CLASS_ODDS = 0.15
DROP_ODDS = 0.15
DUPLICATE_ODDS = 0.1
MAX_FALSE_POSITIVES = 3  # per image
EMPTY_IMAGE_INDEX = 3  # this val image gets no detections


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  paths = shapes.generate(str(tmp_path_factory.mktemp('shapes')), num_train=2,
                          num_val=NUM_VAL, seed=SEED)
  with open(paths['val_annotations'], encoding='utf-8') as f:
    annotations = json.load(f)
  for ann in annotations['annotations']:
    if ann['id'] in CROWD_ANNOTATIONS:
      ann['iscrowd'] = 1
  with open(paths['val_annotations'], 'w', encoding='utf-8') as f:
    json.dump(annotations, f)
  return paths


def _task(data_dir, extra=''):
  override = tiny_overrides(data_dir) + f',task.validation_data.global_batch_size={BATCH}'
  params = params_lib.build_params(SHAPES_EXPERIMENT,
                                   params_override=override + extra)
  return task_factory.get_task(params.task), params


@pytest.fixture(scope='module')
def setup(data):
  data_dir = data['val_annotations'].rsplit('/annotations/', 1)[0]
  task, params = _task(data_dir)
  # As for TFRecord validation data: no annotation file, so build_metrics makes a
  # COCOEvaluator that takes its ground truth from the pipeline.
  no_file_task, _ = _task(data_dir, ',task.validation_data.annotation_file=""')
  batches = list(task.build_inputs(params.task.validation_data))
  detections = _imperfect_detections(data['val_annotations'], task.category_map)
  return task, no_file_task, params, batches, detections


def _imperfect_detections(annotation_file, category_map, seed=SEED):
  """{image id: (boxes [n, 4] yxyx original pixels, contiguous classes [n], scores [n])},
  boxes and scores float32 as the model outputs them."""
  rng = np.random.default_rng(seed)
  with open(annotation_file, encoding='utf-8') as f:
    gt = json.load(f)
  num_categories = len(category_map.dataset_ids)
  images = {im['id']: im for im in gt['images']}
  per_image = {i: [] for i in images}
  for ann in gt['annotations']:
    per_image[ann['image_id']].append(ann)
  out = {}
  for index, (image_id, anns) in enumerate(sorted(per_image.items())):
    h, w = images[image_id]['height'], images[image_id]['width']
    boxes, classes, good = [], [], []
    if index != EMPTY_IMAGE_INDEX:
      for ann in anns:
        if rng.random() < DROP_ODDS:
          continue
        cls = int(category_map.contiguous_of([ann['category_id']])[0])
        copies = 2 if rng.random() < DUPLICATE_ODDS else 1
        for _ in range(copies):
          x, y, bw, bh = ann['bbox']
          noise = rng.normal(0.0, JITTER, 4) * [bh, bw, bh, bw]
          boxes.append(np.array([y, x, y + bh, x + bw]) + noise)
          wrong = rng.random() < WRONG_CLASS_ODDS
          classes.append(int(rng.integers(1, num_categories + 1)) if wrong else cls)
          good.append(not wrong)
      for _ in range(int(rng.integers(0, MAX_FALSE_POSITIVES + 1))):
        y0, x0 = rng.uniform(0, h * 0.8), rng.uniform(0, w * 0.8)
        boxes.append([y0, x0, y0 + rng.uniform(5, h * 0.4), x0 + rng.uniform(5, w * 0.4)])
        classes.append(int(rng.integers(1, num_categories + 1)))
        good.append(False)
    n = len(boxes)
    boxes = np.clip(np.reshape(boxes, [n, 4]), 0, [h, w, h, w])
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2] + 1.0)
    # Distinct scores (a 1e-6 grid, distinct in float32 too), higher on the whole for
    # the right class, so that AP is neither trivial nor near 0; sorted as the model's.
    scores = rng.choice(10**6, n, replace=False) / 10**6
    scores = np.where(good, 0.3 + 0.7 * scores, 0.7 * scores)
    assert len(set(scores.astype(np.float32))) == n
    order = np.argsort(-scores, kind='stable')
    out[image_id] = (boxes[order].astype(np.float32), np.asarray(classes, np.int32)[order],
                     scores[order].astype(np.float32))
  return out


def _padded_batch(source_ids, detections):
  """The model's detection outputs for a batch: padded to MAX_DETECTIONS rows with
  zero boxes and scores and class 0 (background), as ops/postprocess pads."""
  b = len(source_ids)
  out = {'detection_boxes': np.zeros([b, MAX_DETECTIONS, 4], np.float32),
         'detection_scores': np.zeros([b, MAX_DETECTIONS], np.float32),
         'detection_classes': np.zeros([b, MAX_DETECTIONS], np.int32),
         'num_detections': np.zeros([b], np.int32)}
  for row, image_id in enumerate(source_ids):
    boxes, classes, scores = detections[int(image_id)]
    n = len(classes)
    out['detection_boxes'][row, :n] = boxes
    out['detection_scores'][row, :n] = scores
    out['detection_classes'][row, :n] = classes
    out['num_detections'][row] = n
  return out


class _ReplayModel:
  """Stands in for the SSDLite model in `validation_step`: returns the detections set
  for the next batch, plus zero class logits and box codes (one level holding every
  anchor) for the loss."""

  losses = []

  def __init__(self, num_anchors, num_classes):
    self._num_anchors, self._num_classes = num_anchors, num_classes
    self.next_detections = None

  def __call__(self, images, image_info=None, training=False):
    del image_info, training
    b = int(images.shape[0])
    outputs = {
        'cls_outputs': {'3': tf.zeros([b, self._num_anchors, 1, self._num_classes])},
        'box_outputs': {'3': tf.zeros([b, self._num_anchors, 1, 4])}}
    outputs.update({k: tf.constant(v) for k, v in self.next_detections.items()})
    return outputs


def _task_path_stats(task, params, batches, detections):
  """The task's own validation path: validation_step -> aggregate_logs ->
  reduce_aggregated_logs, with the COCOEvaluator its build_metrics makes."""
  model = _ReplayModel(len(factory.build_anchors(params.task.model)),
                       params.task.model.num_classes)
  metrics = task.build_metrics(training=False)
  state, seen = None, []
  for images, labels in batches:
    source_ids = labels['source_id'].numpy()
    seen.extend(int(i) for i in source_ids)
    model.next_detections = _padded_batch(source_ids, detections)
    logs = task.validation_step((images, labels), model, metrics=metrics)
    state = task.aggregate_logs(state, logs)
  logs = task.reduce_aggregated_logs(state)
  return {name: float(logs[name]) for name in coco.STAT_NAMES}, seen


def _library_stats(task, annotation_file, batches, detections):
  """tools/eval.py's path: to_coco_results (contiguous -> dataset ids) + coco_evaluate."""
  results, image_ids = [], []
  for _, labels in batches:
    source_ids = labels['source_id'].numpy()
    results.extend(coco.to_coco_results(source_ids, _padded_batch(source_ids, detections),
                                        task.category_map))
    image_ids.extend(int(i) for i in source_ids)
  groundtruth = coco.load_groundtruth(annotation_file)
  return coco.coco_evaluate(groundtruth, results, image_ids, annotation_file)['stats']


def _assert_agree(task_stats, library_stats):
  diffs = {n: abs(task_stats[n] - library_stats[n]) for n in coco.STAT_NAMES}
  worst = max(diffs, key=diffs.get)
  assert diffs[worst] <= STAT_TOLERANCE, (
      f'COCO paths disagree: {worst} differs by {diffs[worst]:.3g}; task '
      f'{task_stats}, library {library_stats}')


@pytest.mark.parametrize('evaluator', ['annotation_file', 'pipeline_groundtruths'])
def test_task_evaluator_agrees_with_library(setup, data, evaluator):
  task, no_file_task, params, batches, detections = setup
  scoring_task = task if evaluator == 'annotation_file' else no_file_task
  task_stats, seen = _task_path_stats(scoring_task, params, batches, detections)
  with open(data['val_annotations'], encoding='utf-8') as f:
    all_ids = sorted(im['id'] for im in json.load(f)['images'])
  assert sorted(seen) == all_ids  # every val image reached both paths
  library_stats = _library_stats(task, data['val_annotations'], batches, detections)
  assert 0.2 < library_stats['AP'] < 0.95, library_stats  # not a trivial comparison
  assert library_stats['ARmax100'] < 1.0
  _assert_agree(task_stats, library_stats)
  # The only difference is COCOEvaluator's float32 cast of the stats.
  assert task_stats == {n: float(np.float32(v)) for n, v in library_stats.items()}


def test_evaluators_are_the_ones_build_metrics_makes(setup, data):
  """The two variants above really differ in where the ground truth comes from."""
  task, no_file_task, _, _, _ = setup
  task.build_metrics(training=False)
  no_file_task.build_metrics(training=False)
  # pylint: disable=protected-access
  assert task.coco_metric._annotation_file == data['val_annotations']
  assert not no_file_task.coco_metric._annotation_file
