"""`tools/export.py tflite --preset mobile` (issue #12): fast NMS, 10 detections, score
threshold 0.3, safe at any interpreter thread count; --max_detections /
--score_threshold override it. The tiny spread-weights shapes detector (128x128)."""

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.cli import export as cli
from mnv2_det.export import edgetpu
from mnv2_det.export import tflite
from mnv2_det.export import tflite_metadata
from mnv2_det.export import tflite_presets
from mnv2_det.core import errors
from detector_weights import spread_detector, tiny_overrides, smooth_image
import tflite_metadata_checks as checks

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 128


def _image(seed, hw=(150, 210)):
  return smooth_image(seed, hw)


@pytest.fixture(scope='module')
def exports(tmp_path_factory, shapes_data):
  data_dir = shapes_data(num_train=6, num_val=2, seed=5)['dir']
  override = tiny_overrides(data_dir, INPUT)
  _, _, model = spread_detector(override)
  out = tmp_path_factory.mktemp('out')
  prefix = tf.train.Checkpoint(model=model).write(str(out / 'ckpt-1'))
  common = ['tflite', '--experiment', EXPERIMENT, '--checkpoint', prefix,
            '--params_override', override]
  paths = {}
  for name, flags in (('default', []),
                      ('mobile_int8', ['--preset', 'mobile', '--quant', 'int8',
                                       '--representative_images', '4']),
                      ('custom', ['--preset', 'mobile', '--max_detections', '100',
                                  '--score_threshold', '0.5'])):
    paths[name] = str(out / f'{name}.tflite')
    assert cli.main(common + flags + ['--output', paths[name]]) == 0
  return dict(paths=paths, common=common, out=out)


def _op(path):
  return tflite_metadata.postprocess_op_options(flatbuffer_utils.read_model(path))


def _run(path, image, threads):
  detector = tflite.TFLiteDetector(path, num_threads=threads)
  return detector, detector(image)


def test_mobile_preset_outputs_and_settings(exports):
  path = exports['paths']['mobile_int8']
  options = _op(path)
  assert options['use_regular_nms'] == 0 and options['max_detections'] == 10
  assert options['nms_score_threshold'] == pytest.approx(0.3)
  interpreter = Interpreter(model_path=path)
  runner = interpreter.get_signature_runner()
  assert len(interpreter.get_output_details()) == 4
  detector, _ = _run(path, _image(0), 1)
  pixels = np.zeros([1, INPUT, INPUT, 3], np.uint8)
  raw = runner(images=pixels)
  assert raw['detection_boxes'].shape == (1, 10, 4)
  assert raw['detection_classes'].shape == raw['detection_scores'].shape == (1, 10)
  assert raw['num_detections'].shape == (1,)
  info = detector.info
  assert info['preset'] == 'mobile' and not info['use_regular_nms']
  assert info['max_num_detections'] == 10 and info['score_threshold'] == pytest.approx(0.3)
  assert info['num_threads'] == tflite_presets.MOBILE_NUM_THREADS
  assert 'Any number of interpreter threads' in tflite_metadata.read_standard_metadata(
      open(path, 'rb').read())['description']
  checks.check_output_order(path)


def test_mobile_preset_max_detections_threshold_and_threads(exports):
  path = exports['paths']['mobile_int8']
  for seed in range(3):
    image = _image(seed)
    one, out1 = _run(path, image, 1)
    two, out2 = _run(path, image, 2)
    # Fast NMS is single-threaded inside the op: no #56058 fallback, same detections.
    assert one.num_threads == 1 and two.num_threads == 2
    for key in out1:
      np.testing.assert_array_equal(out1[key], out2[key])
    n = int(out2['num_detections'][0])
    assert 0 < n <= 10 and out2['detection_boxes'].shape == (1, 10, 4)
    assert (out2['detection_scores'][0, :n] > 0.3).all()


def test_overrides_and_the_threshold_is_respected(exports):
  image = _image(1)
  _, default = _run(exports['paths']['default'], image, 1)
  _, custom = _run(exports['paths']['custom'], image, 2)
  n_default = int(default['num_detections'][0])
  assert (default['detection_scores'][0, :n_default] <= 0.5).any()  # the threshold bites
  n = int(custom['num_detections'][0])
  assert custom['detection_boxes'].shape == (1, 100, 4)
  assert 0 < n < 100 and (custom['detection_scores'][0, :n] > 0.5).all()
  # The op's fast NMS leaves rows past num_detections unwritten (stale floats such as
  # 2.35e37); TFLiteDetector.run_network zeroes them.
  detector = tflite.TFLiteDetector(exports['paths']['custom'])
  raw = detector.run_network(np.full([INPUT, INPUT, 3], 100.0, np.float32))
  m = int(raw['num_detections'][0])
  assert m < 100
  assert not raw['detection_scores'][0, m:].any() and not raw['detection_boxes'][0, m:].any()
  assert (raw['detection_classes'][0, m:] == tflite.OP_CLASS_OFFSET).all()
  options = _op(exports['paths']['custom'])
  assert options['max_detections'] == 100 and options['use_regular_nms'] == 0
  default_options = _op(exports['paths']['default'])
  assert default_options['use_regular_nms'] == 1 and default_options['max_detections'] == 100
  assert tflite.TFLiteDetector(exports['paths']['default']).info['num_threads'] == 1


@pytest.mark.parametrize('flags, message', [
    (['--preset', 'mobile', '--max_detections', '0'], 'max_detections must be >= 1'),
    (['--score_threshold', '1.5'], 'score_threshold must be in [0, 1)'),
])
def test_bad_preset_values_are_one_error(exports, flags, message, capsys):
  output = str(exports['out'] / 'bad.tflite')
  assert cli.main(exports['common'] + flags + ['--output', output]) == (
      errors.ERROR_EXIT_CODE)
  assert message in capsys.readouterr().err


def test_int8_graph_is_edgetpu_ready_on_paper(exports):
  """docs/edgetpu.md: every op of the int8 graph but the two DEQUANTIZEs and the
  post-process op is in the Edge TPU compiler's table, and all of them come first."""
  report = edgetpu.report(exports['paths']['mobile_int8'])
  assert [name for _, name in report['cpu_ops']] == [
      'DEQUANTIZE', 'DEQUANTIZE', 'TFLite_Detection_PostProcess']
  assert set(report['counts']) - edgetpu.EDGETPU_OPS == {
      'DEQUANTIZE', 'TFLite_Detection_PostProcess'}
  assert report['counts']['CONV_2D'] > 40 and report['counts']['DEPTHWISE_CONV_2D'] > 25
  # A float model keeps the converter's order.
  model = flatbuffer_utils.read_model(exports['paths']['default'])
  assert edgetpu.mappable_ops_first(model) == 0
