"""Standard TFLite Model Metadata for exported detectors (MediaPipe, Task Library).

MediaPipe Tasks' and the TFLite Task Library's `ObjectDetector` refuse a model without
the `TFLITE_METADATA` flatbuffer (schema: tflite-support's `metadata_schema.fbs`,
file identifier `M001`) and read from it how to feed the input and how to read the
four outputs. `add_standard_metadata` writes it beside our own JSON entry
(`tflite_convert.METADATA_NAME`, which `TFLiteDetector` reads) and:

  * orders the operators so that all Edge TPU-mappable int8 ops come first
    (`edgetpu.mappable_ops_first`, docs/edgetpu.md);
  * puts the subgraph outputs in the order of the `TFLite_Detection_PostProcess` op,
    boxes, classes, scores, num_detections (the converter emits num_detections
    first; the SignatureDef maps names, so `TFLiteDetector` does not care, but
    clients that take outputs by position do);
  * describes the input `[1, H, W, 3]` as an RGB image (ImageProperties) with pixel
    stats [0, 255]; a float32 input gets NormalizationOptions mean 0, std 1 since the
    graph takes raw pixel values and normalizes itself ((2/255)·x − 1, see
    `tflite_convert`); a uint8 input needs none;
  * names the outputs `location`, `category`, `score`, `number of detections`
    (the names both clients look up), with BoundingBoxProperties on `location`
    (index [1, 0, 3, 2]: the op's [ymin, xmin, ymax, xmax] = top, left, bottom, right;
    BOUNDARIES; RATIO of the network input frame, docs/frames.md);
  * attaches the label file LABEL_FILE (TENSOR_VALUE_LABELS on `category`): line i is
    the name of the op's class i (0-based, background excluded); a line for every
    class the op can emit (its `num_classes` attribute), unnamed ones PAD_LABEL, so
    the clients' "label map does not contain enough elements" check cannot fire.

The associated file is packed the way tflite-support's MetadataPopulator packs it:
a zip archive (stored, not compressed) appended after the model flatbuffer, so
`zipfile.ZipFile(path)` reads the label file and the interpreter ignores the tail.

The metadata flatbuffer itself is written and read field by field by
`tflite_metadata_schema` (tflite-support cannot be installed beside TF 2.20);
`read_standard_metadata` reads it back (tests, users).
"""

import io
import zipfile
from typing import Any, Dict, List, Optional, Sequence

from flatbuffers import flexbuffers
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.export import edgetpu
from mnv2_det.export import tflite_metadata_schema as metadata_schema

STANDARD_METADATA_NAME = 'TFLITE_METADATA'
METADATA_FILE_IDENTIFIER = metadata_schema.FILE_IDENTIFIER
# No field newer than schema 1.0.0 is written.
MIN_PARSER_VERSION = '1.0.0'
POSTPROCESS_OP = 'TFLite_Detection_PostProcess'
LABEL_FILE = 'labelmap.txt'
PAD_LABEL = '???'
INPUT_TENSOR_NAME = 'image'
LOCATION, CATEGORY, SCORE, NUM_DETECTIONS = (
    'location', 'category', 'score', 'number of detections')
OUTPUT_TENSOR_NAMES = (LOCATION, CATEGORY, SCORE, NUM_DETECTIONS)
# BoundingBoxProperties.index: position of left, top, right, bottom in a box row.
BOX_INDEX = (1, 0, 3, 2)
# Dimension of [1, K, 4] / [1, K] outputs that holds the per-detection values
# (Content.range, as tflite-support's object detector writer sets it).
DETECTION_DIMENSION = 2
PIXEL_MIN, PIXEL_MAX = 0.0, 255.0
FLOAT_INPUT_MEAN, FLOAT_INPUT_STD = 0.0, 1.0


