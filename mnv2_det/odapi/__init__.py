"""Object Detection API compatibility: import TF1 SSDLite models and match their numbers.

  * `importer.import_model` (tools/import_odapi.py): pipeline.config + TF1 checkpoint
    -> a self-contained model dir;
  * `raw_predictions`, `ssd_losses`: what the OD API's SSDMetaArch reports, computed
    by an imported model (parity checks).
See docs/odapi.md.
"""

from mnv2_det.odapi.parity import raw_predictions, ssd_losses  # pylint: disable=unused-import
