"""mnv2_det: MobileNetV2 + SSDLite as a first-class detector inside TF Model Garden.

Importing the package registers the `mnv2_det` backbone builder (and, once present, the
SSDLite task and experiments) with Model Garden's factories.
"""

from mnv2_det.modeling.backbone import MobileNetV2Backbone  # registers 'mnv2_det'
from mnv2_det.configs.backbones import Backbone, MobileNetV2Det, PRESETS

__all__ = ['MobileNetV2Backbone', 'Backbone', 'MobileNetV2Det', 'PRESETS']
