"""Run a trained detector on images and videos: COCO results JSON + annotated copies.

  python tools/predict.py --model runs/shapes --experiment ssdlite_mnv2_shapes \
      --output preds [--score_threshold 0.3] data/shapes/val 'more/*.png' one.jpg
  python tools/predict.py --model exports/shapes_sm --output preds images/
  python tools/predict.py --model exports/shapes.tflite --output preds images/
  python tools/predict.py --model runs/shapes --output preds clip.mp4 folder_of_both/

--model is a checkpoint prefix or model_dir (needs --experiment; its params.yaml is
used), a SavedModel folder or a .tflite file, recognized from its contents. Writes
OUT/detections.json (COCO results, dataset category ids), OUT/images.json (image_id ->
file, size), OUT/categories.json and OUT/<stem>.png per image; per video (.mp4, .avi,
.mov, .mkv, ...) OUT/<stem>.mp4 (.avi for .avi) annotated at the same rate and size and
OUT/<stem>.jsonl, one JSON line of COCO detections per frame, streamed frame by frame,
with frames/s printed, and OUT/videos.json. Unreadable images and videos are reported
on stderr and skipped. Errors print one `error: ...` line and exit with
code 2. See mnv2_det/cli/predict.py.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.cli import predict  # pylint: disable=g-import-not-at-top

if __name__ == '__main__':
  sys.exit(predict.main(sys.argv[1:]))
