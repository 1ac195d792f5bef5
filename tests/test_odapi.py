"""OD API import: an imported model computes what the OD API's own code computed.

Fixtures (tests/fixtures/odapi, made by generate_fixtures.py with the OD API v2.8 TF1
code on random He-scaled weights with non-trivial BN statistics): SSDLite-MobileNetV2
(depth 0.35, 6 classes) at 300x300 (1917 anchors, no padding) and 320x320 (2034), with
hard-example mining, with focal loss, and with EMA shadows.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import yaml
from PIL import Image

import mnv2_det  # pylint: disable=unused-import
from mnv2_det import odapi
from mnv2_det.odapi import importer
from mnv2_det.odapi import label_map

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURES = os.path.join(ROOT, 'tests', 'fixtures', 'odapi')
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import import_odapi  # pylint: disable=g-import-not-at-top,wrong-import-position

RAW_ATOL = 1e-4
BOX_ATOL_PX = 0.05
SCORE_ATOL = 1e-5
LOSS_RTOL = 1e-4


def _case(name):
  return os.path.join(FIXTURES, name)


def _expected(name):
  return dict(np.load(os.path.join(_case(name), 'expected.npz')))


@pytest.fixture(scope='module')
def imported(tmp_path_factory):
  """{case: model_dir} imported through tools/import_odapi.py's main."""
  root = tmp_path_factory.mktemp('odapi')
  dirs = {}
  for name in ('ssdlite_300', 'ssdlite_320', 'ssdlite_300_focal', 'ssdlite_300_ema'):
    out = str(root / name)
    assert import_odapi.main([
        '--pipeline_config', os.path.join(_case(name), 'pipeline.config'),
        '--checkpoint', os.path.join(_case(name), 'model.ckpt'), '--model_dir', out]) == 0
    dirs[name] = out
  return dirs


@pytest.mark.parametrize('name', ['ssdlite_300', 'ssdlite_320', 'ssdlite_300_ema'])
def test_raw_outputs_match_odapi(imported, name):
  expected = _expected(name)
  out = odapi.raw_predictions(imported[name], expected['images'])
  # Fixtures are not degenerate: the two images give different outputs.
  logits = expected['class_predictions_with_background']
  assert np.abs(logits[0] - logits[1]).max() > 0.5
  np.testing.assert_allclose(out['box_encodings'], expected['box_encodings'], atol=RAW_ATOL)
  np.testing.assert_allclose(out['class_predictions_with_background'], logits, atol=RAW_ATOL)
  with open(os.path.join(imported[name], importer.REPORT_FILE)) as f:
    report = json.load(f)
  assert report['num_anchors'] == expected['anchors'].shape[0]
  assert report['ema'] == name.endswith('_ema')


def test_raw_weights_instead_of_ema_shadows(tmp_path):
  name = 'ssdlite_300_ema'
  out = str(tmp_path / 'raw')
  assert import_odapi.main([
      '--pipeline_config', os.path.join(_case(name), 'pipeline.config'),
      '--checkpoint', os.path.join(_case(name), 'model.ckpt'), '--model_dir', out,
      '--no_ema']) == 0
  expected = _expected(name)
  raw = odapi.raw_predictions(out, expected['images'])
  assert np.abs(raw['box_encodings'] - expected['box_encodings']).max() > 1e-2


@pytest.mark.parametrize('name', ['ssdlite_300', 'ssdlite_320', 'ssdlite_300_focal'])
def test_ssd_losses_match_odapi(imported, name):
  expected = _expected(name)
  losses = odapi.ssd_losses(imported[name], expected['images'], expected['gt_boxes'],
                            expected['gt_classes'])
  for key in ('localization_loss', 'classification_loss'):
    np.testing.assert_allclose(losses[key], float(expected[key]), rtol=LOSS_RTOL)


