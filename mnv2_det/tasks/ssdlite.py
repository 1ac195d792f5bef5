"""SSDLite as a Model Garden task: model, inputs, losses, train/validation steps, COCO eval.

Follows `official.vision.tasks.retinanet.RetinaNetTask`: `train_step` calls the model with
`training=True` inside the GradientTape, so every non-frozen BatchNorm layer updates its
moving statistics on every step (TF2 Keras does this in place; no UPDATE_OPS to wire).
"""

from typing import Any, Dict, List, Optional

from absl import logging
import numpy as np
import tensorflow as tf
import tf_keras

from official.core import base_task
from official.core import task_factory
from official.vision.utils.object_detection import visualization_utils

from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.data import input_pipeline
from mnv2_det.modeling import factory
from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.ops import losses as loss_ops
from mnv2_det.ops import matching
from mnv2_det.tasks import coco_metric

VISUALIZED_IMAGES = 4  # eval images drawn with their detections in TensorBoard


class DrawnImages(np.ndarray):
  """Eval images with detections drawn (`[N, H, W, 3]`), as returned in the eval logs.

  An ndarray, so Model Garden's summary manager writes it as a TensorBoard image and its
  best-checkpoint exporter skips it (rank 4); only its repr is short, so orbit's
  `eval | ... | output:` line shows the COCO metrics instead of pages of pixels.
  """

  def __repr__(self):
    return (f'<{self.shape[0]} eval image(s) with detections drawn, '
            f'{self.shape[1]}x{self.shape[2]}>')

  __str__ = __repr__


LOSS_KEYS = ('total_loss', 'cls_loss', 'box_loss', 'regularization_loss', 'num_positives')


