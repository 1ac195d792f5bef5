"""`task.model.num_classes` counts background at index 0 (issue #15).

A COCO JSON with K categories trains, evaluates and exports with num_classes = K + 1,
and is refused with one clear error when num_classes = K. A head wider than K + 1
(COCO: 91 outputs for 80 categories with ids 1..90) has tail outputs without a
dataset id: no detection of the checkpoint model, the SavedModel or the TFLite
export may come from them, and the exported artifacts carry exactly K classes.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from flatbuffers import flexbuffers
from tensorflow.lite.tools import flatbuffer_utils

from official.core import task_factory
from official.core import train_utils

from mnv2_det.data import preprocess
from mnv2_det.data.category_map import UNKNOWN, CategoryMap
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.export import saved_model
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_postprocess
from mnv2_det.evaluation import coco
from mnv2_det.inference import detector as detector_lib
from detector_weights import spread_weights, tiny_overrides

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 96
SHAPES_IDS = [1, 3, 7, 9, 12]  # the generator's 5 categories
K = len(SHAPES_IDS)
BATCH = 2
TRAIN_STEPS = 2
# COCO 2017's 80 category ids: 1..90 without 12, 26, 29, 30, 45, 66, 68, 69, 71, 83.
COCO_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_IDS = [i for i in range(1, 91) if i not in COCO_GAPS]
COCO_NUM_CLASSES = 91
# Shapes ids -> COCO ids for the annotations of the COCO-style file (12 is a gap).
SHAPES_TO_COCO = {1: 1, 3: 3, 7: 7, 9: 9, 12: 90}
TAIL_LOGIT = 8.0  # class bias of the tail outputs 81..90: sigmoid ~1, above every real one


@pytest.fixture(scope='module')
def data_dir(shapes_data):
  return shapes_data(num_train=4, num_val=2, seed=11)['dir']


def _override(data_dir, num_classes=None):
  """Tiny shapes overrides; num_classes None keeps the registered experiment's."""
  return (tiny_overrides(data_dir, INPUT) +
          ('' if num_classes is None else f',task.model.num_classes={num_classes}') +
          f',task.train_data.global_batch_size={BATCH}'
          f',task.validation_data.global_batch_size={BATCH}')


def _image(data_dir, split='val', index=0):
  path = os.path.join(data_dir, split, f'{split}_{index:06d}.jpg')
  return preprocess.decode_image_rgb(tf.io.read_file(path)).numpy()


def _train(task, params, model, steps=TRAIN_STEPS):
  """A few eager task.train_step calls; returns the last logs."""
  optimizer = train_utils.create_optimizer(task, params)
  batches = iter(task.build_inputs(params.task.train_data))
  for _ in range(steps):
    logs = task.train_step(next(batches), model, optimizer)
  return logs


def _op_num_classes_and_score_width(path):
  """(num_classes attribute, score input width) of the file's post-process op."""
  with open(path, 'rb') as f:
    model = flatbuffer_utils.read_model_from_bytearray(bytearray(f.read()))
  subgraph = model.subgraphs[0]
  for op in subgraph.operators:
    code = model.operatorCodes[op.opcodeIndex]
    name = code.customCode.decode() if isinstance(code.customCode, bytes) else code.customCode
    if name == tflite_postprocess.OP_NAME:
      options = flexbuffers.Loads(bytes(bytearray(op.customOptions)))
      scores = subgraph.tensors[op.inputs[1]]
      return int(options['num_classes']), int(list(scores.shape)[-1])
  raise AssertionError(f'{path} has no {tflite_postprocess.OP_NAME} op')


def _detector_json(saved_model_dir):
  with open(os.path.join(saved_model_dir, saved_model.DETECTOR_INFO_FILE),
            encoding='utf-8') as f:
    return json.load(f)


def _tflite_metadata(path):
  with open(path, 'rb') as f:
    return tflite.read_detector_metadata(path, f.read())


