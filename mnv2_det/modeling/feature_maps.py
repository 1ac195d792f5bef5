"""SSD feature maps: two backbone endpoints plus four stride-2 extra layers.

OD API `ssd_mobilenet_v2` feature extractor with `use_depthwise` (SSDLite, MobileNetV2
paper Sec. 6.2): `from_layer = ['layer_15/expansion_output', 'layer_19', '', '', '', '']`,
`layer_depth = [-1, -1, 512, 256, 256, 128]`. Each extra layer is a 1x1 conv to depth/2
(+BN+ReLU6), then a 3x3 stride-2 depthwise (+BN+ReLU6) and a 1x1 conv to depth (+BN+ReLU6).
Depths follow the depth multiplier with `max(int(d * multiplier), min_depth)`, min_depth 16.
"""

from typing import Dict, Optional, Sequence

import tf_keras

from mnv2_det.modeling import layers as layer_lib
from mnv2_det.ops import anchors as anchor_ops

BASE_ENDPOINTS = ('layer_15/expansion_output', 'layer_19')


@tf_keras.utils.register_keras_serializable(package='mnv2_det')
class SSDFeatureMaps(tf_keras.layers.Layer):
  """Maps backbone endpoints to a dict of SSD feature maps keyed by level.

  Input: `{'layer_15/expansion_output': [B, H/16, W/16, C15], 'layer_19': [B, H/32, W/32,
  C19]}` (H, W padded to a multiple of 32). Output: `{'4': ..., '5': ..., '6': [B, H/64,
  W/64, d0], ..., '9': [B, H/512, W/512, d3]}` where each extra spatial size is
  `ceil(previous / 2)` ('SAME' padding), float tensors.
  """

  def __init__(self,
               layer_depths: Sequence[int] = (512, 256, 256, 128),
               depth_multiplier: float = 1.0,
               min_depth: int = 16,
               use_depthwise: bool = True,
               weight_decay: float = 4e-5,
               init_stddev: float = 0.03,
               bn_momentum: float = 0.9997,
               bn_epsilon: float = 1e-3,
               use_sync_bn: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    self._config_dict = dict(
        layer_depths=list(layer_depths), depth_multiplier=depth_multiplier,
        min_depth=min_depth, use_depthwise=use_depthwise, weight_decay=weight_decay,
        init_stddev=init_stddev, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        use_sync_bn=use_sync_bn)
    self._extra = [self._extra_layer(i, d) for i, d in enumerate(layer_depths)]

  def _depth(self, depth):
    cfg = self._config_dict
    return max(int(depth * cfg['depth_multiplier']), cfg['min_depth'])

  def _extra_layer(self, index, depth):
    cfg = self._config_dict
    level = anchor_ops.FIRST_LEVEL + 2 + index
    reg = layer_lib.l2_decay(cfg['weight_decay'])

    def conv(filters, kernel, stride, name):
      return tf_keras.layers.Conv2D(
          filters, kernel, strides=stride, padding='same', use_bias=False,
          kernel_initializer=layer_lib.truncated_normal(cfg['init_stddev']),
          kernel_regularizer=reg, name=name)

    def bn(name):
      return layer_lib.batch_norm(cfg['bn_momentum'], cfg['bn_epsilon'],
                                  cfg['use_sync_bn'], name)

    prefix = f'level_{level}'
    ops = [conv(self._depth(depth // 2), 1, 1, f'{prefix}_1x1'), bn(f'{prefix}_1x1_bn'),
           tf_keras.layers.ReLU(6.0)]
    if cfg['use_depthwise']:
      ops += [tf_keras.layers.DepthwiseConv2D(
                  3, strides=2, padding='same', use_bias=False,
                  depthwise_initializer=layer_lib.truncated_normal(cfg['init_stddev']),
                  name=f'{prefix}_3x3_s2_depthwise'),
              bn(f'{prefix}_3x3_s2_depthwise_bn'), tf_keras.layers.ReLU(6.0),
              conv(self._depth(depth), 1, 1, f'{prefix}_3x3_s2_pointwise')]
    else:
      ops.append(conv(self._depth(depth), 3, 2, f'{prefix}_3x3_s2'))
    ops += [bn(f'{prefix}_out_bn'), tf_keras.layers.ReLU(6.0)]
    return ops

  def call(self, endpoints: Dict[str, 'tf.Tensor'], training: Optional[bool] = None):
    missing = [e for e in BASE_ENDPOINTS if e not in endpoints]
    if missing:
      raise ValueError(f'SSDFeatureMaps needs backbone endpoints {list(BASE_ENDPOINTS)}; '
                       f'missing {missing} in {sorted(endpoints)}')
    outputs = {str(anchor_ops.FIRST_LEVEL): endpoints[BASE_ENDPOINTS[0]],
               str(anchor_ops.FIRST_LEVEL + 1): endpoints[BASE_ENDPOINTS[1]]}
    x = outputs[str(anchor_ops.FIRST_LEVEL + 1)]
    for index, ops in enumerate(self._extra):
      x = layer_lib.apply_sequence(ops, x, training)
      outputs[str(anchor_ops.FIRST_LEVEL + 2 + index)] = x
    return outputs

  @property
  def levels(self):
    return [str(anchor_ops.FIRST_LEVEL + i) for i in range(2 + len(self._extra))]

  def get_config(self):
    return {**super().get_config(), **self._config_dict}
