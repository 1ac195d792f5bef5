"""SavedModel export of the SSDLite detector (Model Garden serving machinery).

Reuses `official.vision.serving.export_base.ExportModule` (signature plumbing, the
`inference_from_image_tensors` tf.function) and `official.core.export_base.export`
(writes the SavedModel). Model Garden's `DetectionModule` itself does not fit: it only
builds MG RetinaNet / Mask R-CNN models, normalizes with ImageNet mean/std instead of
(2/255)·x − 1, and calls `model.call(images, image_shape, anchor_boxes)`.

The Keras model is handed to the ExportModule wrapped in `_InferenceModel`, a plain
tf.Module that tracks only the model's variables: `tf.saved_model.save` then does not
re-serialize the subclassed Keras model (its per-layer call traces are useless to a
serving client), which takes ~5x longer (39 s vs 8 s on a 128x128, 0.35x model) and
fails with the current builder, whose first model call records a VariableSpec as the
Keras save spec.

Signatures:
  serving_default: `images` uint8 `[1, None, None, 3]` RGB of any size.
  serving_batch (with `batch_size=B`): uint8 `[B, H, W, 3]` at the config input size.
Both resize + normalize in the graph exactly as the eval pipeline
(`serving_inputs.prepare_image`) and return
  detection_boxes `[B, K, 4]` float32 `[ymin, xmin, ymax, xmax]` ORIGINAL image pixels;
  detection_scores `[B, K]` float32 sigmoid scores, descending;
  detection_classes `[B, K]` int32 DATASET category ids (-1 for padding rows only: the
    model detects only the category table's classes, never a head output past them);
  num_detections `[B]` int32; rows past it are padding (box 0, score 0, class -1).
"""

import json
import os
from typing import Optional

import tensorflow as tf

from official.core import export_base as core_export_base
from official.core import train_utils
from official.vision.serving import export_base

from mnv2_det.data import preprocess
from mnv2_det.data.category_map import UNKNOWN, CategoryMap
from mnv2_det.export import atomic
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.export import serving_inputs

DEFAULT_SIGNATURE = tf.saved_model.DEFAULT_SERVING_SIGNATURE_DEF_KEY  # 'serving_default'
BATCH_SIGNATURE = 'serving_batch'
# function_keys of the ExportModule: MG's 'image_tensor' ([batch, None, None, 3] uint8)
# and ours for the fixed-size batch.
IMAGE_TENSOR_KEY = 'image_tensor'
FIXED_BATCH_KEY = 'image_tensor_fixed_batch'
SERVING_BATCH_SIZE = 1
INPUT_NAME = 'images'
DETECTOR_INFO_FILE = 'detector.json'


class _InferenceModel(tf.Module):
  """Calls a Keras SSDLiteModel in inference mode; saves only its variables."""

  def __init__(self, model):
    super().__init__(name='ssdlite_inference')
    self.model_variables = list(model.variables)
    self._call = model.__call__  # A bound method: not tracked, not serialized.

  def __call__(self, images, image_info=None, training=False):
    return self._call(images, image_info=image_info, training=training)


