"""The TFLite Model Metadata flatbuffer (tflite-support's `metadata_schema.fbs`, file
identifier `M001`), written and read field by field with the `flatbuffers` package.

`tflite-support` cannot be installed beside TF 2.20 (protobuf < 4) and MediaPipe's
writer needs MediaPipe, so this module holds what we use of the schema: its enum values
and field slots (`Schema`), a builder with one call per table (`Writer`) and a reader
that turns a ModelMetadata buffer into plain dicts (`read_model_metadata`). What a
detector's metadata says is `tflite_metadata`'s business.
"""

from typing import Any, Dict, List, Optional, Sequence

import flatbuffers
from flatbuffers import table as fb_table
import numpy as np

FILE_IDENTIFIER = b'M001'


class Schema:
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


# ----------------------------------------------------------------- writing
class Writer:
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
    self.b.StartObject(max(slots.values()) + 1)
    for key, value in (offsets or {}).items():
      if value is not None:
        self.b.PrependUOffsetTRelativeSlot(slots[key], value, 0)
    for values, prepend in ((ints, self.b.PrependInt32Slot),
                            (uints, self.b.PrependUint32Slot),
                            (bytes_, self.b.PrependUint8Slot)):
      for key, value in (values or {}).items():
        prepend(slots[key], int(value), int(value) + 1)  # default != value: written
    return self.b.EndObject()

  def content(self, kind: int, properties: int, value_range: Optional[int]) -> int:
    return self.table(Schema.CONTENT, {'content_properties': properties,
                                       'range': value_range},
                      bytes_={'content_properties_type': kind})

  def value_range(self, lo: int, hi: int) -> int:
    return self.table(Schema.VALUE_RANGE, ints={'min': lo, 'max': hi})

  def feature_content(self, value_range: Optional[int]) -> int:
    """Content with (empty) FeatureProperties."""
    self.b.StartObject(0)
    properties = self.b.EndObject()
    return self.content(Schema.CONTENT_FEATURE, properties, value_range)

  def tensor(self, name: str, description: str, content: int,
             process_units: Sequence[int] = (), stats: Optional[int] = None,
             associated_files: Sequence[int] = ()) -> int:
    name_off, desc_off = self.string(name), self.string(description)
    units = self.offsets(process_units) if process_units else None
    files = self.offsets(associated_files) if associated_files else None
    return self.table(Schema.TENSOR, {'name': name_off, 'description': desc_off,
                                      'content': content, 'process_units': units,
                                      'stats': stats, 'associated_files': files})

  def finish(self, model: int) -> bytes:
    """The buffer with ModelMetadata table `model` as its root."""
    self.b.Finish(model, file_identifier=FILE_IDENTIFIER)
    return bytes(self.b.Output())


# ----------------------------------------------------------------- reading
_U8 = flatbuffers.number_types.Uint8Flags
_I32 = flatbuffers.number_types.Int32Flags
_U32 = flatbuffers.number_types.Uint32Flags
_F32 = flatbuffers.number_types.Float32Flags


class Reader:
  """Reads the fields of one table of the metadata flatbuffer by slot; an absent
  field reads as None / the default / []."""

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

  def table(self, slot: int) -> Optional['Reader']:
    o = self._offset(slot)
    return None if not o else Reader(self.t.Bytes, self.t.Indirect(o + self.t.Pos))

  def _vector(self, slot: int, read) -> list:
    o = self._offset(slot)
    if not o:
      return []
    start = self.t.Vector(o)
    return [read(start + 4 * i) for i in range(self.t.VectorLen(o))]

  def tables(self, slot: int) -> List['Reader']:
    return self._vector(slot, lambda pos: Reader(self.t.Bytes, self.t.Indirect(pos)))

  def strings(self, slot: int) -> List[str]:
    return self._vector(slot, lambda pos: self.t.String(pos).decode('utf-8'))

  def numbers(self, slot: int, flags) -> List[float]:
    o = self._offset(slot)
    return [] if not o else self.t.GetVectorAsNumpy(flags, o).tolist()


