"""Standard TFLite Model Metadata in exported .tflite files (issue #12, part 1).

Every field the clients need, read back with `tflite_metadata.read_standard_metadata`
(test_mediapipe reads the same with MediaPipe's schema bindings), the label file of the
shapes model and of a 91-output COCO model (80 categories, ids 1..90), padding of
unnamed op classes, the output order and that our own JSON entry and
`TFLiteDetector` still work on the zip-appended file.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_metadata
from detector_weights import spread_detector, tiny_overrides
import tflite_metadata_checks as checks

INPUT = 96
SHAPES_NAMES = ['circle', 'square', 'triangle', 'cross', 'star']  # ids 1, 3, 7, 9, 12
COCO_GAPS = (12, 26, 29, 30, 45, 66, 68, 69, 71, 83)
COCO_IDS = [i for i in range(1, 91) if i not in COCO_GAPS]
COCO_NUM_CLASSES = 91


@pytest.fixture(scope='module')
def data_dir(shapes_data):
  return shapes_data(num_train=4, num_val=2, seed=3)['dir']


@pytest.fixture(scope='module')
def shapes_fp16(data_dir, tmp_path_factory):
  params, task, model = spread_detector(tiny_overrides(data_dir, INPUT))
  path = str(tmp_path_factory.mktemp('fp16') / 'fp16.tflite')
  return tflite_convert.export_tflite(params, model, task.category_map, path, 'fp16',
                                      experiment='ssdlite_mnv2_shapes')


def _read(path):
  with open(path, 'rb') as f:
    return f.read()


def test_every_field_of_the_standard_metadata(shapes_fp16):
  contents = _read(shapes_fp16)
  md = tflite_metadata.read_standard_metadata(contents)
  assert md['name'] == 'mnv2_det ssdlite_mnv2_shapes (fp16)'
  assert 'SSDLite' in md['description'] and '5 classes' in md['description']
  assert f'{INPUT}x{INPUT}' in md['description']
  assert md['min_parser_version'] == '1.0.0' and md['version'].startswith('mnv2_det')
  assert len(md['subgraph_metadata']) == 1
  sub = md['subgraph_metadata'][0]
  # fp16 keeps a float32 input: raw pixels, so NormalizationOptions mean 0, std 1.
  checks.check_tensors(sub['input_tensor_metadata'], sub['output_tensor_metadata'],
                       input_is_float=True)
  image = sub['input_tensor_metadata'][0]
  assert image['content']['default_size'] == [INPUT, INPUT]
  assert sub['output_tensor_groups'] == [{'name': 'detection_result',
                                          'tensor_names': checks.OUTPUT_NAMES[:3]}]
  location, category, score, _ = sub['output_tensor_metadata']
  for tensor in (location, category, score):
    assert tensor['content']['range'] == [2, 2]
  assert md['files'] == {checks.LABEL_FILE: ('\n'.join(SHAPES_NAMES) + '\n').encode()}
  assert checks.label_lines(shapes_fp16) == SHAPES_NAMES
  checks.check_output_order(shapes_fp16)


def test_our_json_entry_and_detector_still_work(shapes_fp16):
  contents = _read(shapes_fp16)
  info = tflite.read_detector_metadata(shapes_fp16, contents)
  assert info['class_names'] == SHAPES_NAMES and info['quantization'] == 'fp16'
  # The label file is appended after the flatbuffer, not inside it.
  assert contents.index(b'PK\x03\x04') > len(contents) // 2
  detector = tflite.TFLiteDetector(shapes_fp16, num_threads=1)
  image = np.full([INPUT + 10, INPUT, 3], 100, np.uint8)
  image[20:60, 30:70] = 250
  out = detector(image)
  assert out['num_detections'][0] > 0 and out['detection_boxes'].shape == (1, 100, 4)


def test_unnamed_op_classes_are_padded(shapes_fp16):
  """An op with more classes than names gets PAD_LABEL lines, never a short file."""
  contents = tflite_metadata.add_standard_metadata(
      _read(shapes_fp16), SHAPES_NAMES[:3], name='n', description='d', version='v')
  lines = tflite_metadata.associated_files(contents)[checks.LABEL_FILE].decode()
  assert lines.split('\n')[:-1] == SHAPES_NAMES[:3] + ['???', '???']
  # Written twice: still one TFLITE_METADATA entry and one label file.
  md = tflite_metadata.read_standard_metadata(contents)
  assert list(md['files']) == [checks.LABEL_FILE]
  with pytest.raises(ValueError, match='6 class names for an op with 5 classes'):
    tflite_metadata.add_standard_metadata(_read(shapes_fp16), SHAPES_NAMES + ['x'],
                                          name='n', description='d', version='v')


def test_label_lines():
  assert tflite_metadata.label_lines(['a', 'b c'], 3) == ['a', 'b c', '???']
  for bad in ([''], ['a\nb']):
    with pytest.raises(ValueError, match='label file line'):
      tflite_metadata.label_lines(bad, 2)


def test_no_standard_metadata_is_one_error():
  with pytest.raises(ValueError, match='no TFLITE_METADATA'):
    tflite_metadata.read_standard_metadata(tflite_metadata.append_files(
        _minimal_model(), {}))


def _minimal_model():
  fn = tf.function(lambda x: x + 1.0).get_concrete_function(tf.TensorSpec([1], tf.float32))
  return tf.lite.TFLiteConverter.from_concrete_functions([fn]).convert()


def _write_coco_style(data_dir, out_dir):
  """The shapes annotations with COCO's 80 category ids (names with spaces)."""
  to_coco = {1: 1, 3: 3, 7: 7, 9: 9, 12: 90}
  paths = {}
  for split in ('train', 'val'):
    with open(os.path.join(data_dir, 'annotations', f'instances_{split}.json'),
              encoding='utf-8') as f:
      coco = json.load(f)
    coco['categories'] = [{'id': i, 'name': f'category {i}'} for i in COCO_IDS]
    for ann in coco['annotations']:
      ann['category_id'] = to_coco[ann['category_id']]
    paths[split] = os.path.join(out_dir, f'{split}.json')
    with open(paths[split], 'w', encoding='utf-8') as f:
      json.dump(coco, f)
  return ','.join([tiny_overrides(data_dir, INPUT),
                   f'task.train_data.annotation_file={paths["train"]}',
                   f'task.validation_data.annotation_file={paths["val"]}',
                   f'task.model.num_classes={COCO_NUM_CLASSES}'])


def test_coco_91_output_model_label_file(data_dir, tmp_path):
  override = _write_coco_style(data_dir, str(tmp_path))
  params, task, model = spread_detector(override, COCO_NUM_CLASSES)
  assert params.task.model.num_classes == COCO_NUM_CLASSES
  path = tflite_convert.export_tflite(params, model, task.category_map,
                                      str(tmp_path / 'coco.tflite'), 'fp32')
  lines = checks.label_lines(path)
  # One line per class the op emits (the 80 categories in id order), none for
  # background or the head's 10 outputs without a category.
  assert lines == [f'category {i}' for i in COCO_IDS]
  contents = _read(path)
  options = tflite_metadata.postprocess_op_options(
      flatbuffer_utils.read_model_from_bytearray(bytearray(contents)))
  assert options['num_classes'] == len(lines)
  sub = tflite_metadata.read_standard_metadata(contents)['subgraph_metadata'][0]
  checks.check_tensors(sub['input_tensor_metadata'], sub['output_tensor_metadata'],
                       input_is_float=True)
