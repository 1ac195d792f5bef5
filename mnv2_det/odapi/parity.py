"""What the OD API's `SSDMetaArch` reports, computed by an imported mnv2_det model.

For checking that an imported model computes what the OD API computes (the tests do,
against fixtures made by the OD API's own code; tests/fixtures/odapi).
"""

from typing import Dict

import numpy as np
import tensorflow as tf

from mnv2_det.export import serving_inputs
from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.core import checkpoints
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib


def _load(model_dir: str):
  prefix, params_file = checkpoints.resolve_checkpoint(model_dir)
  params = params_lib.build_params('ssdlite_mnv2_coco', params_file)
  task, model = loading.load_task_and_model(params, prefix)
  return params, task, model


def _prepared(params, images: np.ndarray) -> tf.Tensor:
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
    raise ValueError(f'images must be uint8 [B, H, W, 3], got {images.dtype} '
                     f'{list(images.shape)}')
  size = params.task.model.input_size[:2]
  return tf.stack([serving_inputs.prepare_image(tf.constant(image), size, 'fixed')[0]
                   for image in images])


def _flat_outputs(params, model, images):
  cls_outputs, box_outputs = model.raw_outputs(images, training=False)
  num_classes = params.task.model.num_classes
  return (tf.cast(anchor_ops.flatten_levels(box_outputs, 4), tf.float32),
          tf.cast(anchor_ops.flatten_levels(cls_outputs, num_classes), tf.float32))


def raw_predictions(model_dir: str, images: np.ndarray) -> Dict[str, np.ndarray]:
  """uint8 `[B, H, W, 3]` -> `{'box_encodings' [B, N, 4] (ty, tx, th, tw),
  'class_predictions_with_background' [B, N, C] logits}`, OD API anchor order, before
  the score converter. Images are resized to the input size as the OD API's
  fixed_shape_resizer (bilinear); at the input size they pass unchanged."""
  params, _, model = _load(model_dir)
  boxes, logits = _flat_outputs(params, model, _prepared(params, images))
  return {'box_encodings': boxes.numpy(), 'class_predictions_with_background': logits.numpy()}


def ssd_losses(model_dir: str, images: np.ndarray, groundtruth_boxes,
               groundtruth_classes) -> Dict[str, float]:
  """`{'localization_loss', 'classification_loss'}` as `SSDMetaArch.loss` reports them
  (weighted, normalized by the number of matches) for inference-mode predictions.

  Args:
    model_dir: an imported (or trained) model dir.
    images: uint8 `[B, H, W, 3]`.
    groundtruth_boxes: per image `[M_i, 4]` normalized `[ymin, xmin, ymax, xmax]`.
    groundtruth_classes: per image `[M_i]` 1-based class indices.
  """
  params, task, model = _load(model_dir)
  prepared = _prepared(params, images)
  labeler = task.anchor_labeler()
  targets = [labeler(tf.constant(np.asarray(b, np.float32).reshape([-1, 4])),
                     tf.constant(np.asarray(c, np.int32).reshape([-1])))
             for b, c in zip(groundtruth_boxes, groundtruth_classes)]
  labels = {k: tf.stack([t[k] for t in targets]) for k in targets[0]}
  cls_outputs, box_outputs = model.raw_outputs(prepared, training=False)
  losses = task.build_losses({'cls_outputs': cls_outputs, 'box_outputs': box_outputs},
                             labels)
  return {'localization_loss': float(losses['box_loss']),
          'classification_loss': float(losses['cls_loss'])}
