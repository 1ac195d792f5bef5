"""Audit BatchNorm moving statistics of a checkpoint against data; optionally re-estimate.

  python tools/bn_audit.py --experiment ssdlite_mnv2_shapes --checkpoint runs/shapes \
      [--best] [--config_file x.yaml] [--params_override k=v,...] \
      [--data train|validation] [--num_batches 20] [--report bn.json] \
      [--recalibrate --output_dir runs/shapes_recal]

Prints one row per BatchNormalization layer (mean shift, log variance ratio, status
ok / stale / never-updated / unused). --recalibrate writes a NEW checkpoint (same
object structure as the input) into --output_dir. Errors print one `error: ...` line
and exit with code 2. See mnv2_det/bn_audit.py for the metrics and thresholds.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import bn_audit  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(bn_audit.main(sys.argv[1:]))
