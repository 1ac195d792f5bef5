"""Runs MediaPipe Tasks' ObjectDetector on .tflite files; run in MediaPipe's own venv.

    python mediapipe_client.py request.json   (prints one JSON line)

request: {"models": [{"path": "m.tflite", "images": ["a.npy", ...]}],
          "score_threshold": 0.0, "max_results": -1}
reply: {"mediapipe_version": ..., "models": [{"metadata": {...}, "files": {...},
        "detections": [[{"left", "top", "right", "bottom",
                         "categories": [{"name", "index", "score"}, ...]}, ...]
                       per image]}]}

`metadata` is the model's TFLITE_METADATA read with MediaPipe's own generated schema
bindings (`mediapipe.tasks.metadata.metadata_schema_py_generated`), an independent
reader of what `mnv2_det.export.tflite_metadata` writes. Images are uint8 RGB
`[h, w, 3]` .npy files. Boxes are MediaPipe's integer pixel rectangles of the image
it was given; MediaPipe merges detections with identical boxes (regular NMS emits one
per class for the same anchor) into one with several categories. Nothing here imports mnv2_det or TensorFlow (absl / protobuf pins of
MediaPipe conflict with the main environment).
"""

import json
import sys
import zipfile

import numpy as np
import mediapipe as mp
from mediapipe.tasks.metadata import metadata_schema_py_generated as schema
from mediapipe.tasks.python import vision
from mediapipe.tasks.python.core import base_options

_TFLITE_METADATA = 'TFLITE_METADATA'


def _u(value):
  return None if value is None else value.decode('utf-8')


def _tflite_metadata_buffer(data: bytes) -> bytes:
  """The TFLITE_METADATA buffer, found with a tiny reader of the TFLite schema
  (Model.metadata = field 6, Model.buffers = field 4, Buffer.data = field 0)."""
  from flatbuffers import table as fb_table  # pylint: disable=g-import-not-at-top
  from flatbuffers import number_types as nt  # pylint: disable=g-import-not-at-top
  from flatbuffers import encode, packer  # pylint: disable=g-import-not-at-top
  root = fb_table.Table(data, encode.Get(packer.uoffset, data, 0))

  def vector(t, field):
    o = t.Offset(4 + 2 * field)
    start = t.Vector(o)
    return [fb_table.Table(data, t.Indirect(start + 4 * i)) for i in range(t.VectorLen(o))]

  buffers = vector(root, 4)
  for entry in vector(root, 6):
    name = entry.String(entry.Offset(4) + entry.Pos).decode('utf-8')
    if name == _TFLITE_METADATA:
      index = entry.Get(nt.Uint32Flags, entry.Offset(6) + entry.Pos)
      return bytes(buffers[index].GetVectorAsNumpy(nt.Uint8Flags, buffers[index].Offset(4)))
  raise ValueError('no TFLITE_METADATA')


def _content(c):
  if c is None:
    return None
  out = {'content_properties_type': c.ContentPropertiesType()}
  table = c.ContentProperties()
  if c.ContentPropertiesType() == schema.ContentProperties.ImageProperties:
    props = schema.ImageProperties()
    props.Init(table.Bytes, table.Pos)
    out['color_space'] = props.ColorSpace()
  elif c.ContentPropertiesType() == schema.ContentProperties.BoundingBoxProperties:
    props = schema.BoundingBoxProperties()
    props.Init(table.Bytes, table.Pos)
    out['index'] = [int(props.Index(i)) for i in range(props.IndexLength())]
    out['type'] = props.Type()
    out['coordinate_type'] = props.CoordinateType()
  if c.Range() is not None:
    out['range'] = [c.Range().Min(), c.Range().Max()]
  return out


def _tensor(t):
  units = []
  for i in range(t.ProcessUnitsLength()):
    unit = t.ProcessUnits(i)
    entry = {'options_type': unit.OptionsType()}
    if unit.OptionsType() == schema.ProcessUnitOptions.NormalizationOptions:
      norm = schema.NormalizationOptions()
      norm.Init(unit.Options().Bytes, unit.Options().Pos)
      entry['mean'] = [float(norm.Mean(j)) for j in range(norm.MeanLength())]
      entry['std'] = [float(norm.Std(j)) for j in range(norm.StdLength())]
    units.append(entry)
  stats = t.Stats()
  return {
      'name': _u(t.Name()), 'content': _content(t.Content()), 'process_units': units,
      'stats': None if stats is None else {
          'max': [float(stats.Max(j)) for j in range(stats.MaxLength())],
          'min': [float(stats.Min(j)) for j in range(stats.MinLength())]},
      'associated_files': [{'name': _u(t.AssociatedFiles(j).Name()),
                            'type': t.AssociatedFiles(j).Type()}
                           for j in range(t.AssociatedFilesLength())]}


def read_metadata(data: bytes):
  buf = _tflite_metadata_buffer(data)
  assert schema.ModelMetadata.ModelMetadataBufferHasIdentifier(buf, 0), 'not M001'
  m = schema.ModelMetadata.GetRootAs(buf, 0)
  sg = m.SubgraphMetadata(0)
  return {'name': _u(m.Name()), 'description': _u(m.Description()),
          'min_parser_version': _u(m.MinParserVersion()),
          'subgraph_count': m.SubgraphMetadataLength(),
          'inputs': [_tensor(sg.InputTensorMetadata(i))
                     for i in range(sg.InputTensorMetadataLength())],
          'outputs': [_tensor(sg.OutputTensorMetadata(i))
                      for i in range(sg.OutputTensorMetadataLength())]}


def detect(path, images, score_threshold, max_results):
  options = vision.ObjectDetectorOptions(
      base_options=base_options.BaseOptions(model_asset_path=path),
      score_threshold=score_threshold, max_results=max_results)
  results = []
  with vision.ObjectDetector.create_from_options(options) as detector:
    for image_path in images:
      image = np.ascontiguousarray(np.load(image_path).astype(np.uint8))
      result = detector.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=image))
      rows = []
      for d in result.detections:
        box = d.bounding_box
        rows.append({'left': box.origin_x, 'top': box.origin_y,
                     'right': box.origin_x + box.width,
                     'bottom': box.origin_y + box.height,
                     'categories': [{'name': c.category_name, 'index': c.index,
                                     'score': float(c.score)} for c in d.categories]})
      results.append(rows)
  return results


def main(request_path):
  with open(request_path, encoding='utf-8') as f:
    request = json.load(f)
  reply = {'mediapipe_version': getattr(mp, '__version__', '?'), 'models': []}
  for model in request['models']:
    with open(model['path'], 'rb') as f:
      data = f.read()
    with zipfile.ZipFile(model['path']) as archive:
      files = {n: archive.read(n).decode('utf-8') for n in archive.namelist()}
    reply['models'].append({
        'metadata': read_metadata(data), 'files': files,
        'detections': detect(model['path'], model['images'],
                             request.get('score_threshold', 0.0),
                             request.get('max_results', -1))})
  print(json.dumps(reply))


if __name__ == '__main__':
  main(sys.argv[1])
