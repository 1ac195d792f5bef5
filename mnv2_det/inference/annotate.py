"""One picture through a Detector: the detections kept, as COCO results, and a drawing.

Shared by the image and the video paths of tools/predict.py.
"""

import dataclasses
from typing import Any, Dict, List

import numpy as np
from PIL import Image

from mnv2_det.analysis import draw
from mnv2_det.data.category_map import UNKNOWN
from mnv2_det.evaluation import coco


def select(outputs: Dict[str, np.ndarray], score_threshold: float):
  """Valid rows of one image's detections (a Detector's batch-1 output) with
  score >= threshold.

  Returns boxes `[N, 4]` pixels yxyx, dataset ids `[N]` int, scores `[N]`, by score.
  """
  n = int(outputs['num_detections'].reshape([-1])[0])
  boxes = outputs['detection_boxes'][0, :n].astype(np.float64)
  classes = outputs['detection_classes'][0, :n].astype(np.int64)
  scores = outputs['detection_scores'][0, :n].astype(np.float64)
  keep = (classes != UNKNOWN) & (scores >= score_threshold)
  return boxes[keep], classes[keep], scores[keep]


def coco_results(image_id: int, boxes, classes, scores) -> List[Dict[str, Any]]:
  """COCO result dicts (`coco.to_coco_results`) of one image's selected detections:
  boxes `[N, 4]` pixels `[ymin, xmin, ymax, xmax]`, dataset ids `[N]`, scores `[N]`."""
  detections = {'detection_boxes': np.reshape(boxes, [1, -1, 4]),
                'detection_classes': np.reshape(classes, [1, -1]),
                'detection_scores': np.reshape(scores, [1, -1]),
                'num_detections': [len(scores)]}
  return coco.to_coco_results([image_id], detections, None)


@dataclasses.dataclass
class Annotated:
  """`results`: COCO result dicts (image_id as given); `drawing`: RGB PIL image of the
  input's size with boxes, class names and scores drawn."""
  results: List[Dict[str, Any]]
  drawing: Image.Image


def annotate(detector, image: np.ndarray, image_id: int,
             score_threshold: float) -> Annotated:
  """Detects on uint8 `[h, w, 3]` RGB `image` and draws the detections it keeps."""
  boxes, classes, scores = select(detector.detect_image(image), score_threshold)
  labels = [detector.names.get(int(c), str(c)) for c in classes]
  return Annotated(coco_results(image_id, boxes, classes, scores),
                   draw.draw_detections(image, boxes, classes, labels, scores))
