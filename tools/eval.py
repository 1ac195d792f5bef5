"""COCO box evaluation of a checkpoint or an exported model with pycocotools.

  python tools/eval.py --experiment ssdlite_mnv2_shapes --checkpoint runs/shapes \
      [--best] [--config_file x.yaml] [--params_override k=v,...] \
      [--report report.json] [--detections results.json] [--max_images N]

--checkpoint is a prefix (runs/shapes/ckpt-1500) or a model_dir (its latest checkpoint,
or best_ckpt/ with --best, and its params.yaml). Errors print one `error: ...` line and
exit with code 2. --model takes an exported SavedModel folder or .tflite file instead:

  python tools/eval.py --model out/model.tflite \
      [--experiment E | --annotation_file val.json --image_dir val/] [--num_threads 2]

See mnv2_det/cli/eval.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import eval as eval_cli  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(eval_cli.main(sys.argv[1:]))
