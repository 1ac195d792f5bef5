"""OD API `pipeline.config` (text format) -> an mnv2_det experiment config.

Supported: the `ssd` meta-architecture with the `ssd_mobilenet_v2` feature extractor and
a depthwise (SSDLite) convolutional box predictor. Every field of the file is one of:
  * MAPPED onto our config (`_MAPPED`, see docs/odapi.md for the table);
  * FIXED: we implement exactly one value; another value is an error (`_FIXED`);
  * NOT USED: paths and evaluation/input-reader settings that do not change the model
    or its training maths (`_NOT_USED_PREFIXES`); reported, never an error;
  * anything else is an error naming the field and its value. Nothing is ignored
    silently.

The result reproduces the OD API's geometry: `input_size` from `fixed_shape_resizer`,
`pad_to_multiple` (OD API default 1), the scaled final conv of its MobileNetV2, and a
`pre_nms_top_k` that keeps every (anchor, class) pair, so our NMS sees what the OD API's
per-class NMS sees.
"""

import math
from typing import Any, Callable, Dict, List, Tuple

from official.core import exp_factory

from mnv2_det.odapi import pbtxt
from mnv2_det.ops import anchors as anchor_ops

BASE_EXPERIMENT = 'ssdlite_mnv2_coco'
FEATURE_EXTRACTOR = 'ssd_mobilenet_v2'
# OD API defaults of fields a config may leave out (object_detection/protos/*.proto).
ODAPI_DEFAULTS = {
    'pad_to_multiple': 1,
    'min_depth': 16,
    'interpolated_scale_aspect_ratio': 1.0,
    'reduce_boxes_in_lowest_layer': True,
    'class_prediction_bias_init': 0.0,
    'staircase': True,
}
M = 'model.ssd.'
FE = M + 'feature_extractor.'
FE_HP = FE + 'conv_hyperparams.'
BP = M + 'box_predictor.convolutional_box_predictor.'
BP_HP = BP + 'conv_hyperparams.'
ANCHOR = M + 'anchor_generator.ssd_anchor_generator.'
NMS = M + 'post_processing.batch_non_max_suppression.'
LOSS = M + 'loss.'
HEM = LOSS + 'hard_example_miner.'
OPT = 'train_config.optimizer.'
RMS = OPT + 'rms_prop_optimizer.'
MOM = OPT + 'momentum_optimizer.'
ADAM = OPT + 'adam_optimizer.'
LR_KINDS = ('exponential_decay_learning_rate', 'constant_learning_rate',
            'cosine_decay_learning_rate')

_FIXED = {
    M + 'add_background_class': True,
    M + 'encode_background_as_zeros': False,
    M + 'normalize_loss_by_num_matches': True,
    M + 'normalize_loc_loss_by_codesize': False,
    M + 'similarity_calculator.iou_similarity': {},
    M + 'box_coder.faster_rcnn_box_coder.y_scale': 10.0,
    M + 'box_coder.faster_rcnn_box_coder.x_scale': 10.0,
    M + 'box_coder.faster_rcnn_box_coder.height_scale': 5.0,
    M + 'box_coder.faster_rcnn_box_coder.width_scale': 5.0,
    M + 'matcher.argmax_matcher.ignore_thresholds': False,
    M + 'matcher.argmax_matcher.negatives_lower_than_unmatched': True,
    M + 'matcher.argmax_matcher.force_match_for_each_row': True,
    M + 'image_resizer.fixed_shape_resizer.resize_method': 'BILINEAR',
    M + 'image_resizer.fixed_shape_resizer.convert_to_grayscale': False,
    FE + 'use_explicit_padding': False,
    FE + 'override_base_feature_extractor_hyperparams': False,
    FE + 'num_layers': 6,
    BP + 'min_depth': 0,
    BP + 'max_depth': 0,
    BP + 'num_layers_before_predictor': 0,
    BP + 'use_dropout': False,
    BP + 'box_code_size': 4,
    BP + 'apply_sigmoid_to_scores': False,
    BP + 'use_depthwise': True,
    ANCHOR + 'base_anchor_height': 1.0,
    ANCHOR + 'base_anchor_width': 1.0,
    M + 'post_processing.score_converter': 'SIGMOID',
    M + 'post_processing.logit_scale': 1.0,
    LOSS + 'localization_loss.weighted_smooth_l1': {},
    LOSS + 'localization_loss.weighted_smooth_l1.delta': 1.0,
    HEM + 'loss_type': 'CLASSIFICATION',
    'train_config.data_augmentation_options.random_horizontal_flip': {},
    'train_config.data_augmentation_options.ssd_random_crop': {},
}
for _hp in (FE_HP, BP_HP):
  _FIXED.update({_hp + 'activation': 'RELU_6', _hp + 'batch_norm.center': True,
                 _hp + 'batch_norm.scale': True,
                 _hp + 'initializer.truncated_normal_initializer.mean': 0.0,
                 _hp + 'regularize_depthwise': False})