@task_factory.register_task_cls(ssdlite_cfg.SSDLiteTask)
class SSDLiteTask(base_task.Task):
  """Trains and evaluates MobileNetV2 + SSDLite."""

  def __init__(self, params, logging_dir=None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self._anchors = factory.build_anchors(params.model)
    self._category_map = None
    self.coco_metric = None

  # ----------------------------------------------------------------- model
  def build_model(self) -> tf_keras.Model:
    """The detector; it detects only the K classes of the category table (contiguous
    1..K): tail outputs past K (num_classes > K + 1) have no dataset id.
    `losses.l2_weight_decay` > 0 is the weight decay of every part (configs.Losses)."""
    return factory.build_ssdlite_model(
        self.task_config.model, num_real_classes=self._num_real_classes(),
        l2_weight_decay=self.task_config.losses.l2_weight_decay)

  def _num_real_classes(self) -> Optional[int]:
    """K of the category table, or None (all num_classes - 1) when no annotation file
    is configured or it does not exist (e.g. model stats of an experiment whose data
    was never generated): then there are no dataset ids to map detections to."""
    if self._category_map is None:
      data = self.task_config.train_data
      source = data.annotation_file or self.task_config.validation_data.annotation_file
      if not source or not tf.io.gfile.exists(source):
        return None
    return len(self.category_map.dataset_ids)

  def use_category_map(self, category_map) -> None:
    """Takes `category_map` (e.g. a model dir's categories.json) instead of the
    training annotations' table; checked against num_classes as that one is."""
    self._check_category_map(category_map, 'the category table')
    self._category_map = category_map

  def initialize(self, model: tf_keras.Model):
    """Restores `init_checkpoint` (modules: 'all' or 'backbone') if set."""
    path = self.task_config.init_checkpoint
    if not path:
      return
    if tf.io.gfile.isdir(path):
      path = tf.train.latest_checkpoint(path)
    if not path:
      raise ValueError(f'init_checkpoint {self.task_config.init_checkpoint!r} holds no '
                       'checkpoint')
    modules = self.task_config.init_checkpoint_modules
    reader = tf.train.load_checkpoint(path)
    if modules in ('all', ['all']) and any(
        k.startswith('model/') for k in reader.get_variable_to_shape_map()):
      # A trainer's (or tools/import_odapi.py's) Checkpoint(model=...): layers whose
      # shapes changed (the class predictor for a new class count) start fresh.
      from mnv2_det.core import checkpoints  # pylint: disable=g-import-not-at-top
      restored, fresh = checkpoints.restore_matching(model, path)
      logging.info('Initialized %d variables from %s; %d left fresh: %s', restored, path,
                   len(fresh), fresh)
      return
    if modules in ('all', ['all']):
      status = tf.train.Checkpoint(**model.checkpoint_items).read(path)
      status.expect_partial().assert_existing_objects_matched()
    else:
      from mnv2_det.weights import load_backbone_weights  # pylint: disable=g-import-not-at-top
      load_backbone_weights(model.backbone, path)
    logging.info('Initialized %s from %s', modules, path)

  # ----------------------------------------------------------------- data
  @property
  def category_map(self):
    """Contiguous index <-> dataset category id table of the training data."""
    if self._category_map is None:
      data = self.task_config.train_data
      source = data.annotation_file or self.task_config.validation_data.annotation_file
      if not source:
        raise ValueError('task.train_data.annotation_file (a COCO JSON) is needed for the '
                         'category table')
      category_map = input_pipeline.load_category_map(source)
      self._check_category_map(category_map, source)
      self._category_map = category_map
    return self._category_map

  def _check_category_map(self, category_map, source: str) -> None:
    num_categories = len(category_map.dataset_ids)
    num_classes = self.task_config.model.num_classes
    # num_classes counts background at index 0: K categories need K + 1 outputs.
    if category_map.num_classes > num_classes:
      raise ValueError(
          f'{source}: {num_categories} categories need task.model.num_classes >= '
          f'{category_map.num_classes} ({num_categories} + background at index 0), '
          f'got {num_classes}')

  def anchor_labeler(self):
    parser = self.task_config.train_data.parser
    anchors = tf.constant(self._anchors)

    def label(gt_boxes, gt_classes):
      targets = matching.assign_targets(
          anchors, gt_boxes, gt_classes, match_threshold=parser.match_threshold,
          unmatched_threshold=parser.unmatched_threshold)
      return {k: targets[k] for k in ('cls_targets', 'box_targets', 'positive_mask',
                                      'cls_weights')}
    return label

  def build_inputs(self, params: ssdlite_cfg.DataConfig,
                   input_context: Optional[tf.distribute.InputContext] = None):
    batch_size = (input_context.get_per_replica_batch_size(params.global_batch_size)
                  if input_context else params.global_batch_size)
    kwargs = dict(
        is_training=params.is_training, batch_size=batch_size,
        output_size=self.task_config.model.input_size[:2],
        anchor_labeler=self.anchor_labeler(), resize_mode=params.parser.resize_mode,
        max_num_instances=params.parser.max_num_instances, seed=params.seed,
        shuffle_buffer_size=params.shuffle_buffer_size, dtype=params.dtype,
        drop_remainder=params.drop_remainder, input_context=input_context,
        augment_images=params.is_training and (params.parser.aug_random_flip or
                                               params.parser.aug_ssd_random_crop),
        random_crop=params.parser.aug_ssd_random_crop,
        random_flip=params.parser.aug_random_flip)
    if params.annotation_file:
      dataset = input_pipeline.build_dataset(
          params.annotation_file, params.image_dir, category_map=self.category_map,
          **kwargs)
    elif params.input_path:
      dataset = input_pipeline.build_dataset_from_tfrecords(
          params.input_path, self.category_map, **kwargs)
    else:
      raise ValueError('data config needs annotation_file + image_dir (COCO JSON) or '
                       'input_path (Model Garden TFRecords)')
    return dataset

  # ----------------------------------------------------------------- losses
  def build_losses(self, outputs: Dict[str, Any], labels: Dict[str, Any],
                   aux_losses: Optional[List[tf.Tensor]] = None) -> Dict[str, tf.Tensor]:
    """SSD loss on flattened outputs plus the layers' regularization losses.

    Returns float32 scalars keyed by LOSS_KEYS; `total_loss` is what is optimized.
    """
    config = self.task_config
    num_classes = config.model.num_classes
    cls_logits = tf.cast(anchor_ops.flatten_levels(outputs['cls_outputs'], num_classes),
                         tf.float32)
    box_preds = tf.cast(anchor_ops.flatten_levels(outputs['box_outputs'], 4), tf.float32)
    l = config.losses
    result = loss_ops.ssd_loss(
        cls_logits, box_preds, labels['cls_targets'], labels['box_targets'],
        labels['positive_mask'], tf.constant(self._anchors),
        classification=l.classification, focal_alpha=l.focal_alpha,
        focal_gamma=l.focal_gamma, cls_weight=l.classification_weight,
        loc_weight=l.localization_weight, num_hard_examples=l.num_hard_examples,
        mining_iou_threshold=l.mining_iou_threshold,
        max_negatives_per_positive=l.max_negatives_per_positive,
        min_negatives_per_image=l.min_negatives_per_image,
        valid_mask=labels.get('cls_weights'))
    regularization = (tf.add_n([tf.cast(x, tf.float32) for x in aux_losses])
                      if aux_losses else tf.constant(0.0))
    result = dict(result)
    result['regularization_loss'] = regularization
    result['total_loss'] = result['total_loss'] + regularization
    return result

  def build_metrics(self, training: bool = True):
    metrics = [tf_keras.metrics.Mean(name, dtype=tf.float32) for name in LOSS_KEYS]
    if not training:
      annotation_file = (self.task_config.annotation_file or
                         self.task_config.validation_data.annotation_file or None)
      # MG's COCOEvaluator; it also keeps its last inputs for training-time plots.
      self.coco_metric = coco_metric.RecordingCOCOEvaluator(
          annotation_file=annotation_file, include_mask=False,
          need_rescale_bboxes=False,
          per_category_metrics=self.task_config.per_category_metrics)
    return metrics

  # ----------------------------------------------------------------- steps
  def train_step(self, inputs, model: tf_keras.Model, optimizer, metrics=None):
    images, labels = inputs
    num_replicas = tf.distribute.get_strategy().num_replicas_in_sync
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      losses = self.build_losses(outputs, labels, aux_losses=model.losses)
      scaled_loss = losses['total_loss'] / num_replicas
      if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
        scaled_loss = optimizer.get_scaled_loss(scaled_loss)
    variables = model.trainable_variables
    grads = tape.gradient(scaled_loss, variables)
    if isinstance(optimizer, tf_keras.mixed_precision.LossScaleOptimizer):
      grads = optimizer.get_unscaled_gradients(grads)
    optimizer.apply_gradients(list(zip(grads, variables)))
    return self._logs(losses, metrics)

  def validation_step(self, inputs, model: tf_keras.Model, metrics=None):
    images, labels = inputs
    outputs = model(images, image_info=labels['image_info'], training=False)
    losses = self.build_losses(outputs, labels, aux_losses=model.losses)
    logs = self._logs(losses, metrics)
    predictions = {
        'source_id': labels['source_id'],
        'image_info': labels['image_info'],
        'detection_boxes': outputs['detection_boxes'],
        'detection_scores': outputs['detection_scores'],
        # The model detects only contiguous 1..K, so every detection has a dataset id;
        # padding rows (class 0) become -1, which COCOeval ignores (no such category).
        'detection_classes': self.category_map.tf_to_dataset(outputs['detection_classes']),
        'num_detections': outputs['num_detections'],
    }
    logs[self.coco_metric.name] = (labels['groundtruths'], predictions)
    if self.task_config.allow_image_summary:
      # float32 whatever validation_data.dtype, for the drawing.
      logs['visualization'] = (
          tf.cast(images[:VISUALIZED_IMAGES], tf.float32),
          self._input_frame_detections(outputs, labels['image_info']))
    return logs

  def _input_frame_detections(self, outputs, image_info):
    """Detections of the first images in the network-input pixel frame, for drawing."""
    scale = tf.tile(image_info[:VISUALIZED_IMAGES, 2:3, :], [1, 1, 2])  # [b, 1, 4] yxyx
    offset = tf.tile(image_info[:VISUALIZED_IMAGES, 3:4, :], [1, 1, 2])
    boxes = outputs['detection_boxes'][:VISUALIZED_IMAGES] * scale - offset
    return {'detection_boxes': boxes,
            'detection_scores': outputs['detection_scores'][:VISUALIZED_IMAGES],
            'detection_classes': outputs['detection_classes'][:VISUALIZED_IMAGES]}

  def _logs(self, losses, metrics):
    logs = {self.loss: losses['total_loss']}
    for metric in metrics or []:
      metric.update_state(losses[metric.name])
    return logs

  def aggregate_logs(self, state=None, step_outputs=None):
    """Feeds COCO; keeps the first batch's images + detections when visualizing.

    The state must stay truthy: Model Garden skips `reduce_aggregated_logs` otherwise.
    """
    if state is None:
      self.coco_metric.reset_states()
      state = True
    self.coco_metric.update_state(step_outputs[self.coco_metric.name][0],
                                  step_outputs[self.coco_metric.name][1])
    if 'visualization' in step_outputs and not isinstance(state, dict):
      state = visualization_utils.update_detection_state(step_outputs)
    return state

  def reduce_aggregated_logs(self, aggregated_logs, global_step=None):
    logs = dict(self.coco_metric.result())
    if isinstance(aggregated_logs, dict) and 'image' in aggregated_logs:
      # Images are (2/255)x - 1: undo with mean = std = 127.5.
      drawn = visualization_utils.visualize_outputs(
          logs=aggregated_logs, task_config=self.task_config,
          image_mean=[127.5] * 3, image_std=[127.5] * 3)
      logs.update({k: np.asarray(v).view(DrawnImages) for k, v in drawn.items()})
    return logs