def label_lines(class_names: Sequence[str], num_op_classes: int) -> List[str]:
  """Line i: the name of the op's class i; PAD_LABEL past `class_names`.

  Raises:
    ValueError: more names than op classes, or an empty / multi-line name.
  """
  names = [str(n) for n in class_names]
  if len(names) > num_op_classes:
    raise ValueError(f'{len(names)} class names for an op with {num_op_classes} classes')
  for name in names:
    if not name.strip() or '\n' in name or '\r' in name:
      raise ValueError(f'class name {name!r} cannot be a label file line')
  return names + [PAD_LABEL] * (num_op_classes - len(names))


def metadata_buffer(name: str, description: str, version: str, author: str,
                    input_is_float: bool, input_hw: Sequence[int],
                    output_descriptions: Sequence[str], label_file: str = LABEL_FILE,
                    num_labels: int = 0) -> bytes:
  """The ModelMetadata flatbuffer (file identifier M001) of a detector (module
  docstring); `output_descriptions` in OUTPUT_TENSOR_NAMES order."""
  w = metadata_schema.Writer()
  s = metadata_schema.Schema

  def detection_range():  # Content.range: the dimension of the per-detection values
    return w.value_range(DETECTION_DIMENSION, DETECTION_DIMENSION)

  # Input: RGB image, pixel stats, normalization for a float input.
  default_size = w.table(s.IMAGE_SIZE, uints={'width': int(input_hw[1]),
                                              'height': int(input_hw[0])})
  image_properties = w.table(s.IMAGE_PROPERTIES, {'default_size': default_size},
                             bytes_={'color_space': s.COLOR_SPACE_RGB})
  input_content = w.content(s.CONTENT_IMAGE, image_properties, None)
  units = []
  if input_is_float:
    mean, std = w.floats([FLOAT_INPUT_MEAN]), w.floats([FLOAT_INPUT_STD])
    normalization = w.table(s.NORMALIZATION, {'mean': mean, 'std': std})
    units.append(w.table(s.PROCESS_UNIT, {'options': normalization},
                         bytes_={'options_type': s.PROCESS_UNIT_NORMALIZATION}))
  stats_max, stats_min = w.floats([PIXEL_MAX]), w.floats([PIXEL_MIN])
  stats = w.table(s.STATS, {'max': stats_max, 'min': stats_min})
  h, w_ = int(input_hw[0]), int(input_hw[1])
  input_desc = (f'RGB image [1, {h}, {w_}, 3], pixel values 0..255 '
                f'({"float32" if input_is_float else "uint8"}), resized to {h}x{w_} '
                f'by the caller')
  input_tensor = w.tensor(INPUT_TENSOR_NAME, input_desc, input_content, units, stats)
  # Outputs.
  index = w.uints(BOX_INDEX)
  box_properties = w.table(s.BOUNDING_BOX_PROPERTIES, {'index': index},
                           bytes_={'type': s.BOUNDING_BOX_BOUNDARIES,
                                   'coordinate_type': s.COORDINATE_RATIO})
  location = w.tensor(LOCATION, output_descriptions[0],
                      w.content(s.CONTENT_BOUNDING_BOX, box_properties, detection_range()))
  labels_name = w.string(label_file)
  labels_desc = w.string(f'{num_labels} labels, line i = op class i (background '
                         f'excluded; {PAD_LABEL!r}: no category)')
  labels = w.table(s.ASSOCIATED_FILE, {'name': labels_name, 'description': labels_desc},
                   bytes_={'type': s.ASSOCIATED_FILE_TENSOR_VALUE_LABELS})
  category = w.tensor(CATEGORY, output_descriptions[1],
                      w.feature_content(detection_range()), associated_files=[labels])
  score = w.tensor(SCORE, output_descriptions[2], w.feature_content(detection_range()))
  num = w.tensor(NUM_DETECTIONS, output_descriptions[3], w.feature_content(None))
  group_name = w.string('detection_result')
  group_names = w.offsets([w.string(n) for n in (LOCATION, CATEGORY, SCORE)])
  group = w.table(s.TENSOR_GROUP, {'name': group_name, 'tensor_names': group_names})
  # Subgraph and model.
  inputs = w.offsets([input_tensor])
  outputs = w.offsets([location, category, score, num])
  groups = w.offsets([group])
  subgraph = w.table(s.SUBGRAPH, {'input_tensor_metadata': inputs,
                                  'output_tensor_metadata': outputs,
                                  'output_tensor_groups': groups})
  subgraphs = w.offsets([subgraph])
  model = w.table(s.MODEL, {
      'name': w.string(name), 'description': w.string(description),
      'version': w.string(version), 'author': w.string(author),
      'subgraph_metadata': subgraphs,
      'min_parser_version': w.string(MIN_PARSER_VERSION)})
  return w.finish(model)


