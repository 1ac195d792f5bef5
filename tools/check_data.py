"""Check a COCO JSON + image folder before training: reader repairs and skips, class /
size / aspect-ratio statistics and anchor coverage (mnv2_det/cli/check_data.py).

  python tools/check_data.py --annotation_file A --image_dir D [--experiment E] \
      [--output DIR]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import check_data  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(check_data.main(sys.argv[1:]))