@pytest.mark.parametrize('name', ['ssdlite_300', 'ssdlite_320'])
def test_predict_tool_matches_odapi_postprocess(imported, name, tmp_path):
  expected = _expected(name)
  images = expected['images']
  paths = []
  for i, image in enumerate(images):
    path = tmp_path / f'{i}.png'
    Image.fromarray(image).save(path)
    paths.append(str(path))
  out = tmp_path / 'out'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'predict.py'), '--model',
       imported[name], '--experiment', 'ssdlite_mnv2_coco', '--output', str(out),
       '--score_threshold', '0', *paths],
      capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  with open(out / 'detections.json') as f:
    detections = json.load(f)
  size = images.shape[1]
  for i in range(len(images)):
    ours = sorted((d for d in detections if d['image_id'] == _image_id(out, paths[i])),
                  key=lambda d: -d['score'])
    n = int(expected['num_detections'][i])
    assert len(ours) == n
    boxes = expected['detection_boxes'][i, :n] * size  # yxyx pixels (image = input)
    theirs = np.concatenate([boxes[:, [1, 0]], boxes[:, [3, 2]] - boxes[:, [1, 0]]], axis=1)
    np.testing.assert_allclose([d['score'] for d in ours], expected['detection_scores'][i, :n],
                               atol=SCORE_ATOL)
    np.testing.assert_allclose([d['bbox'] for d in ours], theirs, atol=BOX_ATOL_PX)
    # OD API classes are 0-based; the imported table maps index == label id.
    assert [d['category_id'] for d in ours] == (
        expected['detection_classes'][i, :n].astype(int) + 1).tolist()


def _image_id(out_dir, path):
  """The image id predict.py gave `path` (its images.json / detections order)."""
  with open(out_dir / 'images.json') as f:
    images = json.load(f)
  return next(i['id'] for i in images if os.path.abspath(i['file_name']) == path or
              os.path.basename(i['file_name']) == os.path.basename(path))


def test_translation_reproduces_committed_yaml():
  config = os.path.join(FIXTURES, 'ssdlite_mobilenet_v2_coco.config')
  params, not_used = importer.read_pipeline(config)
  text = importer.experiment_yaml(params, config)
  with open(os.path.join(ROOT, 'configs', 'odapi', 'ssdlite_mobilenet_v2_coco.yaml')) as f:
    committed = f.read()
  assert yaml.safe_load(text) == yaml.safe_load(committed)
  model = params.task.model
  assert model.num_classes == 91 and list(model.input_size) == [300, 300, 3]
  assert model.backbone.mnv2_det.pad_to_multiple == 1
  assert model.detection_generator.pre_nms_top_k == 1917 * 90
  assert 'train_config.fine_tune_checkpoint' in not_used


def _one_error(capsys, argv):
  assert import_odapi.main(argv) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: '), err
  return err[0]


def _edited_config(tmp_path, old, new):
  with open(os.path.join(_case('ssdlite_300'), 'pipeline.config')) as f:
    text = f.read()
  assert old in text
  path = tmp_path / 'pipeline.config'
  path.write_text(text.replace(old, new, 1))
  return str(path)


def _argv(config, tmp_path, checkpoint=None, extra=()):
  return ['--pipeline_config', config, '--checkpoint',
          checkpoint or os.path.join(_case('ssdlite_300'), 'model.ckpt'),
          '--model_dir', str(tmp_path / 'out'), *extra]


def test_unsupported_meta_architecture(tmp_path, capsys):
  config = tmp_path / 'frcnn.config'
  config.write_text('model { faster_rcnn { num_classes: 3 } }')
  line = _one_error(capsys, _argv(str(config), tmp_path))
  assert 'faster_rcnn' in line and 'meta-architecture' in line
  assert not (tmp_path / 'out').exists()


def test_unsupported_feature_extractor(tmp_path, capsys):
  config = _edited_config(tmp_path, 'type: "ssd_mobilenet_v2"', 'type: "ssd_resnet50_v1_fpn"')
  line = _one_error(capsys, _argv(config, tmp_path))
  assert 'feature_extractor.type' in line and 'ssd_resnet50_v1_fpn' in line


