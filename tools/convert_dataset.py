"""Convert Pascal VOC XML or YOLO txt annotations to a COCO JSON
(mnv2_det/cli/convert_dataset.py).

  python tools/convert_dataset.py --format voc|yolo --image_dir D ... --output OUT.json
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import convert_dataset  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(convert_dataset.main(sys.argv[1:]))
