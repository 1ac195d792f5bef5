"""Builders: the only place that turns SSDLite configs into layers."""

import dataclasses

import numpy as np
import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import factory as backbone_factory

from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.modeling import backbone as _backbone  # registers 'mnv2_det'  # pylint: disable=unused-import
from mnv2_det.modeling.feature_maps import SSDFeatureMaps
from mnv2_det.modeling.head import SSDLiteHead
from mnv2_det.modeling.model import SSDLiteModel
from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.ops import padding
from mnv2_det.ops import postprocess as postprocess_ops


def padded_input_size(model_config: ssdlite_cfg.SSDLite):
  """(H, W) the network sees: `input_size` padded to the backbone's multiple."""
  multiple = model_config.backbone.mnv2_det.pad_to_multiple
  return tuple(padding.padded_size(int(s), multiple) for s in model_config.input_size[:2])


def anchors_per_location(model_config: ssdlite_cfg.SSDLite):
  a = model_config.anchor
  return anchor_ops.anchors_per_location(
      num_layers=a.num_layers, aspect_ratios=a.aspect_ratios,
      interpolated_scale_aspect_ratio=a.interpolated_scale_aspect_ratio,
      reduce_boxes_in_lowest_layer=a.reduce_boxes_in_lowest_layer)


def build_anchors(model_config: ssdlite_cfg.SSDLite) -> np.ndarray:
  """`[N, 4]` float32 anchors, OD API order, normalized `[ymin, xmin, ymax, xmax]` of
  the network INPUT frame (`input_size`, before padding; docs/frames.md).

  The grid and scales are laid out over the padded frame the feature maps really
  cover (cell centres at the receptive-field centres), then re-expressed in the input
  frame: ratio padded / input, so anchors of cells that lie in the padding exceed 1.
  With `input_size` a multiple of `pad_to_multiple` both frames are the same.
  """
  a = model_config.anchor
  size = padded_input_size(model_config)
  shapes = anchor_ops.ssd_feature_map_shapes(size, num_layers=a.num_layers)
  padded_frame = anchor_ops.generate_ssd_anchors(
      shapes, num_layers=a.num_layers, min_scale=a.min_scale, max_scale=a.max_scale,
      aspect_ratios=a.aspect_ratios,
      interpolated_scale_aspect_ratio=a.interpolated_scale_aspect_ratio,
      reduce_boxes_in_lowest_layer=a.reduce_boxes_in_lowest_layer, image_shape=size)
  input_hw = [int(s) for s in model_config.input_size[:2]]
  return padding.boxes_padded_to_original(
      tf.constant(padded_frame), input_hw, list(size)).numpy().astype(np.float32)


# The one activation of the layers (backbone, extra layers, head): ReLU6 by architecture.
ACTIVATION = 'relu6'