# ----------------------------------------------------------------- K + 1 works
@pytest.fixture(scope='module')
def shapes_run(data_dir, tmp_path_factory):
  """The shapes experiment as registered (num_classes must be K + 1 for its K = 5
  categories), tiny: trained a few steps, exported."""
  override = _override(data_dir)
  params = params_lib.build_params(EXPERIMENT, params_override=override)
  task = task_factory.get_task(params.task)
  model = task.build_model()
  logs = _train(task, params, model)
  out = tmp_path_factory.mktemp('shapes_export')
  sm = saved_model.export_saved_model(params, model, task.category_map, str(out / 'sm'))
  fp32 = tflite_convert.export_tflite(params, model, task.category_map,
                                      str(out / 'fp32.tflite'), 'fp32')
  return dict(params=params, task=task, model=model, logs=logs, saved_model=sm,
              tflite=fp32)


def test_k_categories_with_k_plus_1_outputs_train_evaluate_and_export(shapes_run,
                                                                      data_dir):
  s = shapes_run
  assert s['params'].task.model.num_classes == K + 1
  assert list(s['task'].category_map.dataset_ids) == SHAPES_IDS
  assert np.isfinite(float(s['logs']['loss']))
  val = s['params'].task.validation_data
  loaded = loading.LoadedModel(s['params'], s['task'], s['model'], s['task'].category_map,
                               checkpoint='', model_dir='')
  report = coco.evaluate_images(detector_lib.from_loaded(loaded).detect, val.annotation_file,
                                val.image_dir)
  assert report['num_images'] == 2 and report['num_detections'] > 0
  assert [c['dataset_id'] for c in report['per_class']] == SHAPES_IDS
  image = _image(data_dir)
  served = tf.saved_model.load(s['saved_model']).signatures['serving_default'](
      images=tf.constant(image[None]))
  for out in (served, tflite.TFLiteDetector(s['tflite'])(image)):
    n = int(np.asarray(out['num_detections'])[0])
    assert n > 0
    assert set(np.asarray(out['detection_classes'])[0, :n]) <= set(SHAPES_IDS)


def test_shapes_exports_have_no_phantom_slot(shapes_run):
  metadata = _tflite_metadata(shapes_run['tflite'])
  assert metadata['dataset_ids'] == SHAPES_IDS and len(metadata['class_names']) == K
  assert metadata['num_classes'] == K + 1
  assert _op_num_classes_and_score_width(shapes_run['tflite']) == (K, K + 1)
  info = _detector_json(shapes_run['saved_model'])
  assert info['dataset_ids'] == SHAPES_IDS and len(info['class_names']) == K
  assert info['num_classes'] == K + 1


# ----------------------------------------------------------------- K is refused
def test_k_plus_1_is_accepted_and_k_is_refused(data_dir):
  params = params_lib.build_params(EXPERIMENT, params_override=_override(data_dir, K + 1))
  task = task_factory.get_task(params.task)
  assert list(task.category_map.dataset_ids) == SHAPES_IDS
  params = params_lib.build_params(EXPERIMENT, params_override=_override(data_dir, K))
  task = task_factory.get_task(params.task)
  message = (f'instances_train.json: {K} categories need task.model.num_classes >= '
             f'{K + 1} ({K} + background at index 0), got {K}')
  with pytest.raises(ValueError) as e:
    task.build_model()
  assert message in str(e.value) and str(e.value).count('\n') == 0
  with pytest.raises(ValueError, match='need task.model.num_classes >= 6'):
    task.build_inputs(params.task.train_data)


def test_exporters_refuse_a_category_table_larger_than_the_head():
  table = CategoryMap.from_ids(SHAPES_IDS)
  params = params_lib.build_params(EXPERIMENT, params_override='task.model.num_classes=5')
  with pytest.raises(ValueError, match='5 categories need task.model.num_classes >= 6'):
    loading.num_real_classes(params, table)
  params = params_lib.build_params(EXPERIMENT, params_override='task.model.num_classes=6')
  assert loading.num_real_classes(params, table) == K


