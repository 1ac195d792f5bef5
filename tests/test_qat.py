"""Quantization-aware training: `tools/train.py --experiment ssdlite_mnv2_shapes_qat`
fine-tunes a float checkpoint with fake-quantized layers, and `tools/export.py tflite
--quant int8` writes it as a full-integer TFLite detector whose ranges are the ones QAT
learned (no calibration images).

The float checkpoint is a tiny detector (64x64, multiplier 0.35) with the spread-out
weights of tests/detector_weights.py; QAT runs TRAIN_STEPS steps on a small shapes
split. The int8 file is compared with the QAT Keras model (fake quant, in TF) on the
val images at the post-process op's inputs (box codes, class scores) and at the
detections, with tolerances that are measured values with margin. That the ranges
are the learned ones is checked directly: every learned range is the scale of a
tensor of the int8 file.
"""

import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_optimization as tfmot
from ai_edge_litert.interpreter import OpResolverType

from mnv2_det.cli import export as export_cli
from mnv2_det.configs import qat as qat_cfg
from mnv2_det.core import loading
from mnv2_det.data import image_files
from mnv2_det.data import shapes
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_postprocess
from mnv2_det.inference import detector as detector_lib
from mnv2_det.modeling import qat
from mnv2_det.tasks import ssdlite_qat
from detector_weights import SHAPES_NUM_CLASSES, spread_detector, tiny_overrides

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = 'ssdlite_mnv2_shapes_qat'
INPUT = 64
MULTIPLIER = 0.35
NUM_TRAIN, NUM_VAL = 8, 6
TRAIN_STEPS = 3
# int8 TFLite vs the QAT Keras model at the op's inputs, over all anchors of the val
# images (measured: see test_int8_matches_qat_model's print).
MAX_MEAN_SCORE_DIFF = 0.01
MAX_P99_CODE_DIFF = 0.3
# A learned range's scale found among the int8 file's tensor scales: relative tolerance.
SCALE_RTOL = 1e-5
# Detections: each of the QAT model's top TOP_K per image matched to the int8
# detection of the same class with the highest IoU.
TOP_K = 5
MIN_MEDIAN_IOU = 0.9
MAX_MEDIAN_SCORE_DIFF = 0.02
# Ops of a full-integer detector that output float: the post-process op and the two
# DEQUANTIZE ops feeding it.
FLOAT_OPS = {'DEQUANTIZE': 2, tflite_postprocess.OP_NAME: 1}


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  root = tmp_path_factory.mktemp('qat')
  data = shapes.generate(str(root / 'data'), NUM_TRAIN, NUM_VAL, seed=7)
  overrides = tiny_overrides(str(root / 'data'), INPUT, MULTIPLIER)
  _, _, float_model = spread_detector(overrides)
  float_prefix = tf.train.Checkpoint(model=float_model).write(str(root / 'float' / 'ckpt-1'))
  qat_overrides = ','.join([
      overrides, f'task.quantization.pretrained_original_checkpoint={float_prefix}',
      'task.quantization.range_init_batches=1', 'task.train_data.global_batch_size=2',
      f'trainer.train_steps={TRAIN_STEPS}', f'trainer.steps_per_loop={TRAIN_STEPS}',
      f'trainer.summary_interval={TRAIN_STEPS}', f'trainer.checkpoint_interval={TRAIN_STEPS}',
      f'trainer.optimizer_config.learning_rate.cosine.decay_steps={TRAIN_STEPS}',
      'runtime.distribution_strategy=one_device', 'runtime.num_gpus=0'])
  model_dir = root / 'qat'
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '--experiment', EXPERIMENT,
       '--mode', 'train', '--model_dir', str(model_dir), '--params_override', qat_overrides],
      capture_output=True, text=True, timeout=1800,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-4000:]
  int8 = str(root / 'qat_int8.tflite')
  # No --experiment: the model dir's params.yaml (with task.quantization) says it.
  assert export_cli.main(['tflite', '--checkpoint', str(model_dir), '--quant', 'int8',
                          '--output', int8]) == 0
  loaded = loading.load_model(str(model_dir))
  return {'root': root, 'data': data, 'float_prefix': float_prefix, 'stderr': result.stderr,
          'int8': int8, 'loaded': loaded, 'model_dir': model_dir, 'overrides': overrides}


def _val_pixels(data):
  """`[1, INPUT, INPUT, 3]` float pixels of each val image, as TFLiteDetector feeds them."""
  folder = data['val_images']
  out = []
  for name in sorted(os.listdir(folder)):
    image = image_files.read_image(os.path.join(folder, name))
    prepared, _ = serving_inputs.prepare_image(tf.constant(image), [INPUT, INPUT], 'fixed')
    pixels = serving_inputs.normalized_to_pixels(prepared).numpy()
    out.append(np.clip(np.round(pixels), 0, 255)[np.newaxis])
  return out


