"""Backbone config: `{type: mnv2_det, mnv2_det: {...}}` in any Model Garden backbone slot."""

import dataclasses
from typing import List, Optional

from official.modeling import hyperparams
from official.vision.configs import backbones


@dataclasses.dataclass(frozen=True)
class Preset:
  """Regularization / init / BN defaults of one reference implementation."""
  weight_decay: float
  init_stddev: Optional[float]  # truncated-normal stddev; None = Keras' glorot_uniform
  bn_momentum: float
  bn_epsilon: float


# docs/reference.md, "Slim training defaults" (slim training_scope): L2 4e-5 on conv
# kernels (not depthwise), truncated normal 0.09, bn_decay 0.997, eps 1e-3.
# keras.applications: no L2, Keras initializers, BatchNormalization(momentum=0.999,
# epsilon=1e-3).
PRESETS = {
    'slim': Preset(weight_decay=4e-5, init_stddev=0.09, bn_momentum=0.997, bn_epsilon=1e-3),
    'keras': Preset(weight_decay=0.0, init_stddev=None, bn_momentum=0.999, bn_epsilon=1e-3),
}


@dataclasses.dataclass
class ActivityRegularizer(hyperparams.Config):
  """L1/L2 penalty on the returned endpoints (an ActivityRegularization layer after each)."""
  l1: float = 0.0
  l2: float = 0.0


@dataclasses.dataclass
class MobileNetV2Det(hyperparams.Config):
  """MobileNetV2 feature extractor.

  Attributes:
    depth_multiplier, min_depth, divisible_by: slim depth rules.
    output_stride: None, 8, 16 or 32 (atrous below 32).
    endpoints: endpoint names to return: slim names (`layer_19`,
      `layer_15/expansion_output`, ...) or Model Garden level keys '2'..'5'. Model Garden
      decoders (FPN) need level keys only.
    pad_to_multiple: bottom/right zero padding target; 1 disables it.
    preset: 'slim' or 'keras' (see PRESETS).
    weight_decay, bn_momentum, bn_epsilon, init_stddev: override the preset when set.
      weight_decay is slim's (penalty wd·Σw²/2). A Model Garden task's
      `losses.l2_weight_decay` (passed to builders as `l2_regularizer`) overrides it too.
    regularize_depthwise: also decay depthwise kernels (slim does not).
    activity_regularizer: penalty on the returned endpoints.
    weights: local keras .h5 / TF1 slim checkpoint / TF2 checkpoint to initialize from.
    full_depth_final_conv: below multiplier 1, keep `layer_19` at 1280 channels (slim
      finegrain mode, our default); False scales it as the OD API's ssd_mobilenet_v2
      feature extractor does (set by OD API imports).
  """
  depth_multiplier: float = 1.0
  min_depth: int = 8
  divisible_by: int = 8
  output_stride: Optional[int] = None
  endpoints: List[str] = dataclasses.field(default_factory=lambda: ['2', '3', '4', '5'])
  pad_to_multiple: int = 32
  preset: str = 'slim'
  weight_decay: Optional[float] = None
  bn_momentum: Optional[float] = None
  bn_epsilon: Optional[float] = None
  init_stddev: Optional[float] = None
  regularize_depthwise: bool = False
  activity_regularizer: ActivityRegularizer = dataclasses.field(
      default_factory=ActivityRegularizer)
  weights: str = ''
  full_depth_final_conv: bool = True


@dataclasses.dataclass
class Backbone(backbones.Backbone):
  """Model Garden's backbone OneOf plus `mnv2_det`."""
  mnv2_det: MobileNetV2Det = dataclasses.field(default_factory=MobileNetV2Det)