class SSDLiteServingModule(export_base.ExportModule):
  """Serving module: uint8 images of any size -> detections in original pixels."""

  def __init__(self, params, model, category_map: CategoryMap,
               fixed_batch_size: Optional[int] = None):
    """Args: experiment params, restored SSDLiteModel, its category table, and the
    batch size of the optional `serving_batch` signature."""
    settings = loading.detection_settings(params)
    real = loading.num_real_classes(params, category_map)
    if model.num_real_classes != real:
      raise ValueError(f'the model detects {model.num_real_classes} classes but the '
                       f'category table has {real}: build it with the task '
                       f'(task.build_model()), which passes the table\'s size')
    self._output_size = settings['input_size']
    self._resize_mode = settings['resize_mode']
    self._category_map = category_map
    self._fixed_batch_size = params_lib.optional_int(fixed_batch_size, 'batch_size')
    super().__init__(params, batch_size=SERVING_BATCH_SIZE,
                     input_image_size=list(self._output_size), input_type=IMAGE_TENSOR_KEY,
                     model=_InferenceModel(model), input_name=INPUT_NAME)

  def _prepare(self, image):
    return serving_inputs.prepare_image(image, self._output_size, self._resize_mode)

  def serve(self, images: tf.Tensor):
    """images `[B, h, w, 3]` uint8 -> detection dict (module docstring)."""
    h, w = self._output_size
    prepared, image_info = tf.map_fn(
        self._prepare, images,
        fn_output_signature=(tf.TensorSpec([h, w, preprocess.RGB_CHANNELS], tf.float32),
                             tf.TensorSpec(serving_inputs.IMAGE_INFO_SHAPE, tf.float32)))
    outputs = self.inference_step(prepared, image_info=image_info)
    num = tf.cast(outputs['num_detections'], tf.int32)
    valid = tf.range(tf.shape(outputs['detection_scores'])[1])[tf.newaxis] < num[:, None]
    classes = self._category_map.tf_to_dataset(outputs['detection_classes'])
    return {
        'detection_boxes': tf.cast(outputs['detection_boxes'], tf.float32),
        'detection_scores': tf.cast(outputs['detection_scores'], tf.float32),
        'detection_classes': tf.where(valid, classes, UNKNOWN),
        'num_detections': num,
    }

  def get_inference_signatures(self, function_keys):
    """MG's keys plus FIXED_BATCH_KEY: uint8 `[B, H, W, 3]` at the input size."""
    signatures = {}
    for key, name in function_keys.items():
      if key == FIXED_BATCH_KEY:
        if not self._fixed_batch_size:
          raise ValueError(f'{FIXED_BATCH_KEY} needs fixed_batch_size')
        spec = tf.TensorSpec([self._fixed_batch_size] + list(self._output_size) +
                             [preprocess.RGB_CHANNELS], tf.uint8, name=INPUT_NAME)
        signatures[name] = self.inference_from_image_tensors.get_concrete_function(spec)
      else:
        signatures.update(super().get_inference_signatures({key: name}))
    return signatures


def detector_info(params, category_map: CategoryMap, **extra) -> dict:
  """JSON-able description of an exported detector (inputs, classes, post-process).
  `num_classes` is the EXPORTED detector's, K + 1 for the K categories (background 0),
  which can be less than the head's `task.model.num_classes`: outputs past K have no
  dataset id and are not exported (files written before this rule may say more)."""
  info = loading.detection_settings(params)
  info.update({'num_classes': loading.num_real_classes(params, category_map) + 1,
               'dataset_ids': [int(i) for i in category_map.dataset_ids],
               'class_names': list(category_map.names)})
  info.update(extra)
  return info


def export_saved_model(params, model, category_map: CategoryMap, output: str,
                       batch_size: Optional[int] = None, overwrite: bool = False) -> str:
  """Writes the SavedModel folder `output` (all or nothing; `overwrite` replaces one)
  of the trained `model` with its `params`, and returns its absolute path. Beside the
  SavedModel files: `params.yaml` and `detector.json` (input size, resize mode, dataset
  ids and names, NMS settings). `batch_size` adds the `serving_batch` signature."""
  params_lib.optional_int(batch_size, 'batch_size')
  with atomic.atomic_output(output, is_dir=True, overwrite=overwrite) as temp:
    module = SSDLiteServingModule(params, model, category_map, fixed_batch_size=batch_size)
    keys = {IMAGE_TENSOR_KEY: DEFAULT_SIGNATURE}
    if batch_size:
      keys[FIXED_BATCH_KEY] = BATCH_SIGNATURE
    core_export_base.export(module, function_keys=keys, export_savedmodel_dir=temp,
                            checkpoint_path=None, timestamped=False)
    train_utils.serialize_config(params, temp)
    info = detector_info(params, category_map,
                         signatures=sorted(keys.values()), batch_size=batch_size)
    with open(os.path.join(temp, DETECTOR_INFO_FILE), 'w', encoding='utf-8') as f:
      json.dump(info, f, indent=2)
  return os.path.abspath(output)