def _op_inputs(path, pixels):
  """(box codes, class scores) the int8 file feeds its post-process op."""
  interpreter = tflite.litert_interpreter()(model_path=path,
                                            experimental_preserve_all_tensors=True)
  interpreter.allocate_tensors()
  (op,) = [d for d in interpreter._get_ops_details()  # pylint: disable=protected-access
           if d['op_name'] == tflite_postprocess.OP_NAME]
  interpreter.set_tensor(interpreter.get_input_details()[0]['index'],
                         pixels.astype(np.uint8))
  interpreter.invoke()
  return interpreter.get_tensor(op['inputs'][0]), interpreter.get_tensor(op['inputs'][1])


def _graph(loaded, model, quantization_aware):
  post = tflite_convert.postprocess_config(loaded.params, num_real_classes=5)
  return tflite_convert.TFLiteGraph(model, [INPUT, INPUT], SHAPES_NUM_CLASSES, post,
                                    quantization_aware=quantization_aware)


def _diffs(reference, other):
  codes = np.concatenate([np.abs(a[0] - b[0]).ravel() for a, b in zip(reference, other)])
  scores = np.concatenate([np.abs(a[1] - b[1]).ravel() for a, b in zip(reference, other)])
  return float(np.mean(scores)), float(np.percentile(codes, 99))


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_train_fine_tunes_the_float_checkpoint_with_qat(run):
  loaded = run['loaded']
  assert isinstance(loaded.task, ssdlite_qat.SSDLiteQATTask)
  assert qat.is_quantized(loaded.model)
  assert loaded.params.task.quantization.pretrained_original_checkpoint == run['float_prefix']
  assert f'QAT: float weights from {run["float_prefix"]}' in run['stderr']
  assert 'activation ranges from 1 training batches' in run['stderr']
  assert loaded.checkpoint.endswith(f'ckpt-{TRAIN_STEPS}')
  # The ranges were set (range init + training), none is tfmot's initial [-6, 6]. (A
  # ReLU6 output may well end at max 6: its min is then 0.)
  ranges = _learned_ranges(loaded.model)
  assert len(ranges) > 50
  assert not any(np.allclose(r, (-6.0, 6.0)) for r in ranges.values()), ranges


