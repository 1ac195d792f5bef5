"""mnv2_det: MobileNetV2 + SSDLite as a first-class detector inside TF Model Garden.

Importing the package registers, with Model Garden's factories: the `mnv2_det` backbone
builder, the SSDLite task and its QAT variant, and the `ssdlite_mnv2_coco` /
`ssdlite_mnv2_shapes` / `ssdlite_mnv2_shapes_qat` experiments.
"""

from mnv2_det.modeling.backbone import MobileNetV2Backbone  # registers 'mnv2_det'
from mnv2_det.configs.backbones import Backbone, MobileNetV2Det, PRESETS
from mnv2_det.configs import experiments  # registers experiments
from mnv2_det.weights import load_backbone_weights
from mnv2_det.tasks import ssdlite as _ssdlite_task  # registers the task
from mnv2_det.configs import qat as _qat_configs  # registers ssdlite_mnv2_shapes_qat
from mnv2_det.tasks import ssdlite_qat as _ssdlite_qat_task  # registers the QAT task

__all__ = ['MobileNetV2Backbone', 'Backbone', 'MobileNetV2Det', 'PRESETS',
           'load_backbone_weights']
