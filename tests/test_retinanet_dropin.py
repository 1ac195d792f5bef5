"""The backbone as a drop-in of Model Garden's own RetinaNet (FPN decoder + RetinaNet head)."""

import numpy as np
import tensorflow as tf
import tf_keras

import mnv2_det  # registers the backbone builder
from mnv2_det.configs import backbones as backbone_cfg
from official.core import exp_factory
from official.vision.configs import decoders
from official.vision.ops import anchor
from official.vision.tasks import retinanet

IMAGE_SIZE = 128
NUM_CLASSES = 4


def _task():
  config = exp_factory.get_exp_config('retinanet_mobile_coco')
  model = config.task.model
  model.backbone = backbone_cfg.Backbone(
      type='mnv2_det', mnv2_det=backbone_cfg.MobileNetV2Det(depth_multiplier=0.35))
  model.decoder = decoders.Decoder(
      type='fpn', fpn=decoders.FPN(num_filters=32, use_separable_conv=True))
  model.head.num_filters = 32
  model.min_level, model.max_level = 3, 7
  model.input_size = [IMAGE_SIZE, IMAGE_SIZE, 3]
  model.num_classes = NUM_CLASSES
  model.norm_activation.use_sync_bn = False
  config.task.losses.l2_weight_decay = 4e-5
  return retinanet.RetinaNetTask(config.task), model


def _labels(model_cfg, batch):
  anchor_cfg = model_cfg.anchor
  boxes = anchor.build_anchor_generator(
      min_level=model_cfg.min_level, max_level=model_cfg.max_level,
      num_scales=anchor_cfg.num_scales, aspect_ratios=anchor_cfg.aspect_ratios,
      anchor_size=anchor_cfg.anchor_size)((IMAGE_SIZE, IMAGE_SIZE))
  labeler = anchor.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.5)
  gt_boxes = tf.constant([[10., 12., 70., 90.], [60., 40., 120., 110.]])
  gt_classes = tf.constant([[1], [3]])
  cls_t, box_t, _, cls_w, box_w = labeler.label_anchors(boxes, gt_boxes, gt_classes)
  stack = lambda x: tf.stack([x] * batch)
  return {'cls_targets': tf.nest.map_structure(stack, cls_t),
          'box_targets': tf.nest.map_structure(stack, box_t),
          'cls_weights': stack(cls_w), 'box_weights': stack(box_w)}


def test_model_garden_retinanet_trains_on_mnv2_det_backbone():
  task, model_cfg = _task()
  model = task.build_model()
  assert type(model.backbone).__name__ == 'MobileNetV2Backbone'
  assert type(model.decoder).__name__ == 'FPN'
  # MG's l2_weight_decay reaches the backbone as slim-style weight decay.
  assert model.backbone.get_config()['weight_decay'] == np.float32(4e-5)
  images = tf.random.uniform([2, IMAGE_SIZE, IMAGE_SIZE, 3], -1, 1, seed=3)
  labels = _labels(model_cfg, 2)
  optimizer = tf_keras.optimizers.SGD(0.01)
  bn = model.backbone.get_layer('block_13_expand_BN')
  var_before = bn.moving_variance.numpy().copy()
  kernel_before = model.backbone.get_layer('Conv1').kernel.numpy().copy()
  logs = task.train_step((images, labels), model, optimizer)
  assert np.isfinite(float(logs['loss']))
  assert not np.allclose(model.backbone.get_layer('Conv1').kernel.numpy(), kernel_before)
  # BN ran in training mode: moving variance moved away from its initial 1.0.
  assert np.abs(bn.moving_variance.numpy() - var_before).max() > 1e-4