# ----------------------------------------------------------------- COCO: 80 ids in 1..90
def _write_coco_style(data_dir, out_dir):
  """The shapes annotations relabelled to COCO ids, with all 80 COCO categories."""
  paths = {}
  for split in ('train', 'val'):
    with open(os.path.join(data_dir, 'annotations', f'instances_{split}.json'),
              encoding='utf-8') as f:
      coco = json.load(f)
    coco['categories'] = [{'id': i, 'name': f'coco_{i}', 'supercategory': 'x'}
                          for i in reversed(COCO_IDS)]  # any order in the file
    for ann in coco['annotations']:
      ann['category_id'] = SHAPES_TO_COCO[ann['category_id']]
    paths[split] = os.path.join(out_dir, f'coco_{split}.json')
    with open(paths[split], 'w', encoding='utf-8') as f:
      json.dump(coco, f)
  return ','.join([
      f'task.train_data.annotation_file={paths["train"]}',
      f'task.validation_data.annotation_file={paths["val"]}',
      f'task.train_data.image_dir={data_dir}/train',
      f'task.validation_data.image_dir={data_dir}/val',
      f'task.model.input_size=[{INPUT},{INPUT},3]',
      'task.model.backbone.mnv2_det.depth_multiplier=0.35',
      f'task.model.num_classes={COCO_NUM_CLASSES}',
      f'task.train_data.global_batch_size={BATCH}',
      f'task.validation_data.global_batch_size={BATCH}'])


def _raise_tail_outputs(model, num_classes, num_real):
  """Class biases of the outputs past num_real (no dataset id) -> TAIL_LOGIT."""
  found = 0
  for v in model.head.trainable_variables:
    if 'class' in v.name and v.name.endswith('bias:0'):
      value = v.numpy().reshape([-1, num_classes])  # anchor-major
      value[:, num_real + 1:] = TAIL_LOGIT
      v.assign(value.reshape([-1]))
      found += 1
  assert found > 0


@pytest.fixture(scope='module')
def coco_run(data_dir, tmp_path_factory):
  """COCO-style file (80 categories, ids 1..90), num_classes 91; tail outputs 81..90
  score highest; checkpoint, SavedModel and fp32 TFLite."""
  out = tmp_path_factory.mktemp('coco')
  override = _write_coco_style(data_dir, str(out))
  params = params_lib.build_params(EXPERIMENT, params_override=override)
  task = task_factory.get_task(params.task)
  model = task.build_model()
  logs = _train(task, params, model, steps=1)
  spread_weights(model, COCO_NUM_CLASSES)
  _raise_tail_outputs(model, COCO_NUM_CLASSES, len(COCO_IDS))
  prefix = tf.train.Checkpoint(model=model).write(str(out / 'ckpt-1'))
  loaded = loading.load_model(prefix, EXPERIMENT, params_override=override)
  sm = saved_model.export_saved_model(loaded.params, loaded.model, loaded.category_map,
                                      str(out / 'sm'))
  fp32 = tflite_convert.export_tflite(loaded.params, loaded.model, loaded.category_map,
                                      str(out / 'fp32.tflite'), 'fp32')
  return dict(loaded=loaded, logs=logs, saved_model=sm, tflite=fp32,
              image=_image(data_dir))


def _assert_only_coco_ids(out):
  n = int(np.asarray(out['num_detections']).reshape([-1])[0])
  classes = np.asarray(out['detection_classes'])[0]
  assert n > 0
  assert UNKNOWN not in classes[:n]
  assert set(classes[:n]) <= set(COCO_IDS)


def test_coco_80_categories_in_91_outputs_build_and_train(coco_run):
  loaded = coco_run['loaded']
  assert list(loaded.category_map.dataset_ids) == COCO_IDS
  assert loaded.model.head.get_config()['num_classes'] == COCO_NUM_CLASSES
  assert loaded.model.num_real_classes == len(COCO_IDS)
  assert np.isfinite(float(coco_run['logs']['loss']))


