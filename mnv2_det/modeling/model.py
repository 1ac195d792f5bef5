"""The SSDLite detector: backbone -> SSD feature maps -> SSDLite head -> decode + NMS."""

from typing import Any, Dict, Mapping, Optional

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.ops import postprocess as postprocess_ops


@tf_keras.utils.register_keras_serializable(package='mnv2_det')
class SSDLiteModel(tf_keras.Model):
  """MobileNetV2 + SSDLite.

  Call with `images` `[B, H, W, 3]` float32 in [-1, 1] (already resized to `input_size`;
  the backbone pads to a multiple of 32) and, for detections, `image_info` `[B, 4, 2]`
  in Model Garden's convention. Returns a dict:
    - `cls_outputs`: `{level: [B, h, w, A * num_classes]}` logits (channel 0 background);
    - `box_outputs`: `{level: [B, h, w, A * 4]}` Faster R-CNN codes (10, 10, 5, 5);
    - in inference mode also `detection_boxes` `[B, K, 4]` (original-image pixels,
      `[ymin, xmin, ymax, xmax]`), `detection_scores` `[B, K]`, `detection_classes`
      `[B, K]` int32 contiguous ids 1..num_real_classes, `num_detections` `[B]` int32.
  `detection_params` are `ops.postprocess.postprocess` arguments; its
  `num_real_classes` (the category table's size; default num_classes - 1) limits
  detections to the class channels that have a dataset category id.
  """

  def __init__(self, backbone, feature_maps, head, anchor_boxes: np.ndarray,
               input_size, detection_params: Optional[Mapping[str, Any]] = None,
               **kwargs):
    super().__init__(**kwargs)
    self.backbone = backbone
    self.feature_maps = feature_maps
    self.head = head
    self._anchor_boxes = np.asarray(anchor_boxes, np.float32)
    self._input_size = [int(s) for s in input_size[:2]]
    self._detection_params = dict(detection_params or {})

  @property
  def anchor_boxes(self) -> np.ndarray:
    """`[N, 4]` float32 normalized `[ymin, xmin, ymax, xmax]` of the network input
    frame (`input_size`, before padding; docs/frames.md)."""
    return self._anchor_boxes

  @property
  def input_size(self):
    """(H, W) of the network input, before the backbone pads it."""
    return tuple(self._input_size)

  @property
  def num_real_classes(self) -> int:
    """Classes that can be detected (contiguous 1..this): the category table's size,
    or num_classes - 1 when the model was built without one."""
    value = self._detection_params.get('num_real_classes')
    if value is None:
      return int(self.head.get_config()['num_classes']) - 1
    return int(value)

  @property
  def padded_size(self):
    """(H, W) of the network input after padding to the backbone's multiple."""
    multiple = self.backbone.get_config()['pad_to_multiple']
    return tuple(-(-s // multiple) * multiple for s in self._input_size)

  def raw_outputs(self, images, training=None):
    """`(cls_outputs, box_outputs)` per-level dicts, without post-processing."""
    endpoints = self.backbone(images, training=training)
    features = self.feature_maps(endpoints, training=training)
    return self.head(features, training=training)

  def call(self, images, image_info=None, training=None):
    cls_outputs, box_outputs = self.raw_outputs(images, training=training)
    outputs = {'cls_outputs': cls_outputs, 'box_outputs': box_outputs}
    if training:
      return outputs
    if image_info is None:
      image_info = _identity_image_info(tf.shape(images)[0], self._input_size)
    num_classes = self.head.get_config()['num_classes']
    cls_flat = anchor_ops.flatten_levels(cls_outputs, num_classes)
    box_flat = anchor_ops.flatten_levels(box_outputs, 4)
    detections = postprocess_ops.postprocess(
        tf.cast(cls_flat, tf.float32), tf.cast(box_flat, tf.float32),
        tf.constant(self._anchor_boxes), tf.cast(image_info, tf.float32),
        input_size=self._input_size, **self._detection_params)
    outputs.update(detections)
    return outputs

  def get_config(self):
    return {
        'backbone': tf_keras.utils.serialize_keras_object(self.backbone),
        'feature_maps': tf_keras.utils.serialize_keras_object(self.feature_maps),
        'head': tf_keras.utils.serialize_keras_object(self.head),
        'anchor_boxes': self._anchor_boxes.tolist(),
        'input_size': self._input_size,
        'detection_params': self._detection_params,
    }

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    for key in ('backbone', 'feature_maps', 'head'):
      config[key] = tf_keras.utils.deserialize_keras_object(
          config[key], custom_objects=custom_objects)
    return cls(**config)

  @property
  def checkpoint_items(self) -> Dict[str, Any]:
    """Sub-modules for `tf.train.Checkpoint`, as Model Garden models expose them."""
    return {'backbone': self.backbone, 'feature_maps': self.feature_maps, 'head': self.head}


def _identity_image_info(batch_size, input_size):
  """image_info for images that were not resized: original = input size, scale 1."""
  h, w = float(input_size[0]), float(input_size[1])
  info = tf.constant([[h, w], [h, w], [1.0, 1.0], [0.0, 0.0]], tf.float32)
  return tf.tile(info[tf.newaxis], [batch_size, 1, 1])