def _read_file(r: Reader) -> Dict[str, Any]:
  f = Schema.ASSOCIATED_FILE
  return {'name': r.string(f['name']), 'description': r.string(f['description']),
          'type': r.scalar(f['type'], _U8), 'locale': r.string(f['locale'])}


def _read_content(r: Optional[Reader]) -> Optional[Dict[str, Any]]:
  if r is None:
    return None
  c = Schema.CONTENT
  kind = r.scalar(c['content_properties_type'], _U8)
  out = {'content_properties_type': kind}
  props = r.table(c['content_properties'])
  if props is not None and kind == Schema.CONTENT_IMAGE:
    ip = Schema.IMAGE_PROPERTIES
    size = props.table(ip['default_size'])
    out['color_space'] = props.scalar(ip['color_space'], _U8)
    if size is not None:
      out['default_size'] = [size.scalar(Schema.IMAGE_SIZE['height'], _U32),
                             size.scalar(Schema.IMAGE_SIZE['width'], _U32)]  # [h, w]
  elif props is not None and kind == Schema.CONTENT_BOUNDING_BOX:
    bp = Schema.BOUNDING_BOX_PROPERTIES
    out['index'] = [int(v) for v in props.numbers(bp['index'], _U32)]
    out['type'] = props.scalar(bp['type'], _U8)
    out['coordinate_type'] = props.scalar(bp['coordinate_type'], _U8)
  value_range = r.table(c['range'])
  if value_range is not None:
    vr = Schema.VALUE_RANGE
    out['range'] = [value_range.scalar(vr['min'], _I32), value_range.scalar(vr['max'], _I32)]
  return out


def _read_tensor(r: Reader) -> Dict[str, Any]:
  t = Schema.TENSOR
  units = []
  for unit in r.tables(t['process_units']):
    kind = unit.scalar(Schema.PROCESS_UNIT['options_type'], _U8)
    options = unit.table(Schema.PROCESS_UNIT['options'])
    entry = {'options_type': kind}
    if kind == Schema.PROCESS_UNIT_NORMALIZATION and options is not None:
      entry['mean'] = options.numbers(Schema.NORMALIZATION['mean'], _F32)
      entry['std'] = options.numbers(Schema.NORMALIZATION['std'], _F32)
    units.append(entry)
  stats = r.table(t['stats'])
  return {
      'name': r.string(t['name']), 'description': r.string(t['description']),
      'content': _read_content(r.table(t['content'])), 'process_units': units,
      'stats': None if stats is None else {
          'max': stats.numbers(Schema.STATS['max'], _F32),
          'min': stats.numbers(Schema.STATS['min'], _F32)},
      'associated_files': [_read_file(f) for f in r.tables(t['associated_files'])]}


def _read_subgraph(sg: Reader) -> Dict[str, Any]:
  s, g = Schema.SUBGRAPH, Schema.TENSOR_GROUP
  out = {key: [_read_tensor(t) for t in sg.tables(s[key])]
         for key in ('input_tensor_metadata', 'output_tensor_metadata')}
  out['output_tensor_groups'] = [
      {'name': group.string(g['name']), 'tensor_names': group.strings(g['tensor_names'])}
      for group in sg.tables(s['output_tensor_groups'])]
  return out


def read_model_metadata(buf: bytes) -> Dict[str, Any]:
  """The ModelMetadata at the root of `buf` as a dict (enum values as ints): name,
  description, version, author, min_parser_version, subgraph_metadata.

  Raises:
    ValueError: `buf` is not an M001 flatbuffer.
  """
  if buf[4:8] != FILE_IDENTIFIER:
    raise ValueError(f'not an {FILE_IDENTIFIER!r} flatbuffer')
  root = Reader(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
  m = Schema.MODEL
  out = {key: root.string(m[key])
         for key in ('name', 'description', 'version', 'author', 'min_parser_version')}
  out['subgraph_metadata'] = [_read_subgraph(sg)
                              for sg in root.tables(m['subgraph_metadata'])]
  return out
