"""Structure checks of exported .tflite detectors, op by op (test helper).

Ops are read from the flatbuffer by `mnv2_det.export.edgetpu.operators`: (op name,
sorted set of input tensor types, sorted set of output tensor types), in file order.

int8 (`check_int8_graph`): the uint8 input's QUANTIZE first; then only integer ops
(int8 activations and weights; int32 only as conv biases and shape / index operands);
the last three ops are the two DEQUANTIZEs and the float TFLite_Detection_PostProcess.
The op counts follow from the Keras model's layers (independently of the converter).

fp16 (`check_fp16_graph`): the fp32 graph with every float constant stored as float16
and a DEQUANTIZE (float16 -> float32) per constant; no float32 constant left.
"""

import collections

import numpy as np
import tensorflow as tf
import tf_keras
from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

from mnv2_det.export import edgetpu
from mnv2_det.export import tflite_postprocess

POSTPROCESS_OP = tflite_postprocess.OP_NAME
INT8 = ('INT8',)
INT8_AND_INT32 = ('INT32', 'INT8')  # Sorted type names, as edgetpu.operators gives them.
FLOAT32 = ('FLOAT32',)
# Every op between the QUANTIZE and the DEQUANTIZEs: (input types, output types).
INT8_BODY_TYPES = {
    'CONV_2D': (INT8_AND_INT32, INT8),  # int8 input and weights, int32 bias.
    'DEPTHWISE_CONV_2D': (INT8_AND_INT32, INT8),
    'ADD': (INT8, INT8),
    'MUL': (INT8, INT8),
    'MINIMUM': (INT8, INT8),
    'MAXIMUM': (INT8, INT8),
    'CONCATENATION': (INT8, INT8),
    'LOGISTIC': (INT8, INT8),
    'RESHAPE': (INT8_AND_INT32, INT8),  # int32 shape operand.
    'STRIDED_SLICE': (INT8_AND_INT32, INT8),  # int32 begin / end / strides.
}
INT8_HEAD = [('QUANTIZE', ('UINT8',), INT8)]
INT8_TAIL = [('DEQUANTIZE', INT8, FLOAT32)] * 2 + [(POSTPROCESS_OP, FLOAT32, FLOAT32)]
# Ops the int8 graph has and the fp32 graph has not: input / output (de)quantization
# and the per-level clip (tflite_convert.INT8_LOGIT_CLIP) as MINIMUM + MAXIMUM.
INT8_ONLY_OPS = ('QUANTIZE', 'DEQUANTIZE', 'MINIMUM', 'MAXIMUM')
_TYPE_NAMES = {v: k for k, v in vars(schema_fb.TensorType).items()
               if not k.startswith('_')}


def keras_layer_counts(model) -> collections.Counter:
  """{layer class name: count} over the Keras model's nested layers."""
  return collections.Counter(type(layer).__name__ for layer in model.submodules
                             if isinstance(layer, tf_keras.layers.Layer))


def num_levels(model) -> int:
  h, w = model.input_size
  cls_outputs, _ = model.raw_outputs(tf.zeros([1, h, w, 3]), training=False)
  return len(cls_outputs)


def expected_int8_counts(model) -> collections.Counter:
  """Op counts of the int8 detector of `model`, from its Keras layers.

  BN folds into the convs and ReLU6 into their activation; (2/255)·x − 1 is one MUL
  and one ADD; each of the L levels' logits and box codes is clipped (MINIMUM +
  MAXIMUM) and flattened (RESHAPE); one CONCATENATION each; the score columns cut
  (STRIDED_SLICE) and sigmoid (LOGISTIC).
  """
  layers = keras_layer_counts(model)
  levels = num_levels(model)
  return collections.Counter({
      'QUANTIZE': 1, 'MUL': 1, 'ADD': layers['Add'] + 1,
      'CONV_2D': layers['Conv2D'], 'DEPTHWISE_CONV_2D': layers['DepthwiseConv2D'],
      'MINIMUM': 2 * levels, 'MAXIMUM': 2 * levels, 'RESHAPE': 2 * levels,
      'CONCATENATION': 2, 'STRIDED_SLICE': 1, 'LOGISTIC': 1,
      'DEQUANTIZE': 2, POSTPROCESS_OP: 1})


