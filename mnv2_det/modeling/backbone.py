"""MobileNetV2 as a multi-scale feature extractor with slim-style named endpoints.

Architecture: Sandler et al. 2018 (arXiv 1801.04381), Table 2, as slim `V2_DEF` /
keras.applications. Each inverted-residual block is expand 1x1 (+BN+ReLU6) -> depthwise
3x3 (+BN+ReLU6) -> linear project 1x1 (+BN); the residual joins only when stride is 1 and
input and output depths match (paper Sec. 3.3).

Layer names equal keras.applications' (`Conv1`, `block_13_expand`, `out_relu`, ...), so
its ImageNet `.h5` files map one to one; `mnv2_det.weights` holds the slim table.

Inputs are images already normalized to [-1, 1] (`(2/255)·x − 1`), `[batch, H, W, 3]`
float. They are zero-padded at the bottom/right to a multiple of `pad_to_multiple`
(32 by default, as the OD API's `pad_to_multiple(x, 32)`), so any H×W works.
"""

from typing import Dict, Optional, Sequence

import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import factory

from mnv2_det.modeling import mobilenet_v2_spec as spec_lib
from mnv2_det.modeling import layers
from mnv2_det.modeling.layers import PadToMultiple

SUPPORTED_OUTPUT_STRIDES = (None, 8, 16, 32)
DEFAULT_ENDPOINTS = ('2', '3', '4', '5')


def _keras_prefix(spec: spec_lib.LayerSpec) -> str:
  """keras.applications' name prefix of the block that is slim's `layer_N`."""
  block_id = spec.index - 2
  return 'expanded_conv_' if block_id == 0 else f'block_{block_id}_'


@tf_keras.utils.register_keras_serializable(package='mnv2_det')
class MobileNetV2Backbone(tf_keras.Model):
  """MobileNetV2 feature extractor returning a dict of named endpoints.

  Called on `[batch, H, W, 3]` float images in [-1, 1] it returns `{name: [batch, h, w, c]}`
  for every name in `endpoints`. Names are slim's (`layer_1`..`layer_19`,
  `layer_N/expansion_output`, `layer_N/depthwise_output`) or Model Garden level keys
  `'2'..'5'` (strides 4..32 at output_stride None). Only the layers up to the deepest
  requested endpoint are built.
  """

  def __init__(self,
               input_specs=None,
               depth_multiplier: float = 1.0,
               min_depth: int = 8,
               divisible_by: int = 8,
               output_stride: Optional[int] = None,
               endpoints: Sequence[str] = DEFAULT_ENDPOINTS,
               pad_to_multiple: int = 32,
               weight_decay: float = 4e-5,
               regularize_depthwise: bool = False,
               init_stddev: Optional[float] = 0.09,
               bn_momentum: float = 0.997,
               bn_epsilon: float = 1e-3,
               use_sync_bn: bool = False,
               activity_l1: float = 0.0,
               activity_l2: float = 0.0,
               full_depth_final_conv: bool = True,
               **kwargs):
    """Builds the graph.

    Args:
      input_specs: `tf_keras.layers.InputSpec` or a shape list `[None, H, W, 3]`;
        H and W may be None. Defaults to `[None, None, None, 3]`.
      depth_multiplier: > 0, scales every depth (slim rules; 1280 kept below 1.0).
      min_depth, divisible_by: slim `_make_divisible` arguments.
      output_stride: None, 8, 16 or 32. Below 32, later strides become atrous rates.
      endpoints: names to return (see class docstring).
      pad_to_multiple: bottom/right zero-pad target; 1 turns padding off.
      weight_decay: slim-style L2 decay `wd/2·Σw²` on conv kernels (0 disables).
      regularize_depthwise: also put `weight_decay` on depthwise kernels.
      init_stddev: truncated-normal stddev for kernels; None keeps Keras defaults.
      bn_momentum, bn_epsilon, use_sync_bn: BatchNorm settings.
      activity_l1, activity_l2: if non-zero, an `ActivityRegularization` layer follows
        every returned endpoint. This is the one route for activity regularization: it
        is the same penalty as `activity_regularizer=` on the producing layer.
      full_depth_final_conv: keep 1280 channels in `layer_19` below multiplier 1
        (slim finegrain mode); False scales it (OD API ssd_mobilenet_v2).
    """
    input_shape = _input_shape(input_specs)
    _validate_args(depth_multiplier, output_stride, endpoints, pad_to_multiple)
    self._config_dict = dict(
        input_specs=list(input_shape), depth_multiplier=depth_multiplier,
        min_depth=min_depth, divisible_by=divisible_by, output_stride=output_stride,
        endpoints=list(endpoints), pad_to_multiple=pad_to_multiple,
        weight_decay=weight_decay, regularize_depthwise=regularize_depthwise,
        init_stddev=init_stddev, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon,
        use_sync_bn=use_sync_bn, activity_l1=activity_l1, activity_l2=activity_l2,
        full_depth_final_conv=full_depth_final_conv)
    builder = _GraphBuilder(self._config_dict)
    inputs = tf_keras.Input(shape=input_shape[1:], batch_size=input_shape[0],
                            name='images')
    outputs, strides = builder.build(inputs, endpoints)
    super().__init__(inputs=inputs, outputs=outputs, **kwargs)
    self._output_specs = {k: v.get_shape() for k, v in outputs.items()}
    self._endpoint_strides = strides

  def __call__(self, inputs, *args, **kwargs):
    _validate_images(inputs)
    return super().__call__(inputs, *args, **kwargs)

  @property
  def output_specs(self) -> Dict[str, tf.TensorShape]:
    """`{endpoint: TensorShape([batch, h, w, c])}` as built for `input_specs`."""
    return self._output_specs

  @property
  def endpoint_strides(self) -> Dict[str, int]:
    """`{endpoint: stride in input pixels}` (atrous layers keep the stride)."""
    return dict(self._endpoint_strides)

  def get_config(self):
    return dict(self._config_dict)

  @classmethod
  def from_config(cls, config, custom_objects=None):
    return cls(**config)