# Fields that do not change the model or its training maths: data locations, evaluation
# and logging settings, the checkpoint to fine-tune from (the importer's input), and
# implementation switches of the OD API's own graph.
_NOT_USED_PREFIXES = (
    'train_input_reader', 'eval_input_reader', 'eval_config', 'graph_rewriter',
    'train_config.fine_tune_checkpoint', 'train_config.from_detection_checkpoint',
    'train_config.load_all_detection_checkpoint_vars',
    'train_config.keep_checkpoint_every_n_hours', 'train_config.max_number_of_boxes',
    'train_config.unpad_groundtruth_tensors', 'train_config.startup_delay_steps',
    'train_config.replicas_to_aggregate', 'train_config.sync_replicas',
    'train_config.use_bfloat16', 'train_config.summarize_gradients',
    M + 'inplace_batchnorm_update', M + 'matcher.argmax_matcher.use_matmul_gather',
    M + 'post_processing.batch_non_max_suppression.use_static_shapes',
    M + 'post_processing.batch_non_max_suppression.use_combined_nms',
    M + 'post_processing.batch_non_max_suppression.use_partitioned_nms',
    M + 'post_processing.batch_non_max_suppression.soft_nms_sigma',
    BP + 'dropout_keep_probability',
)


class _Translation:
  """Collects `{dotted our-config key: value}` while reading the flat OD API fields."""

  def __init__(self, flat: Dict[str, Any], source: str):
    self.flat, self.source, self.used = flat, source, set()
    self.overrides: Dict[str, Any] = {}

  def get(self, path: str, default: Any = None, required: bool = False) -> Any:
    if path in self.flat:
      self.used.add(path)
      return self.flat[path]
    if required:
      raise ValueError(f'{self.source}: required field {path} is missing')
    return default

  def error(self, path: str, why: str) -> ValueError:
    return ValueError(f'{self.source}: {path} = {self.flat.get(path)!r}: {why}')


def _check_architecture(t: _Translation, message: pbtxt.Message) -> None:
  model = message.one('model')
  if not isinstance(model, pbtxt.Message) or not model:
    raise ValueError(f'{t.source}: no `model {{ ... }}` block')
  arch = sorted(model)[0]
  if arch != 'ssd':
    raise ValueError(f'{t.source}: model.{arch}: unsupported meta-architecture {arch!r} '
                     '(mnv2_det imports `ssd` only)')
  extractor = t.get(FE + 'type', required=True)
  if extractor != FEATURE_EXTRACTOR:
    raise ValueError(f'{t.source}: {FE}type = {extractor!r}: unsupported feature extractor '
                     f'(mnv2_det imports {FEATURE_EXTRACTOR!r})')
  if not isinstance(t.flat.get(M + 'image_resizer.fixed_shape_resizer.height'), int):
    resizer = [k for k in t.flat if k.startswith(M + 'image_resizer.')]
    raise ValueError(f'{t.source}: {resizer[0] if resizer else M + "image_resizer"}: only '
                     'fixed_shape_resizer is supported')