def build_ssdlite_model(model_config: ssdlite_cfg.SSDLite, input_specs=None,
                        num_real_classes=None, l2_weight_decay: float = 0.0
                        ) -> SSDLiteModel:
  """Builds the detector from `model_config` (weights of the backbone loaded if set).

  `num_real_classes`: K of the dataset's category table (contiguous 1..K have a dataset
  id); the head keeps `num_classes` outputs, but post-processing never detects the
  tail classes past K. None: all `num_classes - 1`.
  `l2_weight_decay`: the task's `losses.l2_weight_decay`; > 0 replaces the weight
  decay of backbone, extra layers and head (see configs/ssdlite.Losses).
  """
  activation = model_config.norm_activation.activation
  if activation != ACTIVATION:
    raise ValueError(f'task.model.norm_activation.activation must be {ACTIVATION!r} '
                     '(MobileNetV2 / SSDLite and the OD API checkpoints use ReLU6 '
                     f'throughout); got {activation!r}')
  if not l2_weight_decay >= 0:
    raise ValueError(f'task.losses.l2_weight_decay must be >= 0, got {l2_weight_decay!r}')
  if num_real_classes is not None and not 1 <= num_real_classes < model_config.num_classes:
    raise ValueError(f'{num_real_classes} categories need task.model.num_classes >= '
                     f'{num_real_classes + 1} ({num_real_classes} + background at index '
                     f'0), got {model_config.num_classes}')
  if model_config.anchor.num_layers != 2 + len(model_config.feature_maps.layer_depths):
    raise ValueError(
        f'anchor.num_layers ({model_config.anchor.num_layers}) must equal 2 base maps + '
        f'{len(model_config.feature_maps.layer_depths)} extra layers')
  if input_specs is None:
    input_specs = tf_keras.layers.InputSpec(shape=[None] + list(model_config.input_size))
  norm = model_config.norm_activation
  # Model Garden's l2_regularizer (RetinaNetTask.build_model); the backbone builder
  # takes it as its weight decay.
  l2_regularizer = (tf_keras.regularizers.l2(l2_weight_decay / 2.0) if l2_weight_decay
                    else None)
  backbone = backbone_factory.build_backbone(
      input_specs=input_specs, backbone_config=model_config.backbone,
      norm_activation_config=norm, l2_regularizer=l2_regularizer)
  fm = model_config.feature_maps
  feature_maps = SSDFeatureMaps(
      layer_depths=fm.layer_depths,
      depth_multiplier=model_config.backbone.mnv2_det.depth_multiplier,
      min_depth=fm.min_depth, use_depthwise=fm.use_depthwise,
      weight_decay=l2_weight_decay or model_config.feature_map_weight_decay,
      init_stddev=model_config.feature_map_init_stddev,
      bn_momentum=norm.norm_momentum, bn_epsilon=norm.norm_epsilon,
      use_sync_bn=norm.use_sync_bn, name='ssd_feature_maps')
  head_cfg = model_config.head
  head = SSDLiteHead(
      levels=[str(anchor_ops.FIRST_LEVEL + i) for i in range(model_config.anchor.num_layers)],
      num_anchors_per_location=anchors_per_location(model_config),
      num_classes=model_config.num_classes, kernel_size=head_cfg.kernel_size,
      init_stddev=head_cfg.init_stddev,
      weight_decay=l2_weight_decay or head_cfg.weight_decay,
      class_prior_prob=head_cfg.class_prior_prob, bn_momentum=norm.norm_momentum,
      bn_epsilon=norm.norm_epsilon, use_sync_bn=norm.use_sync_bn, name='ssdlite_head')
  model = SSDLiteModel(
      backbone, feature_maps, head, anchor_boxes=build_anchors(model_config),
      input_size=model_config.input_size[:2],
      detection_params=dict(dataclasses.asdict(nms_settings(model_config)),
                            num_real_classes=num_real_classes),
      name='ssdlite_mnv2')
  batch = input_specs.shape[0] or 1
  # A tensor (not a Variable) so the Keras save spec stays a TensorSpec.
  model(tf.zeros([batch] + list(model_config.input_size)), training=False)
  if model_config.freeze_batchnorm:
    for layer in _all_layers(model):
      if isinstance(layer, tf_keras.layers.BatchNormalization):
        layer.trainable = False
  return model


def nms_settings(model_config) -> postprocess_ops.NmsSettings:
  """The NMS limits of `task.model.detection_generator` (the one place they are read)."""
  gen = model_config.detection_generator
  return postprocess_ops.NmsSettings(
      score_threshold=float(gen.score_threshold), iou_threshold=float(gen.iou_threshold),
      max_per_class=int(gen.max_detections_per_class),
      max_total=int(gen.max_num_detections), pre_nms_top_k=int(gen.pre_nms_top_k),
      clip_before_nms=bool(gen.clip_before_nms))


def _all_layers(model):
  stack, seen = list(model.layers), []
  while stack:
    layer = stack.pop()
    seen.append(layer)
    stack.extend(getattr(layer, 'layers', []) or [])
    stack.extend(getattr(layer, '_flatten_layers', lambda **_: [])(include_self=False,
                                                                   recursive=False))
  return seen
