"""TF1 OD API SSD checkpoint -> our detector's variables: one explicit name table.

| ours (Keras layer / weight)                     | OD API TF1 variable                                              |
|---|---|
| backbone `Conv1`, `block_k_*`, `Conv_1` (+BN)   | `FeatureExtractor/MobilenetV2/<slim scope>/...` (`weights.slim_variable_name`) |
| `level_L_1x1` (+`_bn`)                          | `FeatureExtractor/MobilenetV2/layer_19_1_Conv2d_{L-4}_1x1_{d/2}/{weights,BatchNorm/*}` |
| `level_L_3x3_s2_depthwise` (+`_bn`)             | `.../layer_19_2_Conv2d_{L-4}_3x3_s2_{d}_depthwise/{depthwise_weights,BatchNorm/*}` |
| `level_L_3x3_s2_pointwise` / `level_L_3x3_s2`, `level_L_out_bn` | `.../layer_19_2_Conv2d_{L-4}_3x3_s2_{d}/{weights,BatchNorm/*}` |
| head `class_L_depthwise` (+`_bn`)               | `BoxPredictor_{L-4}/ClassPredictor_depthwise/{depthwise_weights,BatchNorm/*}` |
| head `class_L_predictor` kernel / bias          | `BoxPredictor_{L-4}/ClassPredictor/{weights,biases}` |
| head `box_L_*`                                  | the same under `BoxEncodingPredictor` |

`d` is the layer's depth after the depth multiplier, as the OD API names its scopes.
Levels L are 4..9 (feature map i = L - 4). Layouts agree (conv `[kh, kw, in, out]`,
depthwise `[kh, kw, C, 1]`), so values are copied as they are.

`/ExponentialMovingAverage` shadows, when present, are taken instead of the raw values
(as the OD API's exporter restores them) unless `use_ema=False`; BN moving statistics
have no shadows. Loading is atomic: every variable is found and shape-checked first.
"""

import re
from typing import Dict, List, Optional, Tuple

import numpy as np
import tensorflow as tf

from mnv2_det import weights as backbone_weights
from mnv2_det.ops import anchors as anchor_ops

FEATURE_EXTRACTOR_ROOT = 'FeatureExtractor/MobilenetV2/'
EMA_SUFFIX = '/ExponentialMovingAverage'
# Checkpoint entries that are not model weights: step counter and optimizer slots.
_NOT_WEIGHTS = re.compile(r'(^global_step$|/(RMSProp|RMSProp_1|Momentum|Adam|Adam_1)$|'
                          r'^beta[12]_power)')
_LEVEL_RE = re.compile(r'level_(\d+)_(1x1|3x3_s2_depthwise|3x3_s2_pointwise|3x3_s2|out)'
                       r'(_bn)?$')
_HEAD_RE = re.compile(r'(class|box)_(\d+)_(depthwise|predictor)(_bn)?$')
_BN_WEIGHTS = ('gamma', 'beta', 'moving_mean', 'moving_variance')
_CONV_WEIGHTS = {'kernel': 'weights', 'depthwise_kernel': 'depthwise_weights',
                 'bias': 'biases'}
_PREDICTORS = {'class': 'ClassPredictor', 'box': 'BoxEncodingPredictor'}


def _split(variable: tf.Variable) -> Tuple[str, str]:
  """('level_6_1x1', 'kernel') from 'ssdlite_mnv2/ssd_feature_maps/level_6_1x1/kernel:0'."""
  parts = variable.name.split(':')[0].split('/')
  return parts[-2], parts[-1]


def _weight_suffix(layer: str, weight: str, is_bn: bool) -> str:
  if is_bn:
    return f'BatchNorm/{weight}'
  if weight not in _CONV_WEIGHTS:
    raise ValueError(f'{layer}/{weight} has no OD API counterpart')
  return _CONV_WEIGHTS[weight]


