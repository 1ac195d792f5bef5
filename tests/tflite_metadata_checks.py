"""Checks of the standard TFLite Model Metadata of an exported detector, shared by
test_tflite_metadata (our reader) and test_mediapipe (MediaPipe's schema bindings).

Enum values are written out from tflite-support's metadata_schema.fbs, not taken from
`mnv2_det.export.tflite_metadata`, so a wrong constant there fails here.
"""

import zipfile

from tensorflow.lite.tools import flatbuffer_utils

# metadata_schema.fbs enums
RGB = 1  # ColorSpaceType
FEATURE_PROPERTIES, IMAGE_PROPERTIES, BOUNDING_BOX_PROPERTIES = 1, 2, 3  # ContentProperties
NORMALIZATION_OPTIONS = 1  # ProcessUnitOptions
BOUNDARIES = 1  # BoundingBoxType
RATIO = 0  # CoordinateType
TENSOR_VALUE_LABELS = 3  # AssociatedFileType
OUTPUT_NAMES = ['location', 'category', 'score', 'number of detections']
SIGNATURE_ORDER = ['detection_boxes', 'detection_classes', 'detection_scores',
                   'num_detections']
LABEL_FILE = 'labelmap.txt'


def check_tensors(inputs, outputs, input_is_float: bool):
  """`inputs` / `outputs`: tensor dicts with name, content, process_units, stats,
  associated_files (both readers give these keys)."""
  assert len(inputs) == 1
  image = inputs[0]
  assert image['content']['content_properties_type'] == IMAGE_PROPERTIES
  assert image['content']['color_space'] == RGB
  assert image['stats'] == {'max': [255.0], 'min': [0.0]}
  if input_is_float:  # raw pixels in, normalization inside the graph
    assert [(u['options_type'], u['mean'], u['std']) for u in image['process_units']] == [
        (NORMALIZATION_OPTIONS, [0.0], [1.0])]
  else:
    assert image['process_units'] == []
  assert [t['name'] for t in outputs] == OUTPUT_NAMES
  location, category, score, num = outputs
  assert location['content']['content_properties_type'] == BOUNDING_BOX_PROPERTIES
  assert location['content']['index'] == [1, 0, 3, 2]
  assert location['content']['type'] == BOUNDARIES
  assert location['content']['coordinate_type'] == RATIO
  for tensor in (category, score, num):
    assert tensor['content']['content_properties_type'] == FEATURE_PROPERTIES
  assert [(f['name'], f['type']) for f in category['associated_files']] == [
      (LABEL_FILE, TENSOR_VALUE_LABELS)]
  for tensor in (location, score, num):
    assert tensor['associated_files'] == []


def label_lines(path: str):
  """The label file zip-appended to the .tflite at `path`, as lines."""
  with zipfile.ZipFile(path) as archive:
    assert archive.namelist() == [LABEL_FILE]
    assert archive.getinfo(LABEL_FILE).compress_type == zipfile.ZIP_STORED
    text = archive.read(LABEL_FILE).decode('utf-8')
  assert text.endswith('\n')
  return text[:-1].split('\n')


def check_output_order(path: str):
  """Subgraph outputs = the signature's boxes, classes, scores, num_detections."""
  model = flatbuffer_utils.read_model(path)
  signature = model.signatureDefs[0]
  by_name = {bytes(t.name).decode(): int(t.tensorIndex) for t in signature.outputs}
  assert [int(i) for i in model.subgraphs[0].outputs] == [by_name[k]
                                                         for k in SIGNATURE_ORDER]