def postprocess_op_options(model) -> Dict[str, Any]:
  """The flexbuffer attributes of the model's (object API) TFLite_Detection_PostProcess
  op, and its output tensor indices under key 'outputs'.

  Raises:
    ValueError: no such op in subgraph 0.
  """
  subgraph = model.subgraphs[0]
  for op in subgraph.operators:
    code = model.operatorCodes[op.opcodeIndex].customCode
    if code is not None and bytes(code).decode('utf-8') == POSTPROCESS_OP:
      options = dict(flexbuffers.Loads(bytes(bytearray(op.customOptions))))
      options['outputs'] = [int(i) for i in op.outputs]
      return options
  raise ValueError(f'the model has no {POSTPROCESS_OP} op')


def add_standard_metadata(tflite_model: bytes, class_names: Sequence[str], name: str,
                          description: str, version: str, author: str = 'mnv2_det'
                          ) -> bytes:
  """`tflite_model` with its outputs in the op's order, the TFLITE_METADATA entry and
  the zip-appended label file (module docstring).

  Args:
    tflite_model: a converted detector (one subgraph ending in the post-process op),
      without appended files.
    class_names: the names of the op's classes 0, 1, ... (contiguous order).
    name, description, version, author: ModelMetadata strings.

  Raises:
    ValueError: no post-process op, its outputs are not the subgraph's, the input is
      not [1, H, W, 3] float32 / uint8, or more names than op classes.
  """
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
  subgraph = model.subgraphs[0]
  options = postprocess_op_options(model)
  op_outputs = options['outputs']
  if sorted(int(i) for i in subgraph.outputs) != sorted(op_outputs):
    raise ValueError(f'the subgraph outputs {list(subgraph.outputs)} are not the '
                     f'{POSTPROCESS_OP} outputs {op_outputs}')
  subgraph.outputs = op_outputs
  edgetpu.mappable_ops_first(model)
  if len(subgraph.inputs) != 1:
    raise ValueError(f'expected one input tensor, got {len(subgraph.inputs)}')
  image = subgraph.tensors[subgraph.inputs[0]]
  shape = [int(d) for d in image.shape]
  if len(shape) != 4 or shape[0] != 1 or shape[3] != 3 or image.type not in (
      schema_fb.TensorType.FLOAT32, schema_fb.TensorType.UINT8):
    raise ValueError(f'expected a float32 / uint8 [1, H, W, 3] input, got {shape} '
                     f'of type {image.type}')
  labels = label_lines(class_names, int(options['num_classes']))
  k = int(options['max_detections'])
  outputs = (
      f'[1, {k}, 4] boxes [ymin, xmin, ymax, xmax] normalized to the {shape[1]}x'
      f'{shape[2]} input',
      f'[1, {k}] class index i (float) = line i of {LABEL_FILE}',
      f'[1, {k}] scores, descending',
      '[1] number of valid rows')
  metadata = metadata_buffer(name, description, version, author,
                             image.type == schema_fb.TensorType.FLOAT32, shape[1:3],
                             outputs, LABEL_FILE, len(labels))
  buffer = schema_fb.BufferT()
  buffer.data = np.frombuffer(metadata, np.uint8)
  model.buffers.append(buffer)
  entry = schema_fb.MetadataT()
  entry.name = STANDARD_METADATA_NAME
  entry.buffer = len(model.buffers) - 1
  model.metadata = [m for m in (model.metadata or [])
                    if m.name is None or bytes(m.name) != STANDARD_METADATA_NAME.encode()]
  model.metadata.append(entry)
  contents = bytes(flatbuffer_utils.convert_object_to_bytearray(model))
  return append_files(contents, {LABEL_FILE: ''.join(l + '\n' for l in labels).encode()})