def odapi_names(model) -> List[Tuple[tf.Variable, str]]:
  """`[(our variable, OD API TF1 name)]` for every variable of an SSDLiteModel."""
  pairs = []
  for v in model.backbone.variables:
    layer, weight = _split(v)
    pairs.append((v, backbone_weights.slim_variable_name(layer, weight,
                                                         FEATURE_EXTRACTOR_ROOT)))
  fm_vars = model.feature_maps.variables
  out_depth = {}
  for v in fm_vars:
    layer, weight = _split(v)
    match = _LEVEL_RE.fullmatch(layer)
    if match and match.group(2) in ('3x3_s2_pointwise', '3x3_s2') and weight == 'kernel':
      out_depth[int(match.group(1))] = int(v.shape[-1])
  half_depth = {int(_LEVEL_RE.fullmatch(_split(v)[0]).group(1)): int(v.shape[-1])
                for v in fm_vars if _split(v)[0].endswith('_1x1') and _split(v)[1] == 'kernel'}
  for v in fm_vars:
    layer, weight = _split(v)
    match = _LEVEL_RE.fullmatch(layer)
    if match is None:
      raise ValueError(f'feature-map layer {layer!r} has no OD API counterpart')
    level, op, is_bn = int(match.group(1)), match.group(2), bool(match.group(3)) or (
        match.group(2) == 'out')
    k = level - anchor_ops.FIRST_LEVEL
    if op == '1x1':
      scope = f'layer_19_1_Conv2d_{k}_1x1_{half_depth[level]}'
    elif op == '3x3_s2_depthwise':
      scope = f'layer_19_2_Conv2d_{k}_3x3_s2_{out_depth[level]}_depthwise'
    else:  # pointwise / plain 3x3 and the BN after it ('out')
      scope = f'layer_19_2_Conv2d_{k}_3x3_s2_{out_depth[level]}'
    pairs.append((v, f'{FEATURE_EXTRACTOR_ROOT}{scope}/'
                     f'{_weight_suffix(layer, weight, is_bn)}'))
  for v in model.head.variables:
    layer, weight = _split(v)
    match = _HEAD_RE.fullmatch(layer)
    if match is None:
      raise ValueError(f'head layer {layer!r} has no OD API counterpart')
    branch, level, op, is_bn = match.group(1), int(match.group(2)), match.group(3), bool(
        match.group(4))
    scope = f'BoxPredictor_{level - anchor_ops.FIRST_LEVEL}/{_PREDICTORS[branch]}'
    if op == 'depthwise':
      scope += '_depthwise'
    pairs.append((v, f'{scope}/{_weight_suffix(layer, weight, is_bn)}'))
  return pairs


def load_odapi_checkpoint(model, prefix: str, use_ema: Optional[bool] = None
                          ) -> Dict[str, object]:
  """Assigns an OD API SSD checkpoint to `model` (all variables or none).

  `model` is a built SSDLiteModel of the translated config, `prefix` the TF1
  checkpoint (`.../model.ckpt`); `use_ema` takes the `/ExponentialMovingAverage`
  shadows (None: when there are any). Returns `{'num_variables', 'ema': bool,
  'unused': [checkpoint names not loaded]}`. ValueError naming the checkpoint and the
  variable for an unreadable checkpoint, a missing variable, a wrong shape, an OD API
  model weight nothing maps to, or use_ema=True without shadows.
  """
  try:
    reader = tf.train.load_checkpoint(prefix)
  except (tf.errors.OpError, ValueError) as e:
    raise ValueError(f'checkpoint {prefix} cannot be read: '
                     f'{str(e).strip().splitlines()[0]}') from e
  shapes = reader.get_variable_to_shape_map()
  has_ema = any(k.endswith(EMA_SUFFIX) for k in shapes)
  if use_ema and not has_ema:
    raise ValueError(f'checkpoint {prefix} has no {EMA_SUFFIX[1:]} shadow variables')
  ema = has_ema if use_ema is None else use_ema
  values, used = [], set()
  for variable, name in odapi_names(model):
    source = name + EMA_SUFFIX if ema and name + EMA_SUFFIX in shapes else name
    if source not in shapes:
      raise ValueError(f'checkpoint {prefix}: no variable {name!r} (for our '
                       f'{variable.name.split(":")[0]}); is it an ssd_mobilenet_v2 '
                       'SSDLite model of this pipeline.config?')
    if list(shapes[source]) != variable.shape.as_list():
      raise ValueError(f'checkpoint {prefix}: {source} has shape {shapes[source]}, the '
                       f'translated config needs {variable.shape.as_list()} (for our '
                       f'{variable.name.split(":")[0]})')
    values.append((variable, reader.get_tensor(source)))
    used.update({name, name + EMA_SUFFIX})
  unmapped = sorted(k for k in shapes if k not in used and not _NOT_WEIGHTS.search(k)
                    and k.startswith(('FeatureExtractor/', 'BoxPredictor')))
  if unmapped:
    raise ValueError(f'checkpoint {prefix}: variable {unmapped[0]!r} is not mapped to the '
                     f'translated model ({len(unmapped)} unmapped); is the pipeline.config '
                     'the one this checkpoint was trained with?')
  for variable, value in values:
    variable.assign(np.asarray(value, variable.dtype.as_numpy_dtype))
  return {'num_variables': len(values), 'ema': ema,
          'unused': sorted(k for k in shapes if k not in used)}
