"""Run a trained detector on image files: COCO results JSON + annotated pictures.

    python tools/predict.py --model MODEL --output OUT_DIR [--score_threshold 0.3] \
        [--experiment ssdlite_mnv2_shapes] [--config_file x.yaml] \
        [--params_override k=v,...] [--best] [--num_threads 2] INPUTS...

MODEL's format is found from what is on disk:
  * a folder with `saved_model.pb`: a SavedModel of `tools/export.py saved_model`
    (class names from its `detector.json`);
  * a file with the TFLite identifier: a .tflite of `tools/export.py tflite` (class
    names from its metadata);
  * a checkpoint prefix (`run/ckpt-500`, or its `.index` file) or a model_dir (latest
    checkpoint, `best_ckpt/` with --best): --experiment is needed only without a
    params.yaml beside the checkpoint; the model_dir's
    params.yaml, then --config_file and --params_override are applied (as in
    tools/eval.py). The checkpoint runs through the SavedModel's own serving function
    (`saved_model.SSDLiteServingModule`), so both give the same detections.
Anything else is one `error: ... MODEL ...` line and exit code 2.

INPUTS are image files, folders (their files with an IMAGE_EXTENSIONS suffix, not
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
import dataclasses
import glob
import json
import os
import re
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mnv2_det.data import preprocess
from mnv2_det.data.category_map import UNKNOWN
from mnv2_det.cli import flags
from mnv2_det.core import errors
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.export import saved_model
from mnv2_det.export import tflite
from mnv2_det.tools_lib import draw
from mnv2_det.core import checkpoints
from mnv2_det.tools_lib import evaluate

DEFAULT_SCORE_THRESHOLD = 0.3
DETECTIONS_FILE = 'detections.json'
IMAGES_FILE = 'images.json'
CATEGORIES_FILE = 'categories.json'
DRAWING_SUFFIX = '.png'
# Folder members taken as images (tf.io.decode_image formats).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
GLOB_CHARACTERS = frozenset('*?[')
FIRST_IMAGE_ID = 1
JSON_INDENT = 1  # images.json / categories.json; detections.json is compact.
FORMAT_CHECKPOINT = 'checkpoint'
FORMAT_SAVED_MODEL = 'saved_model'
FORMAT_TFLITE = 'tflite'
SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt')
CHECKPOINT_STATE_FILE = 'checkpoint'  # A model_dir's "latest checkpoint" index.
CHECKPOINT_INDEX_SUFFIX = '.index'
TFLITE_HEADER_BYTES = 8
# TF op errors start with '{{function_node ...}}' and end with ' [Op:Name] ...'.
_OP_ERROR_NOISE = re.compile(r'\{\{[^}]*\}\}\s*|\s*\[Op:.*$', re.DOTALL)


@dataclasses.dataclass
class Predictor:
  """A loaded detector.

  Attributes:
    detect: uint8 `[h, w, 3]` RGB -> numpy dict of `evaluate.DETECTION_KEYS`, batch 1:
      boxes `[1, K, 4]` ORIGINAL pixels `[ymin, xmin, ymax, xmax]`, scores `[1, K]`,
      classes `[1, K]` DATASET ids (-1 padding), num_detections `[1]`.
    names: `{dataset id: class name}`.
    description: what was loaded, for the log.
  """
  detect: Callable[[np.ndarray], Dict[str, np.ndarray]]
  names: Dict[int, str]
  description: str


def model_format(path: str) -> Tuple[str, str]:
  """(FORMAT_*, path to load) of `path`; ValueError naming it if unrecognized."""
  if os.path.isdir(path):
    if any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
      return FORMAT_SAVED_MODEL, path
    if (os.path.isfile(os.path.join(path, CHECKPOINT_STATE_FILE)) or
        os.path.isdir(os.path.join(path, checkpoints.BEST_CKPT_SUBDIR))):
      return FORMAT_CHECKPOINT, path
    raise ValueError(f'--model {path}: unknown model format (a folder with neither '
                     f'{SAVED_MODEL_FILES[0]} nor a "{CHECKPOINT_STATE_FILE}" file)')
  if os.path.isfile(path + CHECKPOINT_INDEX_SUFFIX):
    return FORMAT_CHECKPOINT, path
  if path.endswith(CHECKPOINT_INDEX_SUFFIX) and os.path.isfile(path):
    return FORMAT_CHECKPOINT, path[:-len(CHECKPOINT_INDEX_SUFFIX)]
  if not os.path.isfile(path):
    raise ValueError(f'--model {path} does not exist')
  with open(path, 'rb') as f:
    header = f.read(TFLITE_HEADER_BYTES)
  if header[4:TFLITE_HEADER_BYTES] == tflite.TFLITE_FILE_IDENTIFIER:
    return FORMAT_TFLITE, path
  raise ValueError(f'--model {path}: unknown model format (not a SavedModel folder, '
                   f'a .tflite flatbuffer, a checkpoint prefix or a model_dir)')


def _names(dataset_ids, class_names=None) -> Dict[int, str]:
  ids = [int(i) for i in dataset_ids]
  names = list(class_names) if class_names else [str(i) for i in ids]
  return dict(zip(ids, names))


def _numpy(outputs) -> Dict[str, np.ndarray]:
  return {k: np.asarray(outputs[k]) for k in evaluate.DETECTION_KEYS}


def _serving_fn(module_or_signature) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
  def detect(image):
    return _numpy(module_or_signature(images=tf.constant(image[np.newaxis])))
  return detect


def _check_experiment(args, fmt: str) -> None:
  if fmt == FORMAT_CHECKPOINT and not args.experiment:
    # build_params says so too, but only after the first image is read.
    params_lib.build_params(None, checkpoints.resolve_checkpoint(
        model_format(args.model)[1], args.best)[1])


def load_checkpoint(args, path: str) -> Predictor:
  loaded = loading.load_model(path, args.experiment, args.config_file,
                              args.params_override, args.best)
  module = saved_model.SSDLiteServingModule(loaded.params, loaded.model,
                                            loaded.category_map)
  signature = module.get_inference_signatures(
      {saved_model.IMAGE_TENSOR_KEY: saved_model.DEFAULT_SIGNATURE})
  return Predictor(_serving_fn(signature[saved_model.DEFAULT_SIGNATURE]),
                   loaded.category_map.label_map(), f'checkpoint {loaded.checkpoint}')


def load_saved_model(path: str) -> Predictor:
  try:
    model = tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except  # Damaged files: many types.
    raise ValueError(f'--model {path}: the SavedModel cannot be loaded: '
                     f'{errors.first_line(e)}') from e
  signature = model.signatures.get(saved_model.DEFAULT_SIGNATURE)
  outputs = set(signature.structured_outputs) if signature is not None else set()
  if not outputs >= set(evaluate.DETECTION_KEYS):
    raise ValueError(f'--model {path}: not an mnv2_det SavedModel (no '
                     f'{saved_model.DEFAULT_SIGNATURE!r} signature with outputs '
                     f'{list(evaluate.DETECTION_KEYS)})')
  info_file = os.path.join(path, saved_model.DETECTOR_INFO_FILE)
  if not os.path.isfile(info_file):
    raise ValueError(f'--model {path}: no {saved_model.DETECTOR_INFO_FILE} (class ids and '
                     'names); export it with tools/export.py saved_model')
  with open(info_file, 'r', encoding='utf-8') as f:
    info = json.load(f)
  detect = _serving_fn(signature)
  detect.model = model  # Keeps the loaded variables alive with the function.
  return Predictor(detect, _names(info['dataset_ids'], info.get('class_names')),
                   f'SavedModel {path}')


def load_tflite(path: str, num_threads: int) -> Predictor:
  detector = tflite.TFLiteDetector(path, num_threads=num_threads)
  return Predictor(detector, _names(detector.info['dataset_ids'],
                                    detector.info.get('class_names')),
                   f'TFLite {path} ({detector.num_threads} thread(s))')


def load_predictor(args) -> Predictor:
  """The detector `args.model` holds (module docstring)."""
  fmt, path = model_format(args.model)
  if fmt == FORMAT_CHECKPOINT:
    return load_checkpoint(args, path)
  ignored = [flag for flag, value in (('--experiment', args.experiment),
                                      ('--config_file', args.config_file),
                                      ('--params_override', args.params_override),
                                      ('--best', args.best)) if value]
  if ignored:
    print(f'note: {", ".join(ignored)} ignored: --model {path} is a {fmt}, not a '
          'checkpoint', file=sys.stderr)
  if fmt == FORMAT_SAVED_MODEL:
    return load_saved_model(path)
  return load_tflite(path, args.num_threads)


def expand_inputs(inputs: Sequence[str]) -> Tuple[List[str], List[Tuple[str, str]]]:
  """Image paths of INPUTS (module docstring) and `(input, reason)` of those giving none."""
  paths, problems, seen = [], [], set()
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, name) for name in os.listdir(item)
                     if name.lower().endswith(IMAGE_EXTENSIONS) and
                     os.path.isfile(os.path.join(item, name)))
      why = f'folder has no {"/".join(IMAGE_EXTENSIONS)} files'
    elif os.path.lexists(item):
      found, why = [item], ''
    elif GLOB_CHARACTERS & set(item):
      found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
      why = 'pattern matches no file'
    else:
      found, why = [], 'file not found'
    if not found:
      problems.append((item, why))
    for path in found:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        paths.append(path)
  return paths, problems


def read_image(path: str) -> np.ndarray:
  """uint8 `[h, w, 3]` RGB of an image file; ValueError with a short reason."""
  try:
    with open(path, 'rb') as f:
      contents = f.read()
  except OSError as e:
    raise ValueError(e.strerror or str(e)) from e
  if not contents:
    raise ValueError('file is empty (0 bytes)')
  try:
    return preprocess.decode_image_rgb(tf.constant(contents)).numpy()
  except tf.errors.OpError as e:
    reason = _OP_ERROR_NOISE.sub('', e.message).strip() or type(e).__name__
    raise ValueError(f'not a readable image ({reason})') from e


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
  """COCO result dicts (`evaluate.to_coco_results`) of one image's selected detections:
  boxes `[N, 4]` pixels `[ymin, xmin, ymax, xmax]`, dataset ids `[N]`, scores `[N]`."""
  detections = {'detection_boxes': np.reshape(boxes, [1, -1, 4]),
                'detection_classes': np.reshape(classes, [1, -1]),
                'detection_scores': np.reshape(scores, [1, -1]),
                'num_detections': [len(scores)]}
  return evaluate.to_coco_results([image_id], detections, None)


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
  paths, problems = expand_inputs(args.inputs)
  if not paths:
    raise ValueError('no input image: ' + '; '.join(f'{i}: {r}' for i, r in problems))
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    raise ValueError(f'--output {args.output} exists and is not a folder')
  # A bad --model fails now; loading (seconds) waits for the first readable image.
  _check_experiment(args, model_format(args.model)[0])
  for item, reason in problems:
    _skip(item, reason)
  predictor, results, images, used = None, [], [], set()
  skipped = len(problems)
  for path in paths:
    try:
      image = read_image(path)
    except ValueError as e:
      _skip(path, str(e))
      skipped += 1
      continue
    if predictor is None:
      predictor = load_predictor(args)
      print(f'predicting with {predictor.description} on {len(paths)} file(s)')
      os.makedirs(args.output, exist_ok=True)
    image_id = FIRST_IMAGE_ID + len(images)
    boxes, classes, scores = select(predictor.detect(image), args.score_threshold)
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
  parser.add_argument('--experiment', help='registered experiment (checkpoints only)')
  parser.add_argument('--config_file', action='append', default=[],
                      help='YAML override (repeatable), applied after params.yaml')
  parser.add_argument('--params_override', default='', help='k=v,... applied last')
  parser.add_argument('--best', action='store_true',
                      help='with a model_dir: use best_ckpt/ instead of the latest')
  parser.add_argument('--num_threads', type=int, default=tflite.DEFAULT_NUM_THREADS,
                      help='TFLite interpreter threads')
  parser.add_argument('inputs', nargs='+', help='image files, folders or glob patterns')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return flags.run_cli(lambda: run(args))
