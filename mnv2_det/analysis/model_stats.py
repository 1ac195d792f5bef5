"""Parameter and multiply-add counts of the detector (paper Table 5/6 conventions).

MAdds count the multiply-accumulates of convolutions only (regular 1x1/3x3 and
depthwise), as the MobileNetV2 paper does; BN, activations and post-processing are
not counted.
"""

from typing import Dict

import numpy as np
import tensorflow as tf

CONV_OPS = ('Conv2D', 'DepthwiseConv2dNative')


def raw_forward(model):
  """images -> (cls_outputs, box_outputs) of an SSDLiteModel, BN in inference mode."""
  return lambda images: model.raw_outputs(images, training=False)


def count_madds(fn, input_shape) -> Dict[str, int]:
  """Traces `fn` on a float32 `input_shape` tensor and sums conv multiply-adds.

  Returns `{'conv': ..., 'depthwise': ..., 'total': ...}` (ints).
  """
  graph = tf.function(fn).get_concrete_function(
      tf.TensorSpec(input_shape, tf.float32)).graph
  counts = {'conv': 0, 'depthwise': 0}
  for op in graph.get_operations():
    if op.type not in CONV_OPS:
      continue
    out = op.outputs[0].shape.as_list()
    kernel = op.inputs[1].shape.as_list()  # [kh, kw, cin, cout or multiplier]
    if None in out or None in kernel:
      raise ValueError(f'{op.name}: shapes must be static to count MAdds; got output '
                       f'{out}, kernel {kernel}')
    if op.type == 'Conv2D':
      counts['conv'] += int(np.prod(out)) * kernel[0] * kernel[1] * kernel[2]
    else:
      counts['depthwise'] += int(np.prod(out)) * kernel[0] * kernel[1]
  counts['total'] = counts['conv'] + counts['depthwise']
  return counts


def detector_stats(model, input_size) -> Dict[str, int]:
  """Params (total, backbone, SSDLite part) and MAdds at batch 1."""
  madds = count_madds(raw_forward(model), [1] + list(input_size[:2]) + [3])
  backbone_madds = count_madds(lambda x: model.backbone(x, training=False),
                               [1] + list(input_size[:2]) + [3])
  total = model.count_params()
  backbone = model.backbone.count_params()
  return {'params': total, 'backbone_params': backbone, 'ssdlite_params': total - backbone,
          'madds': madds['total'], 'backbone_madds': backbone_madds['total'],
          'ssdlite_madds': madds['total'] - backbone_madds['total']}
