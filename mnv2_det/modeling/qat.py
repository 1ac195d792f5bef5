"""Quantization-aware training (QAT): the SSDLite detector with fake-quantized layers.

Model Garden's `official/projects/qat/vision` pattern for RetinaNet
(`modeling/factory.build_qat_retinanet`): take the float model, annotate its layers,
`tfmot.quantization.keras.quantize_apply` them with MG's `Default8BitQuantizeScheme`
and rebuild the detector around the quantized parts. Here every part is quantized
(backbone, SSD extra layers, head), so the int8 TFLite export takes every range from
training and needs no representative images (`export/tflite_convert.py`).

How the parts become quantizable functional models (tfmot only takes those):
  * backbone: already a functional `tf_keras.Model`; cloned with every layer annotated.
    Its input is quantized on the fixed range INPUT_RANGE, after `PadToMultiple`
    (the same thing: 0.0, the padding, is on the int8 grid).
  * extra layers and head: subclassed layers; their `call` is traced on `tf_keras.Input`s,
    which yields a functional model over the same Conv / BN / ReLU layers.
Conv + BN (+ ReLU6) follow tfmot's default 8-bit transforms: BN is not folded during
training, no fake quant sits between conv, BN and ReLU (one after the ReLU or BN),
weights are fake-quantized per output channel (depthwise: per channel); the TFLite
converter folds BN into the conv weights. The extra layers' and head's own input
quantizers are removed (`remove_input_range`, as MG does for its decoder): their
inputs are already quantized by the part before. No quantizer learns the input range
or holds a variable named after a Keras auto-name, so checkpoints of two builds match.

The head's 1x1 predictors are fake-quantized on FIXED output ranges:
`[-INT8_LOGIT_RANGE, INT8_LOGIT_RANGE]` for class logits and
`[-INT8_BOX_CODE_RANGE, INT8_BOX_CODE_RANGE]` for box codes, the clip of the
post-training int8 export: the export concatenates all levels into one int8 tensor of
ONE scale, so each level must already have that scale in training.

Anchors, decode and NMS stay outside QAT (float, as `SSDLiteModel` does them).
"""

import json
from typing import Any, Dict

import tensorflow as tf
import tensorflow_model_optimization as tfmot
import tf_keras

from official.projects.qat.vision.quantization import configs as mg_qat_configs
from official.projects.qat.vision.quantization import schemes as mg_qat_schemes

from mnv2_det.modeling.feature_maps import BASE_ENDPOINTS
from mnv2_det.modeling.layers import PadToMultiple
from mnv2_det.modeling.model import SSDLiteModel

# int8 output ranges of the head (module docstring); the post-training int8 export
# clips to the same bounds (export/tflite_convert.py explains the numbers).
INT8_LOGIT_RANGE = 10.0
INT8_BOX_CODE_RANGE = 12.0
# The backbone's input: images normalized to [-1, 1], padding 0.0 (data/preprocess.py).
INPUT_RANGE = (-1.0, 1.0)
NUM_BITS = 8
PREDICTOR_SUFFIX = '_predictor'
CLASS_PREFIX = 'class_'

_keras_quant = tfmot.quantization.keras


class FixedRangeConvQuantizeConfig(mg_qat_configs.Default8BitConvQuantizeConfig):
  """A Conv2D (with bias, linear activation) whose weights are quantized per channel
  as MG's conv config does and whose output is fake-quantized on `[-bound, bound]`."""

  def __init__(self, bound: float, weight_attrs=('kernel',),
               activation_attrs=('activation',), quantize_output: bool = False):
    super().__init__(list(weight_attrs), list(activation_attrs), quantize_output)
    self.bound = float(bound)
    self.activation_quantizer = _fixed_quantizer(-self.bound, self.bound)

  def get_config(self) -> Dict[str, Any]:
    return {'bound': self.bound, **super().get_config()}


class FixedRangeOutputQuantizeConfig(mg_qat_configs.NoOpQuantizeConfig):
  """A weightless layer whose output is fake-quantized on `[minimum, maximum]`."""

  def __init__(self, minimum: float, maximum: float):
    self.minimum, self.maximum = float(minimum), float(maximum)

  def get_output_quantizers(self, layer):
    return [_fixed_quantizer(self.minimum, self.maximum)]

  def get_config(self) -> Dict[str, Any]:
    return {'minimum': self.minimum, 'maximum': self.maximum}


def _fixed_quantizer(minimum: float, maximum: float):
  return _keras_quant.quantizers.FixedQuantizer(
      num_bits=NUM_BITS, init_min=minimum, init_max=maximum, narrow_range=False)


