"""TFLite export: the whole detector (conv body + `TFLite_Detection_PostProcess`).

Graph input `images` `[1, H, W, 3]` at the config's `input_size`, RGB pixel values
in [0, 255]: float32 for fp32 / fp16, uint8 for int8 (its quantization is whatever
calibration gives, ~scale 1, zero point 0; `TFLiteDetector` reads it). Resizing happens
OUTSIDE the model (as the eval pipeline does it; `TFLiteDetector` uses the same TF
functions); normalization (2/255)·x − 1 is inside. Outputs (float32): the op's
detection_boxes `[1, K, 4]` normalized yxyx of the network input frame (the anchors
fed to the op are in that frame, docs/frames.md),
detection_classes `[1, K]` 0-based real class (contiguous index − 1),
detection_scores `[1, K]`, num_detections `[1]` (see tflite_postprocess).

Quantization (`quant`):
  fp32: none.
  fp16: `Optimize.DEFAULT` + `supported_types = [float16]` (fp16 weights).
  int8: full-integer conv body (`TFLITE_BUILTINS_INT8`), calibrated on
    representative images from the TRAINING pipeline without augmentation
    (`representative_images`) or from any folder (`calibration.folder_images`); uint8
    input; two DEQUANTIZE ops feed the float custom op, which outputs float32. Before
    the per-level outputs are concatenated, class logits are clipped to
    +-INT8_LOGIT_CLIP and box codes to +-INT8_BOX_CODE_CLIP (see there).
    A quantization-aware trained model (`modeling/qat.py`, `qat.is_quantized`) takes
    every range from training instead, with no representative images and no clip
    (its head is trained on those ranges): `tflite_qat`. It exports as int8 only.
Cost: regular (per-class) NMS considers every (anchor, class) score above the
threshold; with the OD API threshold 1e-8 that is nearly all of them, which for 91
classes at 320x320 cost ~140 ms per image here (random weights) against ~25 ms for the
network. For on-device use raise it (`--params_override
task.model.detection_generator.score_threshold=0.05`) or export with fast NMS.

The file carries a JSON metadata entry (METADATA_NAME) with input size, padded size,
resize mode, dataset ids / names and NMS settings, read back by `TFLiteDetector`, and
the standard TFLite Model Metadata (`TFLITE_METADATA` + a zip-appended label file) that
MediaPipe / the TFLite Task Library need (`tflite_metadata`); the subgraph outputs are
in the op's order boxes, classes, scores, num_detections.

Classes: only the category table's K classes are exported (score columns 0..K, op
`num_classes` K, metadata `num_classes` K + 1 with K ids / names); head outputs past K
(e.g. 91 outputs for COCO's 80 categories) have no dataset id and are cut.
"""

import json
import os
from typing import Callable, Dict, List, Optional, Sequence

from absl import logging
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.data import preprocess
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.export import atomic
from mnv2_det.core import errors
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.export import saved_model
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite_metadata
from mnv2_det.export import tflite_postprocess
from mnv2_det.export import tflite_qat
from mnv2_det.modeling import qat
from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.ops import box_coder

QUANT_TYPES = ('fp32', 'fp16', 'int8')
DEFAULT_REPRESENTATIVE_IMAGES = 100
METADATA_NAME = 'mnv2_det_detector'
METADATA_FORMAT = 'mnv2_det.tflite_detector'
# 2: boxes normalized to the input frame (`box_frame`); 1 had them in the padded frame.
METADATA_VERSION = 2
BOX_FRAME = 'input'
INPUT_NAME = 'images'
# The TFLite_Detection_PostProcess op's outputs, in ITS order (classes before scores;
# postprocess.DETECTION_KEYS is the dict order everywhere else).
OP_OUTPUT_ORDER = ('detection_boxes', 'detection_classes', 'detection_scores',
                   'num_detections')