def test_coco_tail_outputs_never_detected_by_the_checkpoint_model(coco_run):
  loaded, image = coco_run['loaded'], coco_run['image']
  prepared, info = serving_inputs.prepare_image(tf.constant(image), [INPUT, INPUT],
                                                'fixed')
  out = loaded.model(prepared[None], image_info=info[None], training=False)
  n = int(out['num_detections'][0])
  assert n > 0 and int(tf.reduce_max(out['detection_classes'][0, :n])) <= len(COCO_IDS)
  _assert_only_coco_ids({
      'num_detections': out['num_detections'],
      'detection_classes': loaded.category_map.tf_to_dataset(out['detection_classes'])})


def test_coco_tail_outputs_never_detected_by_the_saved_model(coco_run):
  signature = tf.saved_model.load(coco_run['saved_model']).signatures['serving_default']
  _assert_only_coco_ids(signature(images=tf.constant(coco_run['image'][None])))
  info = _detector_json(coco_run['saved_model'])
  assert info['dataset_ids'] == COCO_IDS and len(info['class_names']) == len(COCO_IDS)
  assert info['num_classes'] == len(COCO_IDS) + 1


def test_coco_tail_outputs_never_detected_by_the_tflite_export(coco_run):
  detector = tflite.TFLiteDetector(coco_run['tflite'])
  _assert_only_coco_ids(detector(coco_run['image']))
  pixels = serving_inputs.normalized_to_pixels(serving_inputs.prepare_image(
      tf.constant(coco_run['image']), [INPUT, INPUT], 'fixed')[0]).numpy()
  raw = detector.run_network(pixels)
  n = int(raw['num_detections'][0])
  assert n > 0 and raw['detection_classes'][0, :n].max() <= len(COCO_IDS)
  assert _op_num_classes_and_score_width(coco_run['tflite']) == (len(COCO_IDS),
                                                                 len(COCO_IDS) + 1)
  metadata = detector.info
  assert metadata['dataset_ids'] == COCO_IDS and len(metadata['class_names']) == 80
  assert metadata['num_classes'] == len(COCO_IDS) + 1


def test_older_tflite_files_with_tail_outputs_load_and_never_return_minus_1(coco_run,
                                                                            tmp_path):
  """A file written before tail outputs were cut (op num_classes 90 for 80 ids,
  metadata version 1) still loads; its tail detections are dropped, not returned as
  dataset id -1."""
  loaded = coco_run['loaded']
  params, model = loaded.params, loaded.model
  post = tflite_convert.postprocess_config(params, num_real_classes=COCO_NUM_CLASSES - 1)
  graph = tflite_convert.TFLiteGraph(model, params.task.model.input_size,
                                     COCO_NUM_CLASSES, post)
  info = saved_model.detector_info(
      params, loaded.category_map, format=tflite_convert.METADATA_FORMAT, version=1,
      quantization='fp32', padded_size=[INPUT, INPUT], use_regular_nms=True)
  info['num_classes'] = COCO_NUM_CLASSES  # what such files said
  path = tmp_path / 'old.tflite'
  path.write_bytes(tflite_convert.add_metadata(tflite_convert.convert(graph, 'fp32'), info))
  assert _op_num_classes_and_score_width(str(path)) == (COCO_NUM_CLASSES - 1,
                                                        COCO_NUM_CLASSES)
  detector = tflite.TFLiteDetector(str(path))
  assert detector.num_threads == 1  # the LiteRT thread rule still sees 90 op classes
  pixels = serving_inputs.normalized_to_pixels(serving_inputs.prepare_image(
      tf.constant(coco_run['image']), [INPUT, INPUT], 'fixed')[0]).numpy()
  raw = detector.run_network(pixels)
  assert raw['detection_classes'][0, :int(raw['num_detections'][0])].max() > len(COCO_IDS)
  out = detector(coco_run['image'])
  n = int(out['num_detections'][0])
  assert set(out['detection_classes'][0, :n]) <= set(COCO_IDS)
