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

The metadata flatbuffer is written here with `flatbuffers.Builder`, field by field
(slot numbers = declaration order in metadata_schema.fbs), because `tflite-support`
cannot be installed beside TF 2.20 (protobuf < 4) and MediaPipe's writer needs
MediaPipe. `read_standard_metadata` reads it back (tests, users).
"""

import io
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import flatbuffers
from flatbuffers import flexbuffers
from flatbuffers import table as fb_table
import numpy as np
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.export import edgetpu

STANDARD_METADATA_NAME = 'TFLITE_METADATA'
METADATA_FILE_IDENTIFIER = b'M001'
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


class _Schema:
  """Enum values and field slots of metadata_schema.fbs (slot = declaration index;
  a union field takes two slots, its type first)."""
  # enums
  ASSOCIATED_FILE_TENSOR_VALUE_LABELS = 3
  COLOR_SPACE_RGB = 1
  BOUNDING_BOX_BOUNDARIES = 1
  COORDINATE_RATIO = 0
  CONTENT_FEATURE, CONTENT_IMAGE, CONTENT_BOUNDING_BOX = 1, 2, 3
  PROCESS_UNIT_NORMALIZATION = 1
  # table fields
  MODEL = dict(name=0, description=1, version=2, subgraph_metadata=3, author=4,
               license=5, associated_files=6, min_parser_version=7)
  SUBGRAPH = dict(name=0, description=1, input_tensor_metadata=2,
                  output_tensor_metadata=3, associated_files=4, input_process_units=5,
                  output_process_units=6, input_tensor_groups=7,
                  output_tensor_groups=8, custom_metadata=9)
  TENSOR = dict(name=0, description=1, dimension_names=2, content=3, process_units=4,
                stats=5, associated_files=6)
  CONTENT = dict(content_properties_type=0, content_properties=1, range=2)
  IMAGE_PROPERTIES = dict(color_space=0, default_size=1)
  IMAGE_SIZE = dict(width=0, height=1)
  BOUNDING_BOX_PROPERTIES = dict(index=0, type=1, coordinate_type=2)
  VALUE_RANGE = dict(min=0, max=1)
  NORMALIZATION = dict(mean=0, std=1)
  PROCESS_UNIT = dict(options_type=0, options=1)
  STATS = dict(max=0, min=1)
  ASSOCIATED_FILE = dict(name=0, description=1, type=2, locale=3, version=4)
  TENSOR_GROUP = dict(name=0, tensor_names=1)


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


# ----------------------------------------------------------------- writing
class _Writer:
  """flatbuffers.Builder with one call per table (children built first)."""

  def __init__(self):
    self.b = flatbuffers.Builder(1024)

  def string(self, s: Optional[str]):
    return None if s is None else self.b.CreateString(s)

  def offsets(self, items: Sequence[int]):
    self.b.StartVector(4, len(items), 4)
    for item in reversed(items):
      self.b.PrependUOffsetTRelative(item)
    return self.b.EndVector()

  def floats(self, values: Sequence[float]):
    return self.b.CreateNumpyVector(np.asarray(values, np.float32))

  def uints(self, values: Sequence[int]):
    return self.b.CreateNumpyVector(np.asarray(values, np.uint32))

  def table(self, slots: Dict[str, int], offsets: Dict[str, Any] = None,
            bytes_: Dict[str, int] = None, ints: Dict[str, int] = None,
            uints: Dict[str, int] = None) -> int:
    """A table of `offsets` (already built), `bytes_` (byte enums and union types),
    `ints` / `uints` (int32 / uint32 scalars). Every given value is written, defaults
    too."""
    offsets = {k: v for k, v in (offsets or {}).items() if v is not None}
    bytes_, ints, uints = bytes_ or {}, ints or {}, uints or {}
    self.b.StartObject(max(slots.values()) + 1)
    for key, value in offsets.items():
      self.b.PrependUOffsetTRelativeSlot(slots[key], value, 0)
    for key, value in ints.items():
      self.b.PrependInt32Slot(slots[key], int(value), int(value) + 1)
    for key, value in uints.items():
      self.b.PrependUint32Slot(slots[key], int(value), int(value) + 1)
    for key, value in bytes_.items():
      self.b.PrependUint8Slot(slots[key], int(value), int(value) + 1)
    return self.b.EndObject()

  def content(self, kind: int, properties: int, value_range: Optional[int]) -> int:
    return self.table(_Schema.CONTENT, {'content_properties': properties,
                                        'range': value_range},
                      bytes_={'content_properties_type': kind})

  def value_range(self, lo: int, hi: int) -> int:
    return self.table(_Schema.VALUE_RANGE, ints={'min': lo, 'max': hi})

  def feature_content(self, with_range: bool = True) -> int:
    value_range = self.value_range(DETECTION_DIMENSION, DETECTION_DIMENSION) \
        if with_range else None
    self.b.StartObject(0)
    properties = self.b.EndObject()
    return self.content(_Schema.CONTENT_FEATURE, properties, value_range)

  def tensor(self, name: str, description: str, content: int,
             process_units: Sequence[int] = (), stats: Optional[int] = None,
             associated_files: Sequence[int] = ()) -> int:
    name_off, desc_off = self.string(name), self.string(description)
    units = self.offsets(process_units) if process_units else None
    files = self.offsets(associated_files) if associated_files else None
    return self.table(_Schema.TENSOR, {'name': name_off, 'description': desc_off,
                                       'content': content, 'process_units': units,
                                       'stats': stats, 'associated_files': files})


def metadata_buffer(name: str, description: str, version: str, author: str,
                    input_is_float: bool, input_hw: Sequence[int],
                    output_descriptions: Sequence[str], label_file: str = LABEL_FILE,
                    num_labels: int = 0) -> bytes:
  """The ModelMetadata flatbuffer (file identifier M001) of a detector (module
  docstring); `output_descriptions` in OUTPUT_TENSOR_NAMES order."""
  w = _Writer()
  s = _Schema
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
  box_range = w.value_range(DETECTION_DIMENSION, DETECTION_DIMENSION)
  location = w.tensor(LOCATION, output_descriptions[0],
                      w.content(s.CONTENT_BOUNDING_BOX, box_properties, box_range))
  labels_name = w.string(label_file)
  labels_desc = w.string(f'{num_labels} labels, line i = op class i (background '
                         f'excluded; {PAD_LABEL!r}: no category)')
  labels = w.table(s.ASSOCIATED_FILE, {'name': labels_name, 'description': labels_desc},
                   bytes_={'type': s.ASSOCIATED_FILE_TENSOR_VALUE_LABELS})
  category = w.tensor(CATEGORY, output_descriptions[1], w.feature_content(),
                      associated_files=[labels])
  score = w.tensor(SCORE, output_descriptions[2], w.feature_content())
  num = w.tensor(NUM_DETECTIONS, output_descriptions[3],
                 w.feature_content(with_range=False))
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
  w.b.Finish(model, file_identifier=METADATA_FILE_IDENTIFIER)
  return bytes(w.b.Output())


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


# ----------------------------------------------------------------- reading
def associated_files(contents: bytes) -> Dict[str, bytes]:
  """The files zip-appended to a .tflite ({} if none)."""
  try:
    with zipfile.ZipFile(io.BytesIO(contents)) as archive:
      return {n: archive.read(n) for n in archive.namelist()}
  except zipfile.BadZipFile:
    return {}


class _Reader:
  """Reads tables of the metadata flatbuffer by slot."""

  def __init__(self, buf, pos: int):
    self.t = fb_table.Table(buf, pos)

  def _offset(self, slot: int) -> int:
    return self.t.Offset(4 + 2 * slot)

  def string(self, slot: int) -> Optional[str]:
    o = self._offset(slot)
    return None if not o else self.t.String(o + self.t.Pos).decode('utf-8')

  def scalar(self, slot: int, flags, default: int = 0):
    o = self._offset(slot)
    return default if not o else self.t.Get(flags, o + self.t.Pos)

  def table(self, slot: int) -> Optional['_Reader']:
    o = self._offset(slot)
    return None if not o else _Reader(self.t.Bytes, self.t.Indirect(o + self.t.Pos))

  def tables(self, slot: int) -> List['_Reader']:
    o = self._offset(slot)
    if not o:
      return []
    start = self.t.Vector(o)
    return [_Reader(self.t.Bytes, self.t.Indirect(start + 4 * i))
            for i in range(self.t.VectorLen(o))]

  def strings(self, slot: int) -> List[str]:
    o = self._offset(slot)
    if not o:
      return []
    start = self.t.Vector(o)
    return [self.t.String(start + 4 * i).decode('utf-8')
            for i in range(self.t.VectorLen(o))]

  def numbers(self, slot: int, flags) -> List[float]:
    o = self._offset(slot)
    return [] if not o else self.t.GetVectorAsNumpy(flags, o).tolist()


_U8 = flatbuffers.number_types.Uint8Flags
_I32 = flatbuffers.number_types.Int32Flags
_U32 = flatbuffers.number_types.Uint32Flags
_F32 = flatbuffers.number_types.Float32Flags


def _read_file(r: _Reader) -> Dict[str, Any]:
  f = _Schema.ASSOCIATED_FILE
  return {'name': r.string(f['name']), 'description': r.string(f['description']),
          'type': r.scalar(f['type'], _U8), 'locale': r.string(f['locale'])}


def _read_content(r: Optional[_Reader]) -> Optional[Dict[str, Any]]:
  if r is None:
    return None
  c = _Schema.CONTENT
  kind = r.scalar(c['content_properties_type'], _U8)
  out = {'content_properties_type': kind}
  props = r.table(c['content_properties'])
  if props is not None and kind == _Schema.CONTENT_IMAGE:
    ip = _Schema.IMAGE_PROPERTIES
    size = props.table(ip['default_size'])
    out['color_space'] = props.scalar(ip['color_space'], _U8)
    if size is not None:
      out['default_size'] = [size.scalar(_Schema.IMAGE_SIZE['height'], _U32),
                             size.scalar(_Schema.IMAGE_SIZE['width'], _U32)]  # [h, w]
  elif props is not None and kind == _Schema.CONTENT_BOUNDING_BOX:
    bp = _Schema.BOUNDING_BOX_PROPERTIES
    out['index'] = [int(v) for v in props.numbers(bp['index'], _U32)]
    out['type'] = props.scalar(bp['type'], _U8)
    out['coordinate_type'] = props.scalar(bp['coordinate_type'], _U8)
  value_range = r.table(c['range'])
  if value_range is not None:
    vr = _Schema.VALUE_RANGE
    out['range'] = [value_range.scalar(vr['min'], _I32), value_range.scalar(vr['max'], _I32)]
  return out


def _read_tensor(r: _Reader) -> Dict[str, Any]:
  t = _Schema.TENSOR
  units = []
  for unit in r.tables(t['process_units']):
    kind = unit.scalar(_Schema.PROCESS_UNIT['options_type'], _U8)
    options = unit.table(_Schema.PROCESS_UNIT['options'])
    entry = {'options_type': kind}
    if kind == _Schema.PROCESS_UNIT_NORMALIZATION and options is not None:
      entry['mean'] = options.numbers(_Schema.NORMALIZATION['mean'], _F32)
      entry['std'] = options.numbers(_Schema.NORMALIZATION['std'], _F32)
    units.append(entry)
  stats = r.table(t['stats'])
  return {
      'name': r.string(t['name']), 'description': r.string(t['description']),
      'content': _read_content(r.table(t['content'])), 'process_units': units,
      'stats': None if stats is None else {
          'max': stats.numbers(_Schema.STATS['max'], _F32),
          'min': stats.numbers(_Schema.STATS['min'], _F32)},
      'associated_files': [_read_file(f) for f in r.tables(t['associated_files'])]}


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
  if buf[4:8] != METADATA_FILE_IDENTIFIER:
    raise ValueError(f'{STANDARD_METADATA_NAME} is not an {METADATA_FILE_IDENTIFIER!r} '
                     'flatbuffer')
  root = _Reader(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
  m, s = _Schema.MODEL, _Schema.SUBGRAPH
  subgraphs = []
  for sg in root.tables(m['subgraph_metadata']):
    subgraphs.append({
        'input_tensor_metadata': [_read_tensor(t)
                                  for t in sg.tables(s['input_tensor_metadata'])],
        'output_tensor_metadata': [_read_tensor(t)
                                   for t in sg.tables(s['output_tensor_metadata'])],
        'output_tensor_groups': [
            {'name': g.string(_Schema.TENSOR_GROUP['name']),
             'tensor_names': g.strings(_Schema.TENSOR_GROUP['tensor_names'])}
            for g in sg.tables(s['output_tensor_groups'])]})
  return {'name': root.string(m['name']), 'description': root.string(m['description']),
          'version': root.string(m['version']), 'author': root.string(m['author']),
          'min_parser_version': root.string(m['min_parser_version']),
          'subgraph_metadata': subgraphs, 'files': associated_files(contents)}
