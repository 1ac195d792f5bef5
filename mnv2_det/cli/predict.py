"""Run a trained detector on image files: COCO results JSON + annotated pictures.

    python tools/predict.py --model MODEL --output OUT_DIR [--score_threshold 0.3] \
        [--experiment ssdlite_mnv2_shapes] [--config_file x.yaml] \
        [--params_override k=v,...] [--best] [--num_threads 2] INPUTS...

MODEL is a checkpoint prefix / model_dir (its params.yaml, then --experiment,
--config_file, --params_override, --best), a SavedModel folder or a .tflite file:
`inference.detector.load_detector` finds which from what is on disk.
Anything else is one `error: ... MODEL ...` line and exit code 2.

INPUTS are image files, folders (their files with an `image_files.IMAGE_EXTENSIONS` suffix, not
recursive) or glob patterns (`'data/*.jpg'`, `**` recurses), de-duplicated, in the
given order (sorted inside a folder / pattern). Images are decoded like the training
data (`preprocess.decode_image_rgb`: grayscale tiled, alpha dropped, 16-bit scaled).

OUT_DIR receives:
  * detections.json: COCO results `[{image_id, category_id (DATASET id), bbox [x, y,
    w, h] absolute pixels, score}]`, only detections with score >= --score_threshold;
  * images.json: COCO `images` entries `[{id, file_name (absolute path), width,
    height, drawing, num_detections}]` of the images that were read; image_id is the
    1-based position in this list (the order of INPUTS), so
    `{"images": images.json, "categories": categories.json, "annotations": [...]}`
    is a ground truth that pycocotools' `loadRes(detections.json)` accepts;
  * categories.json: `[{id, name}]` of the model's classes;
  * `<image stem>.png` per image read, with boxes, class names and scores drawn
    (`<stem>_1.png`, ... when two inputs share a stem).
Files of an earlier run in OUT_DIR are replaced when their names recur, else kept. A
missing or unreadable input (0 bytes, corrupt, not an image) is reported on stderr
by name and skipped; the model is loaded at the first readable image. Exit code 0 when at least one image was processed, else 2. The
last stdout line is `N images, M detections, K skipped`.
"""

import argparse
import json
import os
import sys
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from mnv2_det.analysis import draw
from mnv2_det.cli import flags
from mnv2_det.core import checkpoints
from mnv2_det.core import params as params_lib
from mnv2_det.data import image_files
from mnv2_det.data.category_map import UNKNOWN
from mnv2_det.evaluation import coco
from mnv2_det.export import tflite
from mnv2_det.inference import detector as detector_lib

DEFAULT_SCORE_THRESHOLD = 0.3
DETECTIONS_FILE = 'detections.json'
IMAGES_FILE = 'images.json'
CATEGORIES_FILE = 'categories.json'
DRAWING_SUFFIX = '.png'
FIRST_IMAGE_ID = 1
JSON_INDENT = 1  # images.json / categories.json; detections.json is compact.


def _check_experiment(args, fmt: str) -> None:
  if fmt == detector_lib.FORMAT_CHECKPOINT and not args.experiment:
    # load_detector says so too, but only after the first image is read.
    params_lib.build_params(None, checkpoints.resolve_checkpoint(
        detector_lib.model_format(args.model)[1], args.best)[1])


def load_predictor(args) -> detector_lib.Detector:
  """The detector `args.model` holds (`inference.detector.load_detector`)."""
  fmt, path = detector_lib.model_format(args.model)
  if fmt != detector_lib.FORMAT_CHECKPOINT:
    ignored = [flag for flag, value in (('--experiment', args.experiment),
                                        ('--config_file', args.config_file),
                                        ('--params_override', args.params_override),
                                        ('--best', args.best)) if value]
    if ignored:
      print(f'note: {", ".join(ignored)} ignored: --model {path} is a {fmt}, not a '
            'checkpoint', file=sys.stderr)
  return detector_lib.load_detector(args.model, args.experiment, args.config_file,
                                    args.params_override, args.best, args.num_threads)