def check_int8_graph(int8_path: str, fp32_path: str, model) -> list:
  """Asserts the int8 graph (module docstring); returns its ops."""
  ops = edgetpu.operators(int8_path)
  assert ops[:1] == INT8_HEAD, ops[:1]
  assert ops[-3:] == INT8_TAIL, ops[-3:]
  float_ops = [(i, op) for i, op in enumerate(ops[1:-3], 1)
               if op[0] not in INT8_BODY_TYPES or op[1:] != INT8_BODY_TYPES[op[0]]]
  assert not float_ops, f'ops that are not int8 between QUANTIZE and DEQUANTIZE: {float_ops}'
  names = [name for name, _, _ in ops]
  assert collections.Counter(names) == expected_int8_counts(model)
  # Same ops in the same order as the float graph, besides the int8-only ones.
  assert [n for n in names if n not in INT8_ONLY_OPS] == [
      name for name, _, _ in edgetpu.operators(fp32_path)]
  return ops


def constant_types(path: str) -> collections.Counter:
  """{tensor type name: count} of the tensors with data (constants) of subgraph 0."""
  model = flatbuffer_utils.read_model(path)
  counts = collections.Counter()
  for tensor in model.subgraphs[0].tensors:
    data = model.buffers[tensor.buffer].data
    if data is not None and np.size(data):
      counts[_TYPE_NAMES[tensor.type]] += 1
  return counts


def check_fp16_graph(fp16_path: str, fp32_path: str) -> None:
  """Asserts the fp16 graph (module docstring)."""
  fp32_constants, fp16_constants = constant_types(fp32_path), constant_types(fp16_path)
  num_float = fp32_constants['FLOAT32']
  assert num_float > 0 and 'FLOAT16' not in fp32_constants
  assert fp16_constants == collections.Counter(
      {**{k: v for k, v in fp32_constants.items() if k != 'FLOAT32'}, 'FLOAT16': num_float})
  ops = edgetpu.operators(fp16_path)
  dequantize = ('DEQUANTIZE', ('FLOAT16',), FLOAT32)
  assert ops.count(dequantize) == num_float
  assert [op for op in ops if op != dequantize] == edgetpu.operators(fp32_path)


def postprocess_inputs(path: str, pixels_batch) -> tuple:
  """The post-process op's inputs for each `[H, W, 3]` float pixel array of
  `pixels_batch` (already resized to the input): box codes `[n, N, 4]` and sigmoid
  scores `[n, N, K + 1]` (every anchor, background column included), float32, read
  from the interpreter with all tensors preserved. The model must have a float input
  (fp32 / fp16)."""
  from ai_edge_litert.interpreter import Interpreter  # pylint: disable=g-import-not-at-top
  interpreter = Interpreter(model_path=path, experimental_preserve_all_tensors=True,
                            num_threads=1)
  interpreter.allocate_tensors()
  (op,) = [o for o in interpreter._get_ops_details()  # pylint: disable=protected-access
           if o['op_name'] == POSTPROCESS_OP]
  codes_index, scores_index = op['inputs'][:2]
  (image,) = interpreter.get_input_details()
  codes, scores = [], []
  for pixels in pixels_batch:
    interpreter.set_tensor(image['index'],
                           np.asarray(pixels, np.float32).reshape(image['shape']))
    interpreter.invoke()
    codes.append(interpreter.get_tensor(codes_index)[0].copy())
    scores.append(interpreter.get_tensor(scores_index)[0].copy())
  return np.stack(codes), np.stack(scores)
