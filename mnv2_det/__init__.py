"""mnv2_det: MobileNetV2 + SSDLite as a first-class detector inside TF Model Garden.

Importing the package registers, with Model Garden's factories: the `mnv2_det` backbone
builder, the SSDLite task, and the `ssdlite_mnv2_coco` / `ssdlite_mnv2_shapes`
experiments.
"""

from mnv2_det.modeling.backbone import MobileNetV2Backbone  # registers 'mnv2_det'
from mnv2_det.configs.backbones import Backbone, MobileNetV2Det, PRESETS
from mnv2_det.configs import experiments  # registers experiments
from mnv2_det.weights import load_backbone_weights
from mnv2_det.tasks import ssdlite as _ssdlite_task  # registers the task

__all__ = ['MobileNetV2Backbone', 'Backbone', 'MobileNetV2Det', 'PRESETS',
           'load_backbone_weights']
