"""Edge TPU readiness of an exported int8 .tflite, on paper (docs/edgetpu.md).

The Edge TPU compiler cannot be installed here, so this reads the model's operators
from the flatbuffer and compares them with the compiler's supported-operation table
as Coral documents it ("TensorFlow models on the Edge TPU"; the compiler maps int8 /
uint8 ops with static shapes). The compiler maps one contiguous run of supported ops
from the start of the graph; from the first op it cannot map on, everything runs on
the CPU. `report` says which ops those are.

    python -m mnv2_det.export.edgetpu exports/shapes_int8.tflite
"""

import collections
import sys
from typing import Dict, List, Tuple

from tensorflow.lite.python import schema_py_generated as schema_fb
from tensorflow.lite.tools import flatbuffer_utils

# Builtin ops the Edge TPU compiler maps (Coral's table, TFLite names), those our
# graphs could contain and a few neighbours; each has conditions there (int8 / uint8,
# static shapes, <= 4-D, e.g. STRIDED_SLICE with strides 1, PAD on H / W).
EDGETPU_OPS = frozenset({
    'ADD', 'AVERAGE_POOL_2D', 'CONCATENATION', 'CONV_2D', 'DEPTHWISE_CONV_2D',
    'EXPAND_DIMS', 'FULLY_CONNECTED', 'L2_NORMALIZATION', 'LOGISTIC', 'MAXIMUM',
    'MAX_POOL_2D', 'MEAN', 'MINIMUM', 'MUL', 'PACK', 'PAD', 'PRELU', 'QUANTIZE',
    'REDUCE_MAX', 'REDUCE_MIN', 'RELU', 'RELU6', 'RELU_N1_TO_1', 'RESHAPE',
    'RESIZE_BILINEAR', 'RESIZE_NEAREST_NEIGHBOR', 'RSQRT', 'SLICE', 'SOFTMAX',
    'SPACE_TO_DEPTH', 'SPLIT', 'SQUARED_DIFFERENCE', 'SQUEEZE', 'STRIDED_SLICE', 'SUB',
    'SUM', 'TANH', 'TRANSPOSE', 'TRANSPOSE_CONV'})
QUANTIZED_TYPES = ('INT8', 'UINT8')
_OP_NAMES = {v: k for k, v in vars(schema_fb.BuiltinOperator).items()
             if not k.startswith('_')}
_TYPE_NAMES = {v: k for k, v in vars(schema_fb.TensorType).items()
               if not k.startswith('_')}


def operators(path: str) -> List[Tuple[str, Tuple[str, ...], Tuple[str, ...]]]:
  """(op name, input tensor types, output tensor types) of subgraph 0, in order;
  custom ops by their custom code."""
  model = flatbuffer_utils.read_model(path)
  subgraph = model.subgraphs[0]
  ops = []
  for op in subgraph.operators:
    name = _op_name(model, op)
    types = lambda indices: tuple(sorted({_TYPE_NAMES[subgraph.tensors[i].type]
                                          for i in indices if i >= 0}))
    ops.append((name, types(op.inputs), types(op.outputs)))
  return ops


def _mappable(name: str, outputs: Tuple[str, ...]) -> bool:
  return name in EDGETPU_OPS and all(t in QUANTIZED_TYPES for t in outputs)


def _op_name(model, op) -> str:
  code = model.operatorCodes[op.opcodeIndex]
  if code.customCode:
    return bytes(code.customCode).decode('utf-8')
  return _OP_NAMES[max(code.builtinCode, code.deprecatedBuiltinCode)]


def mappable_ops_first(model) -> int:
  """Reorders subgraph 0's operators of `model` (flatbuffer object API, in place) so
  that every op the Edge TPU can map comes before the first one it cannot, as far as
  data dependencies allow; returns the number of ops that moved.

  The converter interleaves the two head branches at the end: box codes
  (concat -> DEQUANTIZE) come before the class branch's last reshapes / concat /
  slice / LOGISTIC, so read in file order the compiler would stop at that DEQUANTIZE
  and leave 7 supported int8 ops on the CPU. The new order is a topological order
  (TFLite runs operators in file order), the same as before for a float model.
  """
  subgraph = model.subgraphs[0]
  ops = list(subgraph.operators)
  producer = {int(t): i for i, op in enumerate(ops) for t in op.outputs}
  deps = [{producer[int(t)] for t in op.inputs if int(t) in producer} for op in ops]
  mappable = [_mappable(_op_name(model, op),
                        tuple(_TYPE_NAMES[subgraph.tensors[t].type] for t in op.outputs))
              for op in ops]
  order, done = [], set()
  while len(order) < len(ops):
    ready = [i for i in range(len(ops)) if i not in done and deps[i] <= done]
    pick = next((i for i in ready if mappable[i]), ready[0])
    order.append(pick)
    done.add(pick)
  subgraph.operators = [ops[i] for i in order]
  return sum(1 for position, i in enumerate(order) if position != i)


def report(path: str) -> Dict[str, object]:
  """{'counts': {op: n}, 'edgetpu_ops': n, 'cpu_ops': [(index, name)], 'first_cpu_op'}:
  the ops from the first one the compiler cannot map on run on the CPU."""
  ops = operators(path)
  first = next((i for i, (name, _, outs) in enumerate(ops) if not _mappable(name, outs)),
               len(ops))
  return {'counts': dict(collections.Counter(name for name, _, _ in ops)),
          'edgetpu_ops': first,
          'cpu_ops': [(i, ops[i][0]) for i in range(first, len(ops))],
          'first_cpu_op': ops[first][0] if first < len(ops) else None}


def main(argv=None) -> int:
  argv = sys.argv[1:] if argv is None else argv
  for path in argv:
    r = report(path)
    print(path)
    for (name, ins, outs), count in sorted(collections.Counter(operators(path)).items()):
      where = 'Edge TPU' if _mappable(name, outs) else 'CPU'
      print(f'  {count:4d} x {name:30s} {"/".join(ins):14s} -> {"/".join(outs):8s} {where}')
    print(f'  {r["edgetpu_ops"]} ops before the first CPU op; on the CPU: '
          f'{[name for _, name in r["cpu_ops"]]}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
