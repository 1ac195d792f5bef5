"""Run an exported .tflite detector with ai-edge-litert; SavedModel-style outputs.

    detector = TFLiteDetector('model.tflite', num_threads=2)
    out = detector(image)   # image: uint8 [h, w, 3] RGB, any size

`out` has the SavedModel's `serving_default` format (numpy, batch 1):
detection_boxes `[1, K, 4]` float32 `[ymin, xmin, ymax, xmax]` ORIGINAL image pixels,
detection_scores `[1, K]` float32, detection_classes `[1, K]` int32 DATASET ids,
num_detections `[1]` int32; rows past num_detections are padding (0, 0, -1).

Host-side steps around the interpreter (an app on device does the same itself):
  1. resize + normalize exactly as the eval pipeline (`serving_inputs.prepare_image`,
     TF ops), then back to pixel values [0, 255] (the model normalizes inside);
     quantized to the input's (scale, zero point) for an int8 model;
  2. the op's boxes (normalized to the network input frame, docs/frames.md) -> original
     pixels with the image_info of step 1 (`ops.postprocess.map_boxes_to_original`), clipped; boxes
     left with zero area are dropped (as the TF post-processing does);
  3. classes: op class + 1 = contiguous index -> dataset id (metadata table).

LiteRT bug (ai-edge-litert 2.3.0; tensorflow/tensorflow#56058): with
`use_regular_nms` and an interpreter of T threads, 1 < T < num real classes, the op's
multi-threaded regular NMS never evaluates real class column T (its work counter
starts at T and is pre-incremented), so that class is silently never detected. Measured
here: 2 threads drop contiguous class 3, 3 threads class 4, 4 threads class 5.
`safe_num_threads` therefore runs such models with 1 thread (and logs why); a
`--fast_nms` export (single-threaded class-agnostic NMS) is not affected. Apps on
device must do the same.
"""

import json
import os
from typing import Any, Dict, Mapping

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb

from mnv2_det.data import preprocess
from mnv2_det.data.category_map import UNKNOWN
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite_convert
from mnv2_det.ops import postprocess

DEFAULT_NUM_THREADS = 2
SAFE_NUM_THREADS = 1
EXPORT_EXTRA_HINT = 'pip install -e ".[export]"'
# Bytes 4..8 of every TFLite flatbuffer (the schema's file_identifier).
TFLITE_FILE_IDENTIFIER = b'TFL3'
_IDENTIFIER_SLICE = slice(4, 8)


def litert_interpreter():
  """ai_edge_litert's Interpreter class, imported on first use so that training,
  checkpoint evaluation and SavedModel export work without the `export` extra.

  Raises:
    ValueError: ai-edge-litert is not installed (names the install command).
  """
  try:
    from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ValueError(f'running .tflite models needs ai-edge-litert ({EXPORT_EXTRA_HINT}): '
                     f'{e}') from e
  return Interpreter
# The op's class output is 0-based over the real classes: contiguous = op class + 1.
OP_CLASS_OFFSET = 1
REQUIRED_METADATA_KEYS = ('format', 'input_size', 'padded_size', 'resize_mode',
                          'dataset_ids', 'num_classes')


