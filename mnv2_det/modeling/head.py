"""SSDLite prediction head (MobileNetV2 paper Sec. 6.2; OD API ConvolutionalBoxPredictor
with `use_depthwise`, kernel 3, no intermediate layers).

Per level and per branch (classes, boxes): 3x3 depthwise (+BN+ReLU6), then a 1x1 conv with
bias. Kernels: truncated normal 0.03, L2 4e-5 on the 1x1 convs
(docs/reference.md, "Box predictor").

Classes are **sigmoid with a background channel**: `num_classes` includes background at
index 0, trained with one-hot targets like the other channels, as the OD API's
`add_background_class` + WeightedSigmoidClassificationLoss and Model Garden's RetinaNet do.
Sigmoid keeps classes independent, so hard-negative mining and focal loss apply per
channel, and the layout matches Model Garden's `cls_outputs`, so its losses and tools fit.
Post-processing ignores channel 0. The class bias starts at the prior
`-log((1 - p) / p)` (p = 0.01), as in RetinaNet, so early sigmoid losses are not
dominated by the thousands of background anchors.
"""

import math
from typing import Dict, Optional, Sequence

import tensorflow as tf
import tf_keras

from mnv2_det.modeling import layers as layer_lib
from mnv2_det.ops import box_coder



@tf_keras.utils.register_keras_serializable(package='mnv2_det')
class SSDLiteHead(tf_keras.layers.Layer):
  """Class logits and box codes per level.

  Input: `{level: [B, h, w, c_level]}`. Output: `(cls_outputs, box_outputs)`, dicts keyed
  like the input with `[B, h, w, A_level * num_classes]` and `[B, h, w, A_level * 4]`
  float tensors; the last axis is anchor-major (anchor, then class / code), matching the
  OD API anchor order (row-major y, x, then anchors of one location).
  """

  def __init__(self,
               levels: Sequence[str],
               num_anchors_per_location: Sequence[int],
               num_classes: int,
               kernel_size: int = 3,
               init_stddev: float = 0.03,
               weight_decay: float = 4e-5,
               class_prior_prob: float = 0.01,
               bn_momentum: float = 0.9997,
               bn_epsilon: float = 1e-3,
               use_sync_bn: bool = False,
               **kwargs):
    super().__init__(**kwargs)
    if len(levels) != len(num_anchors_per_location):
      raise ValueError(f'levels {list(levels)} and num_anchors_per_location '
                       f'{list(num_anchors_per_location)} differ in length')
    if num_classes < 2:
      raise ValueError(f'num_classes counts background too and must be >= 2; got {num_classes}')
    if not 0.0 < class_prior_prob < 1.0:
      raise ValueError(f'class_prior_prob must be in (0, 1); got {class_prior_prob}')
    self._config_dict = dict(
        levels=[str(l) for l in levels],
        num_anchors_per_location=[int(a) for a in num_anchors_per_location],
        num_classes=num_classes, kernel_size=kernel_size, init_stddev=init_stddev,
        weight_decay=weight_decay, class_prior_prob=class_prior_prob,
        bn_momentum=bn_momentum, bn_epsilon=bn_epsilon, use_sync_bn=use_sync_bn)
    bias = -math.log((1.0 - class_prior_prob) / class_prior_prob)
    self._branches = {}
    for level, anchors in zip(self._config_dict['levels'],
                              self._config_dict['num_anchors_per_location']):
      self._branches[level] = (
          self._branch(f'class_{level}', anchors * num_classes,
                       tf_keras.initializers.Constant(bias)),
          self._branch(f'box_{level}', anchors * box_coder.CODE_SIZE, 'zeros'))

  def _branch(self, name, filters, bias_initializer):
    cfg = self._config_dict
    return [
        tf_keras.layers.DepthwiseConv2D(
            cfg['kernel_size'], padding='same', use_bias=False,
            depthwise_initializer=layer_lib.truncated_normal(cfg['init_stddev']),
            name=f'{name}_depthwise'),
        layer_lib.batch_norm(cfg['bn_momentum'], cfg['bn_epsilon'], cfg['use_sync_bn'],
                             f'{name}_depthwise_bn'),
        tf_keras.layers.ReLU(6.0),
        tf_keras.layers.Conv2D(
            filters, 1, kernel_initializer=layer_lib.truncated_normal(cfg['init_stddev']),
            kernel_regularizer=layer_lib.l2_decay(cfg['weight_decay']),
            bias_initializer=bias_initializer, name=f'{name}_predictor'),
    ]

  def call(self, features: Dict[str, tf.Tensor], training: Optional[bool] = None):
    cls_outputs, box_outputs = {}, {}
    for level, (cls_ops, box_ops) in self._branches.items():
      cls_outputs[level] = layer_lib.apply_sequence(cls_ops, features[level], training)
      box_outputs[level] = layer_lib.apply_sequence(box_ops, features[level], training)
    return cls_outputs, box_outputs

  def get_config(self):
    return {**super().get_config(), **self._config_dict}