class _GraphBuilder:
  """Creates the layers of one backbone; kept apart so the Model stays readable."""

  def __init__(self, cfg):
    self.cfg = cfg
    self.conv_reg = layers.l2_decay(cfg['weight_decay'])
    self.dw_reg = self.conv_reg if cfg['regularize_depthwise'] else None

  @property
  def kernel_init(self):
    if self.cfg['init_stddev'] is None:
      return 'glorot_uniform'
    return layers.truncated_normal(self.cfg['init_stddev'])

  def _depth(self, spec):
    return spec_lib.scaled_depth(spec, self.cfg['depth_multiplier'],
                                 self.cfg['min_depth'], self.cfg['divisible_by'],
                                 self.cfg.get('full_depth_final_conv', True))

  def _bn(self, x, name):
    return layers.batch_norm(self.cfg['bn_momentum'], self.cfg['bn_epsilon'],
                             self.cfg['use_sync_bn'], name)(x)

  def _conv(self, x, filters, kernel, stride, name):
    return tf_keras.layers.Conv2D(
        filters, kernel, strides=stride, padding='same', use_bias=False,
        kernel_initializer=self.kernel_init, kernel_regularizer=self.conv_reg,
        name=name)(x)

  def _relu6(self, x, name):
    return tf_keras.layers.ReLU(6.0, name=name)(x)

  def build(self, inputs, endpoints):
    wanted = set(spec_lib.LEVEL_ENDPOINTS.get(e, e) for e in endpoints)
    last_index = max(int(e.split('/')[0].split('_')[1]) for e in wanted)
    found, strides = {}, {}
    x = PadToMultiple(self.cfg['pad_to_multiple'], name='pad_to_multiple')(inputs)
    current_stride, rate = 1, 1
    output_stride = self.cfg['output_stride']
    for spec in spec_lib.v2_layers()[:last_index]:
      # slim: once the target stride is reached, later strides become dilation.
      if output_stride is not None and current_stride == output_stride:
        layer_stride, layer_rate, rate = 1, rate, rate * spec.stride
      else:
        layer_stride, layer_rate = spec.stride, 1
        current_stride *= spec.stride
      name = f'layer_{spec.index}'
      if spec.kind == 'conv':
        x = self._conv_layer(spec, x, layer_stride)
      else:
        x = self._block(spec, x, layer_stride, layer_rate, found, strides, current_stride)
      found[name], strides[name] = x, current_stride
    outputs = {}
    for e in endpoints:
      tensor = found[spec_lib.LEVEL_ENDPOINTS.get(e, e)]
      if self.cfg['activity_l1'] or self.cfg['activity_l2']:
        tensor = tf_keras.layers.ActivityRegularization(
            l1=self.cfg['activity_l1'], l2=self.cfg['activity_l2'],
            name=f'activity_reg_{e.replace("/", "_")}')(tensor)
      outputs[e] = tensor
    out_strides = {e: strides[spec_lib.LEVEL_ENDPOINTS.get(e, e)] for e in endpoints}
    return outputs, out_strides

  def _conv_layer(self, spec, x, stride):
    if spec.index == 1:
      names = ('Conv1', 'bn_Conv1', 'Conv1_relu')
    else:
      names = ('Conv_1', 'Conv_1_bn', 'out_relu')
    x = self._conv(x, self._depth(spec), spec.kernel, stride, names[0])
    x = self._bn(x, names[1])
    return self._relu6(x, names[2])

  def _block(self, spec, x, stride, rate, found, strides, current_stride):
    prefix, base = _keras_prefix(spec), f'layer_{spec.index}'
    in_depth, out_depth = x.shape[-1], self._depth(spec)
    shortcut = x
    if spec.expansion > 1:
      expand_depth = spec_lib.make_divisible(in_depth * spec.expansion,
                                             self.cfg['divisible_by'],
                                             self.cfg['min_depth'])
      x = self._conv(x, expand_depth, 1, 1, prefix + 'expand')
      x = self._bn(x, prefix + 'expand_BN')
      x = self._relu6(x, prefix + 'expand_relu')
      # The expansion runs at the block's input resolution.
      found[base + '/expansion_output'] = x
      strides[base + '/expansion_output'] = current_stride // stride
    x = tf_keras.layers.DepthwiseConv2D(
        3, strides=stride, dilation_rate=rate, padding='same', use_bias=False,
        depthwise_initializer=self.kernel_init, depthwise_regularizer=self.dw_reg,
        name=prefix + 'depthwise')(x)
    x = self._bn(x, prefix + 'depthwise_BN')
    x = self._relu6(x, prefix + 'depthwise_relu')
    found[base + '/depthwise_output'], strides[base + '/depthwise_output'] = x, current_stride
    x = self._conv(x, out_depth, 1, 1, prefix + 'project')
    x = self._bn(x, prefix + 'project_BN')
    if stride == 1 and in_depth == out_depth:
      x = tf_keras.layers.Add(name=prefix + 'add')([shortcut, x])
    return x


