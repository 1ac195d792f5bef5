"""int8 TFLite of a quantization-aware trained detector (`modeling/qat.py`).

Every tensor of the conv body carries a fake-quant range from training, so the
converter needs no representative images (Model Garden's `quant_type='qat'` does
the same: `Optimize.DEFAULT`, uint8 input). The tensors QAT does not cover are the
pixels and their normalization, which `normalize` gives FIXED ranges: pixels on
[0, 255] (uint8 input of scale 1, zero point 0: pixel values, as MediaPipe and the
Task Library feed them), pixels x 2/255 on [0, 2] (the same codes) and the
normalized image on `qat.INPUT_RANGE`, the range the QAT backbone quantizes its
input to in training. After the head, each level is already on the fixed ranges
`qat.INT8_LOGIT_RANGE` / `qat.INT8_BOX_CODE_RANGE` (so the concatenation of all
levels needs no requantization); sigmoid (LOGISTIC) has its fixed int8 output
range. Two DEQUANTIZE ops feed the float `TFLite_Detection_PostProcess` op.

`target_spec.supported_ops = [TFLITE_BUILTINS_INT8]` cannot be set here (TF 2.20's
converter checks for a representative dataset before it sees the fake-quant ops),
so `check_full_integer` checks the result instead: only DEQUANTIZE and the
post-process op may output float.
"""

from typing import List

import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.data import preprocess
from mnv2_det.export import tflite_postprocess
from mnv2_det.modeling import qat

PIXEL_RANGE = (0.0, 255.0)
_FLOAT_OUTPUT_OPS = ('DEQUANTIZE', tflite_postprocess.OP_NAME)
_INTEGER_TYPES = (schema_fb.TensorType.INT8, schema_fb.TensorType.UINT8,
                  schema_fb.TensorType.INT32)


def _fake_quant(x, value_range):
  return tf.quantization.fake_quant_with_min_max_args(
      x, min=value_range[0], max=value_range[1], num_bits=qat.NUM_BITS)


def normalize(pixels: tf.Tensor) -> tf.Tensor:
  """`preprocess.normalize_image` of float pixels `[1, H, W, 3]` in [0, 255], with the
  fixed fake-quant ranges of the module docstring on each tensor."""
  scaled = _fake_quant(_fake_quant(pixels, PIXEL_RANGE) * preprocess.PIXEL_SCALE,
                       [v * preprocess.PIXEL_SCALE for v in PIXEL_RANGE])
  return _fake_quant(scaled + preprocess.PIXEL_OFFSET, qat.INPUT_RANGE)


def convert_int8(converter: tf.lite.TFLiteConverter) -> bytes:
  """Runs `converter` (of a graph built with `normalize` around a QAT model) as the
  module docstring says; returns the flatbuffer.

  Raises:
    ValueError: the result is not full-integer (`check_full_integer`).
  """
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.inference_input_type = tf.uint8
  tflite_model = converter.convert()
  check_full_integer(tflite_model)
  return tflite_model


def float_ops(tflite_model: bytes) -> List[str]:
  """Names of the ops of `tflite_model` with a non-integer output, in graph order."""
  model = flatbuffer_utils.read_model_from_bytearray(bytearray(tflite_model))
  graph = model.subgraphs[0]
  names = []
  for op in graph.operators:
    code = model.operatorCodes[op.opcodeIndex]
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    name = (code.customCode.decode('utf-8') if code.customCode else
            _BUILTIN_NAMES.get(builtin, str(builtin)))
    if any(graph.tensors[t].type not in _INTEGER_TYPES for t in op.outputs):
      names.append(name)
  return names


_BUILTIN_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items()
                  if not k.startswith('_')}


def check_full_integer(tflite_model: bytes) -> None:
  """ValueError unless every op but DEQUANTIZE and the post-process op outputs
  integers (what `TFLITE_BUILTINS_INT8` guarantees for post-training int8)."""
  left = [name for name in float_ops(tflite_model) if name not in _FLOAT_OUTPUT_OPS]
  if left:
    raise ValueError(f'int8 export of the QAT model is not full-integer: float ops '
                     f'{sorted(set(left))} (a tensor without a fake-quant range)')