QUANTIZE_SCOPE = {
    'L2': tf_keras.regularizers.L2,
    'PadToMultiple': PadToMultiple,
    'FixedRangeOutputQuantizeConfig': FixedRangeOutputQuantizeConfig,
    'FixedRangeConvQuantizeConfig': FixedRangeConvQuantizeConfig,
}


class QuantizedPart(tf_keras.Model):
  """A quantized functional part standing in for a float part of `SSDLiteModel`.

  Same inputs and outputs as the float part (a dict of endpoints / levels, or the
  head's `(cls_outputs, box_outputs)`); `get_config` is the float part's, where the
  detector reads `pad_to_multiple` and `num_classes`.
  """

  def __init__(self, quantized: tf_keras.Model, float_config: Dict[str, Any],
               num_groups: int = 0, **kwargs):
    """`quantized` has dict outputs; `num_groups` > 0 regroups its `_flat` keys into
    that many dicts (the head's tuple)."""
    super().__init__(inputs=quantized.input,
                     outputs=_grouped(quantized.output, num_groups), **kwargs)
    self._float_config_json = json.dumps(float_config)

  def get_config(self):
    return json.loads(self._float_config_json)


def _annotate(layer):
  """clone_function: every layer annotated (PadToMultiple: no-op config; the head's
  predictors: fixed output ranges); input layers stay as they are."""
  if isinstance(layer, tf_keras.layers.InputLayer):
    return layer
  if isinstance(layer, PadToMultiple):
    return _keras_quant.quantize_annotate_layer(
        layer, FixedRangeOutputQuantizeConfig(*INPUT_RANGE))
  if isinstance(layer, tf_keras.layers.Conv2D) and layer.name.endswith(PREDICTOR_SUFFIX):
    bound = INT8_LOGIT_RANGE if layer.name.startswith(CLASS_PREFIX) else INT8_BOX_CODE_RANGE
    return _keras_quant.quantize_annotate_layer(layer, FixedRangeConvQuantizeConfig(bound))
  return _keras_quant.quantize_annotate_layer(layer)


def _quantize(functional: tf_keras.Model) -> tf_keras.Model:
  """Annotated clone of `functional`, quantize_apply'd with MG's 8-bit scheme, without
  input quantizers; the float weights are copied (quantize_apply does,
  remove_input_range does not)."""
  annotated = tf_keras.models.clone_model(functional, clone_function=_annotate)
  quantized = _keras_quant.quantize_apply(
      annotated, scheme=mg_qat_schemes.Default8BitQuantizeScheme())
  stripped = _keras_quant.remove_input_range(quantized)
  for layer in stripped.layers:
    if layer.weights and not _is_input_quantizer(layer):
      layer.set_weights(quantized.get_layer(layer.name).get_weights())
  return stripped


def _is_input_quantizer(layer) -> bool:
  return type(layer).__name__ == 'QuantizeLayer'


def _input_name(endpoint: str) -> str:
  return endpoint.replace('/', '_')


def _traced(layer, inputs) -> tf_keras.Model:
  """A functional model of `layer.call` on `inputs` (the layer's own sub-layers), with
  one flat dict of outputs (tfmot's graph transforms take no nested outputs): a tuple
  of dicts becomes keys `'<group>:<key>'`."""
  outputs = layer.call(inputs)
  if isinstance(outputs, (tuple, list)):
    outputs = {f'{g}{_GROUP_SEPARATOR}{k}': v for g, part in enumerate(outputs)
               for k, v in part.items()}
  return tf_keras.Model(inputs=inputs, outputs=outputs)


_GROUP_SEPARATOR = ':'


def _grouped(outputs: Dict[str, Any], num_groups: int):
  """Inverse of `_traced`'s flattening: `num_groups` dicts, or `outputs` for 0."""
  if not num_groups:
    return outputs
  groups = [{} for _ in range(num_groups)]
  for key, value in outputs.items():
    group, name = key.split(_GROUP_SEPARATOR, 1)
    groups[int(group)][name] = value
  return tuple(groups)