# int8 only. An int8 CONCATENATION gives all its inputs ONE scale, so the six levels'
# class logits share the range of the most extreme one: on the trained shapes model
# (runs/shapes, ckpt-2400) calibration saw logits over a range of 268, i.e. a step of
# 1.05 (sigmoid 0.5 -> 0.74 in one step), and box codes over 54.6 (step 0.21). Clipping
# first bounds the ranges to 20 and 24 (steps 0.08 and 0.09). Scores below
# sigmoid(-10) = 4.5e-5 become equal; a positive anchor's box code (OD API scales
# 10, 10, 5, 5) stays well inside +-12 (a 0.5-IoU match is within ~+-4).
# Measured val AP, int8 without / with clipping: 0.510 / 0.519 on that model (float
# 0.541), 0.626 / 0.632 on the 4096-image main-job model (float 0.637); see README.
INT8_LOGIT_CLIP = qat.INT8_LOGIT_RANGE
INT8_BOX_CODE_CLIP = qat.INT8_BOX_CODE_RANGE
# int8 only. The uint8 input must mean pixel values (scale 1, zero point 0): MediaPipe
# and the Task Library feed raw uint8 pixels. Calibrated from the representative
# images alone, the input's scale is their range (max 246 gives 0.9645, and MediaPipe's
# detections then differ from the model's). `pixel_input_quantization` rewrites it.
PIXEL_INPUT_QUANTIZATION = (1.0, 0)
TFLITE_BATCH_SIZE = 1


def check_quant(quant: str) -> str:
  if quant not in QUANT_TYPES:
    raise ValueError(f'quant {quant!r} is not one of {QUANT_TYPES}')
  return quant


class TFLiteGraph(tf.Module):
  """Pixels -> detector outputs, as the TFLite converter should see them.

  Tracks only the Keras model's variables (see saved_model._InferenceModel).
  """

  def __init__(self, model, input_size: Sequence[int], num_classes: int,
               postprocess_config: tflite_postprocess.PostProcessConfig,
               clip_outputs: bool = False, quantization_aware: bool = False):
    super().__init__(name='ssdlite_tflite')
    self._clip_outputs = clip_outputs
    self.quantization_aware = quantization_aware
    self.model_variables = list(model.variables)
    self._model_raw_outputs = model.raw_outputs
    self._input_size = [int(s) for s in input_size[:2]]
    self._num_classes = int(num_classes)
    # Score columns fed to the op: background + its real classes.
    self._num_score_columns = int(postprocess_config.num_classes) + 1
    if not 2 <= self._num_score_columns <= self._num_classes:
      raise ValueError(f'the TFLite op\'s num_classes ({postprocess_config.num_classes}) '
                       f'must be in 1..{self._num_classes - 1} (the head has '
                       f'{self._num_classes} outputs, background included)')
    self._anchors = tflite_postprocess.center_size_anchors(model.anchor_boxes)
    self._postprocess = tflite_postprocess.make_postprocess_fn(postprocess_config)

  def raw_outputs(self, pixels):
    """`[1, H, W, 3]` pixels in [0, 255] -> box codes `[1, N, 4]`, sigmoid
    `[1, N, K + 1]` (background + the op's K = `postprocess_config.num_classes` real
    classes; head outputs past K, which have no dataset id, are dropped).

    `SSDLiteModel.raw_outputs` (inference mode, no TF post-processing) flattened in
    anchor order; with `clip_outputs`, each level's logits and box codes clipped first
    (INT8_LOGIT_CLIP).
    """
    if self.quantization_aware:
      images = tflite_qat.normalize(pixels)
    else:
      images = preprocess.normalize_image(pixels)
    cls_outputs, box_outputs = self._model_raw_outputs(images, training=False)
    if self._clip_outputs:
      cls_outputs = _clip_levels(cls_outputs, INT8_LOGIT_CLIP)
      box_outputs = _clip_levels(box_outputs, INT8_BOX_CODE_CLIP)
    n = self._anchors.shape[0]
    box_codes = tf.reshape(anchor_ops.flatten_levels(box_outputs, box_coder.CODE_SIZE),
                           [TFLITE_BATCH_SIZE, n, box_coder.CODE_SIZE])
    logits = tf.reshape(anchor_ops.flatten_levels(cls_outputs, self._num_classes),
                        [TFLITE_BATCH_SIZE, n, self._num_classes])
    logits = logits[:, :, :self._num_score_columns]
    return tf.cast(box_codes, tf.float32), tf.sigmoid(tf.cast(logits, tf.float32))

  @tf.function
  def detect(self, images):
    box_codes, scores = self.raw_outputs(images)
    outputs = self._postprocess(box_codes, scores, tf.constant(self._anchors))
    return dict(zip(OP_OUTPUT_ORDER, outputs))

  def concrete_function(self):
    spec = tf.TensorSpec([TFLITE_BATCH_SIZE] + self._input_size + [preprocess.RGB_CHANNELS],
                         tf.float32, name=INPUT_NAME)
    return self.detect.get_concrete_function(spec)


