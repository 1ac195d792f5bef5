"""Export a trained SSDLite checkpoint as a SavedModel or a TFLite detector.

  python tools/export.py saved_model --experiment ssdlite_mnv2_shapes \
      --checkpoint runs/shapes --output exports/shapes_sm [--batch_size 8]
  python tools/export.py tflite --experiment ssdlite_mnv2_shapes \
      --checkpoint runs/shapes --output exports/shapes.tflite --quant fp32|fp16|int8

See mnv2_det/export/cli.py for every flag. Errors print one `error: ...` line and exit
with code 2, leaving nothing at --output.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import export as cli  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(cli.main(sys.argv[1:]))