def _input_shape(input_specs):
  if input_specs is None:
    return [None, None, None, 3]
  shape = input_specs.shape if hasattr(input_specs, 'shape') else input_specs
  shape = list(tf.TensorShape(shape).as_list())
  if len(shape) != 4:
    raise ValueError(f'input_specs must be 4-D [batch, height, width, 3]; got shape {shape}')
  if shape[-1] != 3:
    raise ValueError(f'input_specs must have 3 channels (RGB); got {shape[-1]} in {shape}')
  return shape


def _validate_args(depth_multiplier, output_stride, endpoints, pad_multiple):
  if not depth_multiplier > 0:
    raise ValueError(f'depth_multiplier must be > 0; got {depth_multiplier}')
  if output_stride not in SUPPORTED_OUTPUT_STRIDES:
    raise ValueError(f'output_stride must be one of {SUPPORTED_OUTPUT_STRIDES}; '
                     f'got {output_stride}')
  if not endpoints:
    raise ValueError('endpoints must name at least one endpoint; got an empty list')
  known = set(spec_lib.all_endpoint_names())
  unknown = [e for e in endpoints if e not in known]
  if unknown:
    raise ValueError(f'unknown endpoints {unknown}; valid names are layer_1..layer_19, '
                     'layer_N/expansion_output (N=3..18), layer_N/depthwise_output '
                     "(N=2..18) and level keys '2'..'5'")
  if int(pad_multiple) < 1:
    raise ValueError(f'pad_to_multiple must be >= 1; got {pad_multiple}')