def _clip_levels(levels: Dict[str, tf.Tensor], bound: float) -> Dict[str, tf.Tensor]:
  return {k: tf.clip_by_value(v, -bound, bound) for k, v in levels.items()}


def postprocess_config(params, use_regular_nms: bool = True,
                       num_real_classes: Optional[int] = None
                       ) -> tflite_postprocess.PostProcessConfig:
  """The op's attributes; its `num_classes` is `num_real_classes` (the category
  table's K; None: the head's num_classes - 1)."""
  s = loading.detection_settings(params)
  if num_real_classes is None:
    num_real_classes = s['num_classes'] - 1
  if s['max_detections_per_class'] != tflite_postprocess.KERNEL_DETECTIONS_PER_CLASS:
    logging.warning('max_detections_per_class=%d is not carried into the TFLite op; it '
                    'keeps %d per class', s['max_detections_per_class'],
                    tflite_postprocess.KERNEL_DETECTIONS_PER_CLASS)
  return tflite_postprocess.PostProcessConfig(
      num_classes=int(num_real_classes), max_detections=s['max_num_detections'],
      detections_per_class=s['max_detections_per_class'],
      score_threshold=s['score_threshold'], iou_threshold=s['iou_threshold'],
      use_regular_nms=use_regular_nms)


def representative_images(task, params, num_images: int = DEFAULT_REPRESENTATIVE_IMAGES
                          ) -> List[np.ndarray]:
  """Calibration inputs: `num_images` `[1, H, W, 3]` float32 pixel arrays in [0, 255]
  from the task's TRAINING pipeline with augmentation off (flip and crop disabled),
  shuffled with a fixed seed (`params.unaugmented_train_data`).

  Raises:
    ValueError: num_images < 1, or the training data cannot be read.
  """
  params_lib.optional_int(num_images, 'representative image count')
  data = params_lib.unaugmented_train_data(params, TFLITE_BATCH_SIZE)
  source = data.annotation_file or data.input_path
  try:
    dataset = task.build_inputs(data)
    images = [serving_inputs.normalized_to_pixels(image).numpy()
              for image, _ in dataset.take(num_images)]
  except (tf.errors.OpError, OSError, ValueError) as e:
    raise ValueError(f'int8 quantization needs representative images from '
                     f'task.train_data ({source or "not set"}): '
                     f'{errors.first_line(e)}') from e
  if not images:
    raise ValueError(f'task.train_data ({source}) yielded no representative images')
  return images


def convert(graph: TFLiteGraph, quant: str,
            representative: Optional[Sequence[np.ndarray]] = None) -> bytes:
  """Runs the TFLite converter on `graph` (module docstring for `quant`).

  Raises:
    ValueError: unknown quant, int8 without representative images (with them, for a
      `quantization_aware` graph), or a QAT graph that is not full-integer.
  """
  check_conversion_inputs(quant, graph.quantization_aware, representative)
  converter = tf.lite.TFLiteConverter.from_concrete_functions(
      [graph.concrete_function()], graph)
  converter.allow_custom_ops = True  # TFLite_Detection_PostProcess.
  if graph.quantization_aware:
    return pixel_input_quantization(tflite_qat.convert_int8(converter))
  if quant == 'fp16':
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
  elif quant == 'int8':
    samples = [np.asarray(x, np.float32) for x in representative]
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([x] for x in samples)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    # Outputs stay float32: DEQUANTIZE ops feed the float custom op.
    return pixel_input_quantization(converter.convert())
  return converter.convert()


def check_conversion_inputs(quant: str, quantization_aware: bool, representative) -> None:
  """Raises ValueError unless `quant` with `representative` can convert: int8 of a float
  model needs representative images; a quantization-aware model is int8 only and takes
  none."""
  check_quant(quant)
  if not quantization_aware:
    if quant == 'int8' and not representative:
      raise ValueError('int8 quantization needs representative data: pass representative '
                       'images from the training set (e.g. representative_images(task, '
                       'params, 100))')
    return
  if quant != 'int8':
    raise ValueError(f'a quantization-aware trained model exports as int8, not {quant} '
                     '(its float model is task.quantization.pretrained_original_checkpoint)')
  if representative:
    raise ValueError('a quantization-aware trained model takes its int8 ranges from '
                     'training: representative / calibration images do not apply')