def describe(info: Dict[str, Any]) -> Dict[str, str]:
  """ModelMetadata name / description / version from our JSON entry
  (`tflite_convert.tflite_detector_bytes`'s `info`)."""
  h, w = (int(v) for v in info['input_size'])
  nms = 'regular (per-class)' if info.get('use_regular_nms', True) else 'fast'
  experiment = info.get('experiment') or 'ssdlite'
  description = (
      f'SSDLite + MobileNetV2 detector (mnv2_det, experiment {experiment}, '
      f'{info.get("quantization", "fp32")}): {len(info["class_names"])} classes; input '
      f'RGB {h}x{w}, pixel values 0..255 (resize mode {info.get("resize_mode")}); '
      f'{nms} NMS, score threshold {info.get("score_threshold")}, at most '
      f'{info.get("max_num_detections")} detections; boxes normalized to the input. ')
  if info.get('use_regular_nms', True):
    description += ('Run the interpreter with 1 thread: LiteRT regular NMS with 2..C '
                    'threads never detects one class (tensorflow/tensorflow#56058).')
  else:
    description += (f'Any number of interpreter threads is safe (fast NMS), e.g. '
                    f'{info.get("num_threads", 2)}.')
  try:
    from importlib import metadata as importlib_metadata  # pylint: disable=g-import-not-at-top
    version = importlib_metadata.version('mnv2_det')
  except Exception:  # pylint: disable=broad-except  # not installed as a package
    version = 'unknown'
  return {'name': f'mnv2_det {experiment} ({info.get("quantization", "fp32")})',
          'description': description,
          'version': f'mnv2_det {version}, metadata {info.get("version")}'}


def add_detector_metadata(tflite_model: bytes, info: Dict[str, Any]) -> bytes:
  """`add_standard_metadata` with the class names and strings of our JSON `info`."""
  return add_standard_metadata(tflite_model, info['class_names'], **describe(info))


def append_files(contents: bytes, files: Dict[str, bytes]) -> bytes:
  """`contents` followed by a stored zip archive of `files` (MetadataPopulator layout:
  offsets in the archive are relative to its start, which zip readers handle)."""
  out = io.BytesIO()
  out.write(contents)
  with zipfile.ZipFile(out, 'a', compression=zipfile.ZIP_STORED) as archive:
    for name, data in files.items():
      archive.writestr(name, data)
  return out.getvalue()


def associated_files(contents: bytes) -> Dict[str, bytes]:
  """The files zip-appended to a .tflite ({} if none)."""
  try:
    with zipfile.ZipFile(io.BytesIO(contents)) as archive:
      return {n: archive.read(n) for n in archive.namelist()}
  except zipfile.BadZipFile:
    return {}


def metadata_bytes(contents: bytes, name: str = STANDARD_METADATA_NAME) -> Optional[bytes]:
  """The buffer of the model's metadata entry `name`, or None."""
  model = schema_fb.Model.GetRootAs(contents, 0)
  for i in range(model.MetadataLength()):
    if model.Metadata(i).Name().decode('utf-8') == name:
      return bytes(model.Buffers(model.Metadata(i).Buffer()).DataAsNumpy())
  return None


def read_standard_metadata(contents: bytes) -> Dict[str, Any]:
  """The TFLITE_METADATA of .tflite `contents` as a dict (enum values as ints), with
  the associated files' bytes under 'files'.

  Raises:
    ValueError: no TFLITE_METADATA entry, or not an M001 flatbuffer.
  """
  buf = metadata_bytes(contents)
  if buf is None:
    raise ValueError(f'no {STANDARD_METADATA_NAME} metadata')
  try:
    metadata = metadata_schema.read_model_metadata(buf)
  except ValueError as e:
    raise ValueError(f'{STANDARD_METADATA_NAME} is {e}') from e
  metadata['files'] = associated_files(contents)
  return metadata