def _model(t: _Translation) -> None:
  o = t.overrides
  o['task.model.num_classes'] = int(t.get(M + 'num_classes', required=True)) + 1
  height = int(t.get(M + 'image_resizer.fixed_shape_resizer.height', required=True))
  width = int(t.get(M + 'image_resizer.fixed_shape_resizer.width', required=True))
  o['task.model.input_size'] = [height, width, 3]
  pad = int(t.get(FE + 'pad_to_multiple', ODAPI_DEFAULTS['pad_to_multiple']))
  if pad > 1 and (height % pad or width % pad):
    raise t.error(FE + 'pad_to_multiple', f'the OD API spreads its anchors over the '
                  f'unpadded {height}x{width} input, mnv2_det over the padded grid '
                  '(docs/frames.md); only sizes that divide it import exactly')
  multiplier = float(t.get(FE + 'depth_multiplier', 1.0))
  min_depth = int(t.get(FE + 'min_depth', ODAPI_DEFAULTS['min_depth']))
  o.update({
      'task.model.backbone.mnv2_det.depth_multiplier': multiplier,
      'task.model.backbone.mnv2_det.min_depth': min_depth,
      'task.model.backbone.mnv2_det.pad_to_multiple': max(pad, 1),
      'task.model.backbone.mnv2_det.full_depth_final_conv': False,
      'task.model.feature_maps.min_depth': min_depth,
      'task.model.feature_maps.use_depthwise': bool(t.get(FE + 'use_depthwise', False)),
  })
  fe_bn, bp_bn = _hyperparams(t, FE_HP), _hyperparams(t, BP_HP)
  if fe_bn['bn'] != bp_bn['bn']:
    raise t.error(BP_HP + 'batch_norm.decay', 'the box predictor\'s BatchNorm decay/'
                  f'epsilon {bp_bn["bn"]} must equal the feature extractor\'s {fe_bn["bn"]} '
                  '(one norm_activation setting in mnv2_det)')
  momentum, epsilon = fe_bn['bn']
  o.update({
      'task.model.norm_activation.norm_momentum': momentum,
      'task.model.norm_activation.norm_epsilon': epsilon,
      # The OD API's extractor builds MobileNetV2 under training_scope(bn_decay=0.9997).
      'task.model.backbone.mnv2_det.bn_momentum': momentum,
      'task.model.backbone.mnv2_det.bn_epsilon': epsilon,
      'task.model.feature_map_weight_decay': fe_bn['l2'],
      'task.model.feature_map_init_stddev': fe_bn['stddev'],
      'task.model.head.weight_decay': bp_bn['l2'],
      'task.model.head.init_stddev': bp_bn['stddev'],
      'task.model.head.kernel_size': int(t.get(BP + 'kernel_size', 1)),
      'task.model.head.class_prior_prob': 1.0 / (1.0 + math.exp(-float(t.get(
          BP + 'class_prediction_bias_init',
          ODAPI_DEFAULTS['class_prediction_bias_init'])))),
  })
  trains = [t.get(h + 'batch_norm.train', True) for h in (FE_HP, BP_HP)]
  if len(set(trains)) != 1:
    raise t.error(BP_HP + 'batch_norm.train', 'must equal the feature extractor\'s')
  o['task.model.freeze_batchnorm'] = bool(t.get(M + 'freeze_batchnorm', False)) or not trains[0]
  _anchors(t)
  o['task.train_data.parser.match_threshold'] = float(
      t.get(M + 'matcher.argmax_matcher.matched_threshold', 0.5))
  o['task.train_data.parser.unmatched_threshold'] = float(
      t.get(M + 'matcher.argmax_matcher.unmatched_threshold', 0.5))
  _post_processing(t, height, width, pad)
  _losses(t)


def _hyperparams(t: _Translation, prefix: str) -> Dict[str, Any]:
  stddev_key = prefix + 'initializer.truncated_normal_initializer.stddev'
  if stddev_key not in t.flat:
    init = [k for k in t.flat if k.startswith(prefix + 'initializer.')]
    if init:
      raise t.error(init[0], 'only truncated_normal_initializer is supported')
  l2_key = prefix + 'regularizer.l2_regularizer.weight'
  other = [k for k in t.flat if k.startswith(prefix + 'regularizer.') and k != l2_key]
  if other:
    raise t.error(other[0], 'only l2_regularizer is supported')
  # slim's l2_regularizer(w) is w * sum(x^2) / 2, our weight_decay's convention.
  return {'l2': float(t.get(l2_key, 0.0)), 'stddev': float(t.get(stddev_key, 0.03)),
          'bn': (float(t.get(prefix + 'batch_norm.decay', 0.999)),
                 float(t.get(prefix + 'batch_norm.epsilon', 0.001)))}