def pixel_input_quantization(tflite_model: bytes) -> bytes:
  """The int8 model with its uint8 input quantized as pixel values
  (PIXEL_INPUT_QUANTIZATION).

  The converter feeds the uint8 input to a QUANTIZE op (uint8 -> the int8 of the first
  layer), which requantizes with both tensors' parameters; so with the input's
  parameters set to scale 1, zero point 0 a pixel value p means p, and the int8 tensor
  after it is unchanged for every p in the calibrated range (above it, it saturates
  at the range's top, as before).

  Raises:
    ValueError: the input is not read by QUANTIZE ops only (nothing is rewritten).
  """
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
  graph = model.subgraphs[0]
  (index,) = graph.inputs
  quantize = [k for k, code in enumerate(model.operatorCodes)
              if max(code.builtinCode, code.deprecatedBuiltinCode) ==
              schema_fb.BuiltinOperator.QUANTIZE]
  readers = [op for op in graph.operators if index in list(op.inputs)]
  if not readers or any(op.opcodeIndex not in quantize for op in readers):
    raise ValueError('int8 export: the uint8 input is not read by QUANTIZE ops only; '
                     'cannot set its quantization to pixel values')
  scale, zero_point = PIXEL_INPUT_QUANTIZATION
  graph.tensors[index].quantization.scale = [scale]
  graph.tensors[index].quantization.zeroPoint = [zero_point]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def add_metadata(tflite_model: bytes, info: Dict) -> bytes:
  """Appends `info` as JSON under METADATA_NAME to the flatbuffer's metadata."""
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
  buffer = schema_fb.BufferT()
  buffer.data = np.frombuffer(json.dumps(info).encode('utf-8'), np.uint8)
  model.buffers.append(buffer)
  entry = schema_fb.MetadataT()
  entry.name = METADATA_NAME
  entry.buffer = len(model.buffers) - 1
  model.metadata = list(model.metadata or []) + [entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def tflite_detector_bytes(params, model, category_map: CategoryMap, quant: str,
                          representative: Optional[Sequence[np.ndarray]] = None,
                          use_regular_nms: bool = True, experiment: str = '',
                          extra_info: Optional[Dict] = None) -> bytes:
  """The complete .tflite file contents (converted model + metadata); `extra_info`
  is added to the JSON metadata (e.g. `tflite_presets.apply`'s preset, num_threads)."""
  check_quant(quant)
  post = postprocess_config(params, use_regular_nms,
                            num_real_classes=loading.num_real_classes(params, category_map))
  quantization_aware = qat.is_quantized(model)
  graph = TFLiteGraph(model, params.task.model.input_size, params.task.model.num_classes,
                      post, clip_outputs=quant == 'int8' and not quantization_aware,
                      quantization_aware=quantization_aware)
  tflite_model = convert(graph, quant, representative)
  info = saved_model.detector_info(
      params, category_map, format=METADATA_FORMAT, version=METADATA_VERSION,
      experiment=experiment, quantization=quant,
      quantization_aware_training=quantization_aware,
      padded_size=[int(s) for s in model.padded_size], box_frame=BOX_FRAME,
      use_regular_nms=use_regular_nms,
      input_pixel_range=[0, 255], pad_pixel_value=float(
          serving_inputs.normalized_to_pixels(preprocess.PAD_VALUE).numpy()),
      **(extra_info or {}))
  return tflite_metadata.add_detector_metadata(add_metadata(tflite_model, info), info)


def export_tflite(params, model, category_map: CategoryMap, output: str, quant: str,
                  representative: Optional[Sequence[np.ndarray]] = None,
                  use_regular_nms: bool = True, overwrite: bool = False,
                  experiment: str = '',
                  verify: Optional[Callable[[str], None]] = None,
                  extra_info: Optional[Dict] = None) -> str:
  """Writes the .tflite detector to `output` (all or nothing); returns its path.

  `verify(temp_path)`, if given, runs on the written file before it is renamed to
  `output` (e.g. a smoke run with TFLiteDetector); if it raises, nothing is left.

  Raises:
    ValueError: unknown quant, int8 without `representative` (a QAT model: with
      it, or not int8), existing output without `overwrite`.
  """
  check_conversion_inputs(quant, qat.is_quantized(model), representative)
  atomic.check_output(output, overwrite)
  contents = tflite_detector_bytes(params, model, category_map, quant, representative,
                                   use_regular_nms, experiment, extra_info)
  with atomic.atomic_output(output, is_dir=False, overwrite=overwrite) as temp:
    with open(temp, 'wb') as f:
      f.write(contents)
    if verify is not None:
      verify(temp)
  return os.path.abspath(output)