def test_unsupported_value_names_field(tmp_path, capsys):
  config = _edited_config(tmp_path, 'score_converter: SIGMOID', 'score_converter: SOFTMAX')
  line = _one_error(capsys, _argv(config, tmp_path))
  assert 'score_converter' in line and 'SOFTMAX' in line


def test_missing_variable(tmp_path, capsys):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  reader = tf.train.load_checkpoint(os.path.join(_case('ssdlite_300'), 'model.ckpt'))
  dropped = 'BoxPredictor_3/ClassPredictor/biases'
  variables = {k: reader.get_tensor(k)
               for k in reader.get_variable_to_shape_map() if k != dropped}
  prefix = str(tmp_path / 'partial' / 'model.ckpt')
  _write_tf1(variables, prefix)
  line = _one_error(capsys, _argv(os.path.join(_case('ssdlite_300'), 'pipeline.config'),
                                  tmp_path, checkpoint=prefix))
  assert dropped in line


def _write_tf1(variables, prefix):
  """A name-keyed checkpoint (TF1 layout) of `{name: numpy value}`."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  os.makedirs(os.path.dirname(prefix), exist_ok=True)
  with tf.compat.v1.Graph().as_default():
    tf1_vars = {k: tf.compat.v1.Variable(v, name=k.replace('/', '_'))
                for k, v in variables.items()}
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer())
      tf.compat.v1.train.Saver(tf1_vars).save(sess, prefix, write_meta_graph=False)


def test_wrong_shape(tmp_path, capsys):
  config = _edited_config(tmp_path, 'num_classes: 6', 'num_classes: 8')
  line = _one_error(capsys, _argv(config, tmp_path))
  assert 'ClassPredictor' in line and 'shape' in line


def test_label_map_duplicate_ids(tmp_path, capsys):
  path = tmp_path / 'label_map.pbtxt'
  path.write_text('item { id: 1 name: "a" }\nitem { id: 2 name: "b" }\n'
                  'item { id: 2 name: "c" }\n')
  line = _one_error(capsys, _argv(os.path.join(_case('ssdlite_300'), 'pipeline.config'),
                                  tmp_path, extra=['--label_map', str(path)]))
  assert 'duplicate id 2' in line and str(path) in line


def test_label_map_names_fill_the_table(tmp_path):
  path = tmp_path / 'label_map.pbtxt'
  path.write_text('item { id: 1 name: "/m/01" display_name: "cat" }\n'
                  'item { name: "dog" id: 4 }\n')
  table = label_map.category_table(6, str(path))
  assert [c['id'] for c in table] == [1, 2, 3, 4, 5, 6]
  assert table[0]['name'] == 'cat' and table[3]['name'] == 'dog'
  assert table[1]['name'] == 'class_2'
  coco = label_map.category_table(90)
  assert len(coco) == 90 and coco[0]['name'] == 'person' and coco[89]['name'] == 'toothbrush'


def test_imported_model_exports_int8_that_agrees_with_float(imported, tmp_path):
  from mnv2_det.export import tflite  # pylint: disable=g-import-not-at-top
  from mnv2_det.export import tflite_convert  # pylint: disable=g-import-not-at-top
  from mnv2_det.core import checkpoints  # pylint: disable=g-import-not-at-top
  from mnv2_det.core import loading
  from mnv2_det.core import params as params_lib
  expected = _expected('ssdlite_300')
  prefix, params_file = checkpoints.resolve_checkpoint(imported['ssdlite_300'])
  params = params_lib.build_params('ssdlite_mnv2_coco', params_file)
  task, model = loading.load_task_and_model(params, prefix)
  rng = np.random.default_rng(0)
  representative = [expected['images'][i:i + 1].astype(np.float32) for i in range(2)] + [
      rng.uniform(0, 255, [1, 300, 300, 3]).astype(np.float32) for _ in range(6)]
  results = {}
  for quant in ('fp32', 'int8'):
    path = tflite_convert.export_tflite(
        params, model, task.category_map, str(tmp_path / f'{quant}.tflite'), quant,
        representative=representative if quant == 'int8' else None)
    results[quant] = tflite.TFLiteDetector(path)(expected['images'][0])
  # fp32 TFLite = the OD API's top detection; int8 keeps it (class, box, score).
  top = expected['detection_boxes'][0, 0] * 300
  for quant, tol_px, tol_score in (('fp32', 0.05, 1e-4), ('int8', 6.0, 0.03)):
    out = results[quant]
    assert int(out['detection_classes'][0, 0]) == int(expected['detection_classes'][0, 0]) + 1
    np.testing.assert_allclose(out['detection_boxes'][0, 0], top, atol=tol_px)
    np.testing.assert_allclose(out['detection_scores'][0, 0],
                               expected['detection_scores'][0, 0], atol=tol_score)


def test_fine_tune_imported_model_with_new_class_count(imported, tmp_path):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from mnv2_det.data import shapes  # pylint: disable=g-import-not-at-top
  data = tmp_path / 'data'
  shapes.generate(str(data), num_train=8, num_val=4, seed=2)
  source = imported['ssdlite_300']
  model_dir = tmp_path / 'fine_tuned'
  overrides = ','.join([
      f'task.init_checkpoint={source}', 'task.init_checkpoint_modules=all',
      'task.model.num_classes=6',  # the shapes set's 5 categories + background
      f'task.train_data.annotation_file={data}/annotations/instances_train.json',
      f'task.train_data.image_dir={data}/train', 'task.train_data.global_batch_size=2',
      # The same 4 images every run (seeded order, no random crop / flip): how far the
      # BN moving statistics move depends on the batches, and unseeded batches moved one
      # variance by 0.0118 in one CI run of ~10.
      'task.train_data.seed=1', 'task.train_data.parser.aug_random_flip=false',
      'task.train_data.parser.aug_ssd_random_crop=false',
      f'task.validation_data.annotation_file={data}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data}/val', 'task.validation_data.global_batch_size=2',
      'trainer.train_steps=2', 'trainer.steps_per_loop=1', 'trainer.checkpoint_interval=2',
      'trainer.summary_interval=1', 'trainer.validation_interval=2',
      'trainer.optimizer_config.learning_rate.exponential.initial_learning_rate=1e-9',
      'runtime.distribution_strategy=one_device', 'runtime.num_gpus=0'])
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '--experiment',
       'ssdlite_mnv2_coco', '--config_file', os.path.join(source, 'params.yaml'),
       '--mode', 'train', '--model_dir', str(model_dir), '--params_override', overrides],
      capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  from mnv2_det.core import checkpoints  # pylint: disable=g-import-not-at-top

  def tensors(prefix, part):
    """{object path: value} of the model variables under `part` (a path prefix)."""
    reader = tf.train.load_checkpoint(prefix)
    return {'/'.join(path): reader.get_tensor(key)
            for path, key in checkpoints.model_variable_keys(prefix).items()
            if '/'.join(path).startswith(part)}

  before = tf.train.latest_checkpoint(source)
  after = tf.train.latest_checkpoint(str(model_dir))
  # The box predictor, backbone and feature maps keep the imported weights (lr ~0);
  # the class predictors (7 -> 6 classes per anchor) start fresh in the new shape.
  # Object paths: head/_branches/<level>/<0 class | 1 box>/<3 = the 1x1 predictor>.
  for part in ('head/_branches/4/1/3/', 'backbone/', 'feature_maps/'):
    old, new = tensors(before, part), tensors(after, part)
    assert old and set(old) == set(new), part
    for key in old:
      # BN moving statistics move a little in 2 training-mode steps (momentum 0.9997).
      atol = 1e-2 if 'moving_' in key else 1e-5
      np.testing.assert_allclose(new[key], old[key], atol=atol, err_msg=key)
  cls_part = 'head/_branches/4/0/3/kernel'
  old_cls, new_cls = tensors(before, cls_part), tensors(after, cls_part)
  assert old_cls and all(v.shape[-1] == 3 * 7 for v in old_cls.values())
  assert new_cls and all(v.shape[-1] == 3 * 6 for v in new_cls.values())