def _anchors(t: _Translation) -> None:
  o = t.overrides
  num_layers = int(t.get(ANCHOR + 'num_layers', 6))
  if num_layers != 6:
    raise t.error(ANCHOR + 'num_layers', 'the ssd_mobilenet_v2 extractor has 6 feature maps')
  ratios = t.get(ANCHOR + 'aspect_ratios', [1.0, 2.0, 0.5, 3.0, 0.3333])
  o.update({
      'task.model.anchor.num_layers': num_layers,
      'task.model.anchor.min_scale': float(t.get(ANCHOR + 'min_scale', 0.2)),
      'task.model.anchor.max_scale': float(t.get(ANCHOR + 'max_scale', 0.95)),
      'task.model.anchor.aspect_ratios': [float(r) for r in (
          ratios if isinstance(ratios, list) else [ratios])],
      'task.model.anchor.interpolated_scale_aspect_ratio': float(t.get(
          ANCHOR + 'interpolated_scale_aspect_ratio',
          ODAPI_DEFAULTS['interpolated_scale_aspect_ratio'])),
      'task.model.anchor.reduce_boxes_in_lowest_layer': bool(t.get(
          ANCHOR + 'reduce_boxes_in_lowest_layer',
          ODAPI_DEFAULTS['reduce_boxes_in_lowest_layer'])),
  })


