"""The detectors the benchmarks measure: our SSDLite experiment at benchmark sizes, and
Model Garden's RetinaNet-MobileNetV2, the peer every ratio is taken against."""

from official.core import exp_factory
from official.vision.configs import backbones
from official.vision.configs import decoders

import mnv2_det  # pylint: disable=unused-import  (registers ssdlite_mnv2_shapes)

LATENCY_SCORE_THRESHOLD = 0.05  # instead of 1e-8 when timing regular NMS


def ssdlite_params(num_classes, size, fast_nms=True):
  """ssdlite_mnv2_shapes at full width, `num_classes` classes, `size`x`size` input."""
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.override({'task': {'model': {
      'num_classes': num_classes, 'input_size': [size, size, 3],
      'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}}}})
  if not fast_nms:  # LiteRT regular NMS: see mnv2_det/export/tflite.py
    params.task.model.detection_generator.score_threshold = LATENCY_SCORE_THRESHOLD
  return params


def retinanet_mnv2_config(num_classes, size, nms_version='batched'):
  """Model Garden RetinaNet-MobileNetV2: separable FPN + head, 128 filters, ReLU6."""
  config = exp_factory.get_exp_config('retinanet_mobile_coco')
  model = config.task.model
  model.backbone = backbones.Backbone(
      type='mobilenet', mobilenet=backbones.MobileNet(model_id='MobileNetV2'))
  model.decoder = decoders.Decoder(
      type='fpn', fpn=decoders.FPN(num_filters=128, use_separable_conv=True))
  model.head.num_filters = 128
  model.head.use_separable_conv = True
  model.min_level, model.max_level = 3, 7
  model.num_classes = num_classes
  model.input_size = [size, size, 3]
  model.norm_activation.activation = 'relu6'
  model.norm_activation.use_sync_bn = False
  model.detection_generator.nms_version = nms_version
  return config