def read_detector_metadata(path: str, contents: bytes) -> Dict[str, Any]:
  """The METADATA_NAME JSON of a .tflite file; ValueError naming `path` otherwise."""
  if len(contents) < _IDENTIFIER_SLICE.stop or (
      contents[_IDENTIFIER_SLICE] != TFLITE_FILE_IDENTIFIER):
    raise ValueError(f'{path} is not a TFLite model (no {TFLITE_FILE_IDENTIFIER!r} '
                     'file identifier)')
  try:
    model = schema_fb.Model.GetRootAs(contents, 0)
    entries = {model.Metadata(i).Name().decode('utf-8'): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    index = entries.get(tflite_convert.METADATA_NAME)
    raw = None if index is None else model.Buffers(index).DataAsNumpy()
  except Exception as e:  # pylint: disable=broad-except  # Corrupt flatbuffer.
    raise ValueError(f'{path} is not a readable TFLite model: {e}') from e
  if raw is None or isinstance(raw, int):
    raise ValueError(
        f'{path} is not an mnv2_det detector: no {tflite_convert.METADATA_NAME!r} '
        f'metadata (export one with `tools/export.py tflite`)')
  try:
    info = json.loads(bytes(raw).decode('utf-8'))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise ValueError(f'{path}: unreadable {tflite_convert.METADATA_NAME!r} metadata: '
                     f'{e}') from e
  missing = [k for k in REQUIRED_METADATA_KEYS if k not in info]
  if info.get('format') != tflite_convert.METADATA_FORMAT or missing:
    raise ValueError(f'{path}: {tflite_convert.METADATA_NAME!r} metadata is not an '
                     f'mnv2_det detector description (missing {missing})')
  return info


def safe_num_threads(requested: int, num_real_classes: int,
                     use_regular_nms: bool) -> int:
  """Thread count that avoids the LiteRT regular-NMS bug (module docstring)."""
  if requested < 1:
    raise ValueError(f'num_threads must be >= 1, got {requested}')
  if use_regular_nms and 1 < requested < num_real_classes:
    return SAFE_NUM_THREADS
  return requested


class TFLiteDetector:
  """A .tflite written by `tflite_convert.export_tflite`, run with ai-edge-litert."""

  def __init__(self, path: str, num_threads: int = DEFAULT_NUM_THREADS):
    """Loads `path`; `num_threads` may be lowered by `safe_num_threads`.

    Raises:
      ValueError: missing file, not a TFLite flatbuffer, not an mnv2_det detector
        (no metadata or another signature), or the interpreter rejects it.
    """
    if not os.path.isfile(path):
      raise ValueError(f'TFLite model {path} does not exist')
    with open(path, 'rb') as f:
      contents = f.read()
    self.path = path
    self.info = read_detector_metadata(path, contents)
    # The op's real classes: metadata num_classes - 1 (K for current files; files
    # written before tail outputs were cut had the head's num_classes - 1, also the op's).
    self.num_threads = safe_num_threads(num_threads, int(self.info['num_classes']) - 1,
                                        bool(self.info.get('use_regular_nms', True)))
    if self.num_threads != num_threads:
      logging.warning('%s: running with %d thread(s) instead of %d: LiteRT regular NMS '
                      'with %d threads never detects contiguous class %d '
                      '(tensorflow/tensorflow#56058)', path, self.num_threads,
                      num_threads, num_threads, num_threads + OP_CLASS_OFFSET)
    interpreter_class = litert_interpreter()
    try:
      self._interpreter = interpreter_class(model_content=contents,
                                            num_threads=self.num_threads)
      self._runner = self._interpreter.get_signature_runner()
    except (ValueError, RuntimeError) as e:
      raise ValueError(f'{path}: the TFLite interpreter cannot load it: {e}') from e
    inputs = self._runner.get_input_details()
    outputs = self._runner.get_output_details()
    if (list(inputs) != [tflite_convert.INPUT_NAME] or
        set(outputs) != set(tflite_convert.OP_OUTPUT_ORDER)):
      raise ValueError(f'{path}: signature {sorted(inputs)} -> {sorted(outputs)} is not '
                       f'the detector signature {tflite_convert.INPUT_NAME!r} -> '
                       f'{sorted(tflite_convert.OP_OUTPUT_ORDER)}')
    self._input = inputs[tflite_convert.INPUT_NAME]
    expected = [1] + list(self.input_size) + [preprocess.RGB_CHANNELS]
    if list(self._input['shape']) != expected:
      raise ValueError(f'{path}: input shape {list(self._input["shape"])} does not match '
                       f'the metadata input size {expected}')
    self._to_dataset = np.array([UNKNOWN] + list(self.info['dataset_ids']), np.int64)

  @property
  def input_size(self):
    """(H, W) of the network input."""
    return tuple(int(s) for s in self.info['input_size'])

  @property
  def box_frame_size(self):
    """(H, W) the op's boxes are normalized to: the input frame (metadata `box_frame`
    'input', version 2), or the padded frame for files of version 1, which had none."""
    if self.info.get('box_frame') == tflite_convert.BOX_FRAME:
      return self.input_size
    return tuple(int(s) for s in self.info['padded_size'])

  @property
  def input_dtype(self):
    return np.dtype(self._input['dtype'])

  def run_network(self, pixels: np.ndarray) -> Dict[str, np.ndarray]:
    """Runs the model on one network-size input.

    Args:
      pixels: `[H, W, 3]` or `[1, H, W, 3]` float pixel values in [0, 255], already
        resized (and padded) to `input_size`.

    Returns:
      The op's outputs: detection_boxes `[1, K, 4]` normalized yxyx of
      `box_frame_size`, detection_classes `[1, K]` int32 CONTIGUOUS indices,
      detection_scores `[1, K]`, num_detections `[1]` int32.
    """
    pixels = np.asarray(pixels, np.float32).reshape(self._input['shape'])
    if self.input_dtype == np.float32:
      value = pixels
    else:
      scale, zero_point = self._input['quantization']
      info = np.iinfo(self.input_dtype)
      value = np.clip(np.round(pixels / scale + zero_point), info.min, info.max)
      value = value.astype(self.input_dtype)
    out = self._runner(**{tflite_convert.INPUT_NAME: value})
    num = np.asarray(out['num_detections']).astype(np.int32).reshape([1])
    # Rows past num_detections are not written by the op's fast NMS (measured: stale
    # values such as 2.35e37 in the class output); zero them.
    valid = np.arange(np.shape(out['detection_scores'])[1])[np.newaxis] < num[0]
    classes = np.where(valid, out['detection_classes'], 0.0)
    return {
        'detection_boxes': np.where(valid[..., np.newaxis], out['detection_boxes'],
                                    0.0).astype(np.float32),
        'detection_classes': np.round(classes).astype(np.int32) + OP_CLASS_OFFSET,
        'detection_scores': np.where(valid, out['detection_scores'], 0.0).astype(np.float32),
        'num_detections': num,
    }

  def _to_original(self, raw: Mapping[str, np.ndarray], image_info) -> Dict[str, np.ndarray]:
    """Original pixels; drops zero-area boxes and classes without a dataset id;
    classes stay contiguous."""
    boxes = postprocess.map_boxes_to_original(
        raw['detection_boxes'], np.asarray(image_info, np.float32).reshape([1, 4, 2]),
        self.box_frame_size).numpy()[0]
    n = int(raw['num_detections'][0])
    # Classes past the category table (only in files written before tail outputs were
    # cut from the export) have no dataset id: dropped like zero-area boxes.
    num_real = len(self.info['dataset_ids'])
    keep = [k for k in range(n)
            if boxes[k, 2] > boxes[k, 0] and boxes[k, 3] > boxes[k, 1] and
            1 <= raw['detection_classes'][0, k] <= num_real]
    size = boxes.shape[0]
    out_boxes = np.zeros([1, size, 4], np.float32)
    out_scores = np.zeros([1, size], np.float32)
    out_classes = np.zeros([1, size], np.int32)
    out_boxes[0, :len(keep)] = boxes[keep]
    out_scores[0, :len(keep)] = raw['detection_scores'][0, keep]
    out_classes[0, :len(keep)] = raw['detection_classes'][0, keep]
    return {'detection_boxes': out_boxes, 'detection_scores': out_scores,
            'detection_classes': out_classes,
            'num_detections': np.array([len(keep)], np.int32)}

  def __call__(self, image) -> Dict[str, np.ndarray]:
    """One RGB image (uint8 `[h, w, 3]` or `[1, h, w, 3]`, any size) -> detections in
    original pixels with dataset ids (module docstring)."""
    image = np.asarray(image)
    if image.ndim == 4 and image.shape[0] == 1:
      image = image[0]
    if image.ndim != 3 or image.shape[-1] != preprocess.RGB_CHANNELS or min(
        image.shape[:2]) < 1:
      raise ValueError(f'expected one RGB image [h, w, 3], got shape {image.shape}')
    prepared, image_info = serving_inputs.prepare_image(
        tf.constant(image), self.input_size, self.info['resize_mode'])
    pixels = serving_inputs.normalized_to_pixels(prepared).numpy()
    out = self._to_original(self.run_network(pixels), image_info.numpy())
    n = int(out['num_detections'][0])
    classes = out['detection_classes'][0]
    inside = (classes >= 0) & (classes < len(self._to_dataset))
    ids = np.full(classes.shape, UNKNOWN, np.int32)
    ids[inside] = self._to_dataset[classes[inside]]
    ids[n:] = UNKNOWN
    out['detection_classes'] = ids[np.newaxis]
    return out