def _post_processing(t: _Translation, height: int, width: int, pad: int) -> None:
  o = t.overrides
  per_class = int(t.get(NMS + 'max_detections_per_class', 100))
  total = int(t.get(NMS + 'max_total_detections', 100))
  o.update({
      'task.model.detection_generator.score_threshold': float(t.get(NMS + 'score_threshold', 0.0)),
      'task.model.detection_generator.iou_threshold': float(t.get(NMS + 'iou_threshold', 0.6)),
      'task.model.detection_generator.max_detections_per_class': per_class,
      'task.model.detection_generator.max_num_detections': total,
      'task.model.detection_generator.clip_before_nms': False,
  })
  # Every (anchor, real class) pair: the OD API's NMS has no candidate cut.
  shapes = anchor_ops.ssd_feature_map_shapes(
      (-(-height // pad) * pad, -(-width // pad) * pad))
  per_location = anchor_ops.anchors_per_location(
      num_layers=6, aspect_ratios=o['task.model.anchor.aspect_ratios'],
      interpolated_scale_aspect_ratio=o['task.model.anchor.interpolated_scale_aspect_ratio'],
      reduce_boxes_in_lowest_layer=o['task.model.anchor.reduce_boxes_in_lowest_layer'])
  num_anchors = sum(h * w * a for (h, w), a in zip(shapes, per_location))
  o['task.model.detection_generator.pre_nms_top_k'] = num_anchors * (
      o['task.model.num_classes'] - 1)


def _losses(t: _Translation) -> None:
  o = t.overrides
  sigmoid = t.get(LOSS + 'classification_loss.weighted_sigmoid') is not None
  focal = any(k.startswith(LOSS + 'classification_loss.weighted_sigmoid_focal')
              for k in t.flat)
  miner = any(k.startswith(HEM) for k in t.flat)
  if sigmoid and miner:
    o['task.losses.classification'] = 'sigmoid_hem'
    o.update({
        'task.losses.num_hard_examples': int(t.get(HEM + 'num_hard_examples', 64)),
        'task.losses.mining_iou_threshold': float(t.get(HEM + 'iou_threshold', 0.7)),
        'task.losses.max_negatives_per_positive': int(t.get(
            HEM + 'max_negatives_per_positive', 0)),
        'task.losses.min_negatives_per_image': int(t.get(HEM + 'min_negatives_per_image', 0)),
    })
  elif focal and not miner:
    focal_key = LOSS + 'classification_loss.weighted_sigmoid_focal'
    o['task.losses.classification'] = 'focal'
    o['task.losses.focal_alpha'] = float(t.get(focal_key + '.alpha', 0.25))
    o['task.losses.focal_gamma'] = float(t.get(focal_key + '.gamma', 2.0))
    t.get(focal_key)
  else:
    keys = [k for k in t.flat if k.startswith(LOSS + 'classification_loss')] or [
        LOSS + 'classification_loss']
    raise t.error(keys[0], 'supported: weighted_sigmoid with hard_example_miner, or '
                  'weighted_sigmoid_focal without it')
  o['task.losses.classification_weight'] = float(t.get(LOSS + 'classification_weight', 1.0))
  o['task.losses.localization_weight'] = float(t.get(LOSS + 'localization_weight', 1.0))


def _train(t: _Translation) -> None:
  o = t.overrides
  if 'train_config.batch_size' in t.flat:
    o['task.train_data.global_batch_size'] = int(t.get('train_config.batch_size'))
  o['task.train_data.parser.aug_random_flip'] = (
      'train_config.data_augmentation_options.random_horizontal_flip' in t.flat)
  o['task.train_data.parser.aug_ssd_random_crop'] = (
      'train_config.data_augmentation_options.ssd_random_crop' in t.flat)
  if int(t.get('train_config.num_steps', 0)) > 0:
    o['trainer.train_steps'] = int(t.get('train_config.num_steps'))
  if t.get(OPT + 'use_moving_average', False):
    o['trainer.optimizer_config.ema'] = {
        'average_decay': float(t.get(OPT + 'moving_average_decay', 0.9999))}
  kinds = {RMS: 'rmsprop', MOM: 'sgd', ADAM: 'adam'}
  present = [p for p in kinds if any(k.startswith(p) for k in t.flat)]
  if not present:
    return
  prefix = present[0]
  opt = {'type': kinds[prefix]}
  if prefix == RMS:
    opt['rmsprop'] = {'momentum': float(t.get(prefix + 'momentum_optimizer_value', 0.9)),
                      'rho': float(t.get(prefix + 'decay', 0.9)),
                      'epsilon': float(t.get(prefix + 'epsilon', 1.0))}
  elif prefix == MOM:
    opt['sgd'] = {'momentum': float(t.get(prefix + 'momentum_optimizer_value', 0.9))}
  else:
    opt['adam'] = {'epsilon': float(t.get(prefix + 'epsilon', 1e-8))}
  o['trainer.optimizer_config.optimizer'] = opt
  o['trainer.optimizer_config.learning_rate'] = _learning_rate(t, prefix + 'learning_rate.')
  o['trainer.optimizer_config.warmup'] = {'type': None}


def _learning_rate(t: _Translation, prefix: str) -> Dict[str, Any]:
  exp = prefix + 'exponential_decay_learning_rate.'
  const = prefix + 'constant_learning_rate.'
  for key in (exp + 'burnin_learning_rate', exp + 'burnin_steps', exp + 'min_learning_rate'):
    if float(t.flat.get(key, 0.0)):
      raise t.error(key, 'not supported (no burn-in or floor in Model Garden\'s '
                    'exponential schedule)')
    t.get(key)
  if any(k.startswith(exp) for k in t.flat):
    return {'type': 'exponential', 'exponential': {
        'initial_learning_rate': float(t.get(exp + 'initial_learning_rate', 0.002)),
        'decay_steps': int(t.get(exp + 'decay_steps', 4000000)),
        'decay_rate': float(t.get(exp + 'decay_factor', 0.95)),
        'staircase': bool(t.get(exp + 'staircase', ODAPI_DEFAULTS['staircase']))}}
  if any(k.startswith(const) for k in t.flat):
    return {'type': 'constant', 'constant': {
        'learning_rate': float(t.get(const + 'learning_rate', 0.002))}}
  keys = [k for k in t.flat if k.startswith(prefix)] or [prefix]
  raise t.error(keys[0], 'supported learning rates: exponential_decay_learning_rate, '
                'constant_learning_rate')


def translate_text(text: str, source: str = 'pipeline.config'
                   ) -> Tuple[Dict[str, Any], List[str]]:
  """`(overrides, not_used)`: dotted experiment keys -> values, and the OD API fields
  that were read but do not apply (module docstring). ValueError names `source`, the
  field and its value for anything that cannot be honoured."""
  try:
    message = pbtxt.parse(text, source)
  except pbtxt.ParseError as e:
    raise ValueError(str(e)) from e
  t = _Translation(pbtxt.flatten(message), source)
  _check_architecture(t, message)
  _model(t)
  _train(t)
  not_used = []
  for path, value in sorted(t.flat.items()):
    if path in t.used:
      continue
    if path in _FIXED:
      if _FIXED[path] != value:
        raise t.error(path, f'only {_FIXED[path]!r} is supported')
    elif path.startswith(_NOT_USED_PREFIXES):
      not_used.append(path)
    elif path.startswith(FE + 'type'):
      continue
    else:
      raise t.error(path, 'unsupported field (mnv2_det cannot honour it)')
  return t.overrides, not_used


def build_params(text: str, source: str = 'pipeline.config'):
  """The experiment (BASE_EXPERIMENT overridden by the translation), validated."""
  overrides, not_used = translate_text(text, source)
  params = exp_factory.get_exp_config(BASE_EXPERIMENT)
  params.override(_nest(overrides), is_strict=True)
  params.validate()
  return params, not_used


def _nest(flat: Dict[str, Any]) -> Dict[str, Any]:
  nested: Dict[str, Any] = {}
  for key, value in flat.items():
    node = nested
    parts = key.split('.')
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    node[parts[-1]] = value
  return nested