def quantize_ssdlite(model: SSDLiteModel) -> SSDLiteModel:
  """The QAT detector of a float `SSDLiteModel` (module docstring), starting from its
  current weights; the float model is left unchanged.

  Returns an `SSDLiteModel` with `QuantizedPart` backbone, feature maps and head:
  same call signature and outputs (float32 logits / box codes per level; detections
  in inference mode), anchors and detection settings.
  """
  with _keras_quant.quantize_scope(QUANTIZE_SCOPE):
    backbone = QuantizedPart(_quantize(model.backbone),
                             model.backbone.get_config(), name='qat_backbone')
    specs = model.backbone.output_specs
    endpoints = {e: tf_keras.Input(shape=specs[e][1:], name=_input_name(e))
                 for e in BASE_ENDPOINTS}
    feature_maps = QuantizedPart(
        _quantize(_traced(model.feature_maps, endpoints)),
        model.feature_maps.get_config(), name='qat_feature_maps')
    levels = {k: tf_keras.Input(shape=v.shape[1:], name=f'level_{k}')
              for k, v in feature_maps.output.items()}
    head = QuantizedPart(_quantize(_traced(model.head, levels)),
                         model.head.get_config(), num_groups=2, name='qat_head')
  config = model.get_config()
  quantized = SSDLiteModel(backbone, feature_maps, head,
                           anchor_boxes=model.anchor_boxes, input_size=model.input_size,
                           detection_params=config['detection_params'],
                           name=model.name + '_qat')
  quantized(tf.zeros([1] + list(model.input_size) + [3]), training=False)
  return quantized


def init_ranges(quantized: SSDLiteModel, float_model: SSDLiteModel, batches) -> int:
  """Starts every learned range of `quantized` (`quantize_ssdlite(float_model)`, same
  weights) from data, in place of tfmot's [-6, 6] initial values, before QAT training.

  Weight ranges: set as a training step sets them (tfmot's LastValueQuantizer: per
  channel max |w|). Activation ranges (tfmot's MovingAverageQuantizer, whose EMA of
  decay 0.999 would take thousands of steps to leave [-6, 6]): min(0, min) and
  max(0, max) of the same layer's float output over `batches`, images
  `[B, H, W, 3]` float32 in [-1, 1]. Returns the number of activation ranges set.

  Raises:
    ValueError: `batches` is empty.
  """
  wrappers = [layer for part in _parts(quantized) for layer in part.layers
              if isinstance(layer, _keras_quant.QuantizeWrapper)]
  for wrapper in wrappers:
    for weight, quantizer, quantizer_vars in wrapper._weight_vars:  # pylint: disable=protected-access
      quantizer(weight, True, quantizer_vars)
  ranged = {w.layer.name: w._output_quantizer_vars for w in wrappers  # pylint: disable=protected-access
            if getattr(w, '_output_quantizer_vars', None)}
  probe = _FloatProbe(float_model, set(ranged))
  lows, highs = {}, {}
  for images in batches:
    for name, value in probe(images).items():
      lows[name] = min(lows.get(name, 0.0), float(tf.reduce_min(value)))
      highs[name] = max(highs.get(name, 0.0), float(tf.reduce_max(value)))
  if not lows:
    raise ValueError('QAT range initialization got no image batch')
  for name, variables in ranged.items():
    variables['min_var'].assign(lows[name])
    variables['max_var'].assign(highs[name])
  return len(ranged)


class _FloatProbe:
  """The float outputs of named layers of a float `SSDLiteModel`, part by part."""

  def __init__(self, model: SSDLiteModel, names):
    self._model = model
    endpoints = {e: tf_keras.Input(shape=model.backbone.output_specs[e][1:],
                                   name=_input_name(e)) for e in BASE_ENDPOINTS}
    traced_maps = _traced(model.feature_maps, endpoints)
    levels = {k: tf_keras.Input(shape=v.shape[1:], name=f'level_{k}')
              for k, v in traced_maps.output.items()}
    self._probes = [_probe(part, names) for part in
                    (model.backbone, traced_maps, _traced(model.head, levels))]
    found = set().union(*(p.output.keys() for p in self._probes))
    if found != set(names):
      raise ValueError(f'QAT range initialization: no float layer for '
                       f'{sorted(set(names) - found)}')

  def __call__(self, images) -> Dict[str, tf.Tensor]:
    endpoints = self._model.backbone(images, training=False)
    features = self._model.feature_maps(endpoints, training=False)
    out = {}
    for probe, inputs in zip(self._probes, (images, endpoints, features)):
      out.update(probe(inputs, training=False))
    return out


def _probe(functional: tf_keras.Model, names) -> tf_keras.Model:
  """A fresh copy of `functional` (each layer called once) returning the outputs of
  its layers in `names`."""
  copy = tf_keras.models.clone_model(functional)
  copy.set_weights(functional.get_weights())
  return tf_keras.Model(copy.input, {layer.name: layer.output for layer in copy.layers
                                     if layer.name in names})


def _parts(model: SSDLiteModel):
  return (model.backbone, model.feature_maps, model.head)


def is_quantized(model) -> bool:
  """True for a model built by `quantize_ssdlite` (it holds tfmot quantize layers)."""
  return any(isinstance(m, _keras_quant.QuantizeWrapper) for m in model.submodules)