def _learned_ranges(model):
  """{layer name: (min, max)} of every learned activation range of a QAT detector."""
  out = {}
  for part in (model.backbone, model.feature_maps, model.head):
    for layer in part.layers:
      variables = getattr(layer, '_output_quantizer_vars', None)  # pylint: disable=protected-access
      if isinstance(layer, tfmot.quantization.keras.QuantizeWrapper) and variables:
        out[layer.layer.name] = (float(variables['min_var'].numpy()),
                                 float(variables['max_var'].numpy()))
  return out


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_int8_is_full_integer_without_calibration(run):
  # Without XNNPACK, which would show its delegated part as one float DELEGATE op.
  interpreter = tflite.litert_interpreter()(
      model_path=run['int8'],
      experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
  interpreter.allocate_tensors()
  float_ops = {}
  for op in interpreter._get_ops_details():  # pylint: disable=protected-access
    dtypes = {interpreter._get_tensor_details(t, 0)['dtype'] for t in op['outputs']}  # pylint: disable=protected-access
    if not dtypes <= {np.int8, np.uint8, np.int32}:
      float_ops[op['op_name']] = float_ops.get(op['op_name'], 0) + 1
  assert float_ops == FLOAT_OPS
  (image,) = interpreter.get_input_details()
  assert image['dtype'] == np.uint8 and image['quantization'] == (1.0, 0)
  detector = tflite.TFLiteDetector(run['int8'])
  assert detector.info['quantization'] == 'int8'
  assert detector.info['quantization_aware_training'] is True
  assert detector.info['calibration'] == {'source': export_cli.CALIBRATION_QAT,
                                          'num_images': 0}


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_int8_matches_qat_model(run):
  loaded = run['loaded']
  pixels = _val_pixels(run['data'])
  qat_graph = _graph(loaded, loaded.model, quantization_aware=True)
  reference = [[t.numpy() for t in qat_graph.raw_outputs(tf.constant(p))] for p in pixels]
  int8 = [_op_inputs(run['int8'], p) for p in pixels]
  int8_score, int8_code = _diffs(reference, int8)
  print(f'int8 vs the QAT Keras model: mean |score diff| {int8_score:.5f}, p99 |code '
        f'diff| {int8_code:.4f}')
  assert int8_score <= MAX_MEAN_SCORE_DIFF and int8_code <= MAX_P99_CODE_DIFF


def _tensor_scales(path):
  """Scales of the per-tensor quantized (u)int8 tensors of a .tflite file."""
  interpreter = tflite.litert_interpreter()(model_path=path)
  return np.array([float(d['quantization_parameters']['scales'][0])
                   for d in interpreter.get_tensor_details()
                   if d['dtype'] in (np.int8, np.uint8)
                   and len(d['quantization_parameters']['scales']) == 1])


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_int8_takes_every_activation_range_from_training(run):
  """Each range QAT learned, (max - min) / 255, is the scale of a tensor of the int8
  file (measured: all 86 of 86, to 1e-5). Ranges moved by 1% are not found: the
  match is not a coincidence of the tolerance. A calibrated export would have
  scales of its representative images' ranges instead."""
  scales = _tensor_scales(run['int8'])
  ranges = _learned_ranges(run['loaded'].model)
  def found(factor):
    return sum(bool(np.any(np.abs(scales - s) <= SCALE_RTOL * s))
               for s in ((hi - lo) * factor / 255.0 for lo, hi in ranges.values()))
  assert len(ranges) > 50
  assert found(1.0) == len(ranges), (found(1.0), len(ranges))
  assert found(1.01) <= len(ranges) // 10


def _iou(box, boxes):
  """IoU of one `[ymin, xmin, ymax, xmax]` box with `[N, 4]` boxes."""
  y0 = np.maximum(box[0], boxes[:, 0])
  x0 = np.maximum(box[1], boxes[:, 1])
  y1 = np.minimum(box[2], boxes[:, 2])
  x1 = np.minimum(box[3], boxes[:, 3])
  inter = np.clip(y1 - y0, 0, None) * np.clip(x1 - x0, 0, None)
  area = lambda b: (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
  return inter / np.maximum(area(box) + area(boxes) - inter, 1e-12)


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_int8_detections_agree_with_qat_model(run):
  keras = detector_lib.from_loaded(run['loaded'])
  int8 = detector_lib.load_detector(run['int8'])
  folder = run['data']['val_images']
  ious, score_diffs = [], []
  for name in sorted(os.listdir(folder)):
    image = image_files.read_image(os.path.join(folder, name))
    want, got = keras(image), int8(image)
    n = int(got['num_detections'][0])
    for k in range(min(TOP_K, int(want['num_detections'][0]))):
      same = got['detection_classes'][0, :n] == want['detection_classes'][0, k]
      if not same.any():
        ious.append(0.0)
        continue
      overlap = _iou(want['detection_boxes'][0, k], got['detection_boxes'][0, :n][same])
      best = int(np.argmax(overlap))
      ious.append(float(overlap[best]))
      score_diffs.append(abs(float(got['detection_scores'][0, :n][same][best]) -
                             float(want['detection_scores'][0, k])))
  print(f'int8 vs QAT model detections: median IoU {np.median(ious):.3f}, median |score '
        f'diff| {np.median(score_diffs):.4f} over {len(ious)}')
  assert len(ious) == TOP_K * NUM_VAL
  assert np.median(ious) >= MIN_MEDIAN_IOU
  assert np.median(score_diffs) <= MAX_MEDIAN_SCORE_DIFF


@pytest.mark.slow  # tools/train.py subprocess (the `run` fixture)
def test_qat_export_refuses_float_and_calibration(run, capsys):
  loaded = run['loaded']
  with pytest.raises(ValueError, match='exports as int8, not fp32'):
    tflite_convert.export_tflite(loaded.params, loaded.model, loaded.category_map,
                                 str(run['root'] / 'fp32.tflite'), 'fp32')
  rc = export_cli.main(['tflite', '--experiment', EXPERIMENT, '--checkpoint',
                        str(run['model_dir']), '--quant', 'int8', '--representative_images',
                        '4', '--output', str(run['root'] / 'calibrated.tflite')])
  assert rc == 2
  assert 'quantization-aware trained model' in capsys.readouterr().err
  assert not os.path.exists(run['root'] / 'calibrated.tflite')


@pytest.mark.parametrize('field, value, message', [
    ('version', 'v3', "version must be 'v2'"),
    ('change_num_bits', True, 'change_num_bits must be false'),
    ('quantize_detection_head', False, 'quantize_detection_head must be true'),
    ('range_init_batches', -1, 'range_init_batches must be >= 0'),
])
def test_unsupported_quantization_fields_are_named(field, value, message):
  quantization = qat_cfg.Quantization(**{field: value})
  with pytest.raises(ValueError, match=f'task.quantization.{message}'):
    ssdlite_qat.check_quantization(quantization)


def test_fresh_qat_run_needs_the_float_checkpoint(tmp_path):
  params = qat_cfg.ssdlite_mnv2_shapes_qat()
  params.override({'task': {'quantization': {
      'pretrained_original_checkpoint': str(tmp_path / 'missing')}}})
  task = ssdlite_qat.SSDLiteQATTask(params.task)
  with pytest.raises(ValueError, match='missing.*does not exist: QAT fine-tunes a trained'):
    task.initialize(model=None)