def select(outputs: Dict[str, np.ndarray], score_threshold: float):
  """Valid rows of one image's detections with score >= threshold.

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


def _drawing_name(path: str, used: set) -> str:
  stem = os.path.splitext(os.path.basename(path))[0] or 'image'
  name, k = stem + DRAWING_SUFFIX, 0
  while name.lower() in used:
    k += 1
    name = f'{stem}_{k}{DRAWING_SUFFIX}'
  used.add(name.lower())
  return name


def _write_json(path: str, value, indent: Optional[int] = JSON_INDENT) -> None:
  temp = path + '.tmp'
  with open(temp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=indent)
  os.replace(temp, path)


def _skip(path: str, reason: str) -> None:
  print(f'skipped {path}: {reason}', file=sys.stderr)


def run(args) -> Dict[str, int]:
  """Predicts as `args` say; returns {'images', 'detections', 'skipped'}."""
  if not 0.0 <= args.score_threshold <= 1.0:
    raise ValueError(f'--score_threshold must be in [0, 1], got {args.score_threshold}')
  paths, problems = image_files.expand_inputs(args.inputs)
  if not paths:
    raise ValueError('no input image: ' + '; '.join(f'{i}: {r}' for i, r in problems))
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    raise ValueError(f'--output {args.output} exists and is not a folder')
  # A bad --model fails now; loading (seconds) waits for the first readable image.
  _check_experiment(args, detector_lib.model_format(args.model)[0])
  for item, reason in problems:
    _skip(item, reason)
  predictor, results, images, used = None, [], [], set()
  skipped = len(problems)
  for path in paths:
    try:
      image = image_files.read_image(path)
    except ValueError as e:
      _skip(path, str(e))
      skipped += 1
      continue
    if predictor is None:
      predictor = load_predictor(args)
      print(f'predicting with {predictor.description} on {len(paths)} file(s)')
      os.makedirs(args.output, exist_ok=True)
    image_id = FIRST_IMAGE_ID + len(images)
    boxes, classes, scores = select(predictor.detect_image(image), args.score_threshold)
    results.extend(coco_results(image_id, boxes, classes, scores))
    labels = [predictor.names.get(int(c), str(c)) for c in classes]
    drawing = _drawing_name(path, used)
    draw.draw_detections(image, boxes, classes, labels, scores).save(
        os.path.join(args.output, drawing))
    images.append({'id': image_id, 'file_name': os.path.abspath(path),
                   'height': int(image.shape[0]), 'width': int(image.shape[1]),
                   'drawing': drawing, 'num_detections': len(scores)})
  if not images:
    raise ValueError(f'none of the {len(paths)} input file(s) could be read as an image '
                     f'({skipped} skipped)')
  _write_json(os.path.join(args.output, DETECTIONS_FILE), results, indent=None)
  _write_json(os.path.join(args.output, IMAGES_FILE), images)
  _write_json(os.path.join(args.output, CATEGORIES_FILE),
              [{'id': i, 'name': n} for i, n in sorted(predictor.names.items())])
  summary = {'images': len(images), 'detections': len(results), 'skipped': skipped}
  print(f'wrote {args.output}/{DETECTIONS_FILE}, {IMAGES_FILE}, {CATEGORIES_FILE} and '
        f'{len(images)} drawing(s)')
  print(f'{summary["images"]} images, {summary["detections"]} detections, '
        f'{summary["skipped"]} skipped')
  return summary


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--model', required=True,
                      help='checkpoint prefix / model_dir, SavedModel folder or .tflite')
  parser.add_argument('--output', required=True, help='output folder (created)')
  parser.add_argument('--score_threshold', type=float, default=DEFAULT_SCORE_THRESHOLD,
                      help='keep detections with at least this score (JSON and drawings)')
  flags.add_config_flags(parser, experiment_help='registered experiment (a checkpoint '
                         'without params.yaml only)')
  parser.add_argument('--num_threads', type=int, default=tflite.DEFAULT_NUM_THREADS,
                      help='TFLite interpreter threads')
  parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return flags.run_cli(lambda: run(args))