def _validate_images(inputs):
  shape = getattr(inputs, 'shape', None)
  if shape is None:
    return
  shape = tf.TensorShape(shape)
  if shape.rank is not None and shape.rank != 4:
    raise ValueError(f'MobileNetV2Backbone expects 4-D images [batch, height, width, 3]; '
                     f'got shape {shape.as_list()}')
  if shape.rank == 4 and shape[-1] is not None and shape[-1] != 3:
    raise ValueError(f'MobileNetV2Backbone expects 3 channels (RGB); got {shape[-1]} '
                     f'channels in shape {shape.as_list()}')


@factory.register_backbone_builder('mnv2_det')
def build_mnv2_det(input_specs, backbone_config, norm_activation_config,
                   l2_regularizer=None) -> MobileNetV2Backbone:
  """Model Garden backbone builder for `{type: mnv2_det, mnv2_det: {...}}`.

  BN momentum/epsilon come from the preset (or the explicit overrides); from
  `norm_activation_config` only `use_sync_bn` is taken, since the activation is ReLU6 by
  architecture. A non-None `l2_regularizer` (Model Garden's `l2_weight_decay / 2`) replaces
  the preset's weight decay.
  """
  from mnv2_det.configs.backbones import PRESETS  # pylint: disable=g-import-not-at-top
  if backbone_config.type != 'mnv2_det':
    raise ValueError(f"build_mnv2_det needs backbone type 'mnv2_det'; got "
                     f'{backbone_config.type!r}')
  cfg = backbone_config.mnv2_det
  if cfg.preset not in PRESETS:
    raise ValueError(f'unknown backbone preset {cfg.preset!r}; choose one of {sorted(PRESETS)}')
  preset = PRESETS[cfg.preset]
  weight_decay = preset.weight_decay if cfg.weight_decay is None else cfg.weight_decay
  if l2_regularizer is not None:
    weight_decay = 2.0 * float(l2_regularizer.get_config()['l2'])

  def pick(value, default):
    return default if value is None else value

  model = MobileNetV2Backbone(
      input_specs=input_specs,
      depth_multiplier=cfg.depth_multiplier,
      min_depth=cfg.min_depth,
      divisible_by=cfg.divisible_by,
      output_stride=cfg.output_stride,
      endpoints=list(cfg.endpoints),
      pad_to_multiple=cfg.pad_to_multiple,
      weight_decay=weight_decay,
      regularize_depthwise=cfg.regularize_depthwise,
      init_stddev=pick(cfg.init_stddev, preset.init_stddev),
      bn_momentum=pick(cfg.bn_momentum, preset.bn_momentum),
      bn_epsilon=pick(cfg.bn_epsilon, preset.bn_epsilon),
      use_sync_bn=bool(norm_activation_config.use_sync_bn) if norm_activation_config else False,
      activity_l1=cfg.activity_regularizer.l1,
      activity_l2=cfg.activity_regularizer.l2,
      full_depth_final_conv=cfg.full_depth_final_conv)
  if cfg.weights:
    from mnv2_det.weights import load_backbone_weights  # pylint: disable=g-import-not-at-top
    load_backbone_weights(model, cfg.weights)
  return model
