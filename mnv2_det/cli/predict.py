"""Run a trained detector on image and video files: COCO results JSON + annotated copies.

    python tools/predict.py --model MODEL --output OUT_DIR [--score_threshold 0.3] \
        [--experiment ssdlite_mnv2_shapes] [--config_file x.yaml] \
        [--params_override k=v,...] [--best] [--num_threads 2] INPUTS...

MODEL is a checkpoint prefix / model_dir (its params.yaml, then --experiment,
--config_file, --params_override, --best), a SavedModel folder or a .tflite file:
`inference.detector.load_detector` finds which from what is on disk.
Anything else is one `error: ... MODEL ...` line and exit code 2.

INPUTS are image or video files, folders (their files with an
`image_files.IMAGE_EXTENSIONS` or `video.VIDEO_EXTENSIONS` suffix, not recursive) or
glob patterns (`'data/*.jpg'`, `**` recurses), de-duplicated, in the given order
(sorted inside a folder / pattern). A file with a VIDEO_EXTENSIONS suffix is read as a
video (OpenCV / FFmpeg, `data/video.py`), any other as an image, decoded like the
training data (`preprocess.decode_image_rgb`: grayscale tiled, alpha dropped, 16-bit
scaled).

OUT_DIR receives:
  * detections.json: COCO results `[{image_id, category_id (DATASET id), bbox [x, y,
    w, h] absolute pixels, score}]` of the images, only detections with score >=
    --score_threshold;
  * images.json: COCO `images` entries `[{id, file_name (absolute path), width,
    height, drawing, num_detections}]` of the images that were read; image_id is the
    1-based position in this list (the order of INPUTS), so
    `{"images": images.json, "categories": categories.json, "annotations": [...]}`
    is a ground truth that pycocotools' `loadRes(detections.json)` accepts;
  * categories.json: `[{id, name}]` of the model's classes;
  * `<image stem>.png` per image read, with boxes, class names and scores drawn;
  * per video read, streamed frame by frame (`inference/video.py`): `<video stem>.mp4`
    (`.avi` for an .avi input), the annotated video at the input's frame rate and size,
    and `<video stem>.jsonl`, one line per frame `{frame_index, timestamp_s,
    detections}` with COCO results whose image_id is the frame index;
  * videos.json (only when a video was read): `[{file_name, video, detections_file,
    frames, fps, width, height, num_detections, frames_per_second}]`.
Output names get `_1`, `_2`, ... when two inputs share a stem or when a name is an
input file in OUT_DIR. Files of an earlier run in OUT_DIR are replaced when their names
recur, else kept. A missing or unreadable input (0 bytes, corrupt, not an image or
video) is reported on stderr by name and skipped; the model is loaded at the first
readable input. Exit code 0 when at least one input was processed, else 2. The last
stdout line is `N images, M detections, K skipped` (with `, V videos (F frames)` after
the images when videos were given).
"""

import argparse
import json
import os
import sys
from typing import Dict, Optional, Sequence

from mnv2_det.cli import flags
from mnv2_det.core import checkpoints
from mnv2_det.core import params as params_lib
from mnv2_det.data import image_files
from mnv2_det.data import video as video_lib
from mnv2_det.export import tflite
from mnv2_det.inference import annotate
from mnv2_det.inference import detector as detector_lib
from mnv2_det.inference import video as video_predict

DEFAULT_SCORE_THRESHOLD = 0.3
DETECTIONS_FILE = 'detections.json'
IMAGES_FILE = 'images.json'
CATEGORIES_FILE = 'categories.json'
VIDEOS_FILE = 'videos.json'
DRAWING_SUFFIX = '.png'
FRAMES_SUFFIX = '.jsonl'
FIRST_IMAGE_ID = 1
JSON_INDENT = 1  # images.json / categories.json / videos.json; detections.json is compact.
INPUT_EXTENSIONS = image_files.IMAGE_EXTENSIONS + video_lib.VIDEO_EXTENSIONS
select = annotate.select
coco_results = annotate.coco_results


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


def _output_stem(path: str, used: set, suffixes: Sequence[str]) -> str:
  """A stem of `path` such that stem + every suffix is a name not in `used` (lower
  case); those names are added to `used`."""
  base = os.path.splitext(os.path.basename(path))[0] or 'image'
  stem, k = base, 0
  while any((stem + suffix).lower() in used for suffix in suffixes):
    k += 1
    stem = f'{base}_{k}'
  used.update((stem + suffix).lower() for suffix in suffixes)
  return stem


def _drawing_name(path: str, used: set) -> str:
  return _output_stem(path, used, (DRAWING_SUFFIX,)) + DRAWING_SUFFIX


def _inputs_in(paths: Sequence[str], folder: str) -> set:
  """Lower-case names of the `paths` that are in `folder`: outputs must not take them."""
  real = os.path.realpath(folder)
  return {os.path.basename(p).lower() for p in paths
          if os.path.dirname(os.path.realpath(p)) == real}


def _write_json(path: str, value, indent: Optional[int] = JSON_INDENT) -> None:
  temp = path + '.tmp'
  with open(temp, 'w', encoding='utf-8') as f:
    json.dump(value, f, indent=indent)
  os.replace(temp, path)


def _skip(path: str, reason: str) -> None:
  print(f'skipped {path}: {reason}', file=sys.stderr)


class _Predictor:
  """Loads the model at the first readable input (loading takes seconds)."""

  def __init__(self, args, total: int):
    self._args, self._total, self.detector = args, total, None

  def get(self) -> detector_lib.Detector:
    if self.detector is None:
      self.detector = load_predictor(self._args)
      print(f'predicting with {self.detector.description} on {self._total} file(s)')
      os.makedirs(self._args.output, exist_ok=True)
    return self.detector


def _predict_video(detector, reader: video_lib.VideoReader, args, used: set) -> Dict:
  """One open video through `detector`; its videos.json entry. ValueError (a short
  reason) if it cannot be written."""
  path = reader.path
  suffix = video_lib.output_suffix(path)
  stem = _output_stem(path, used, (suffix, FRAMES_SUFFIX))
  result = video_predict.predict_video(
      detector, reader, os.path.join(args.output, stem + suffix),
      os.path.join(args.output, stem + FRAMES_SUFFIX), args.score_threshold)
  fps_note = '' if reader.fps_declared else ' (the file declares none)'
  print(f'{path}: {result.frames} frames ({result.width}x{result.height} at '
        f'{result.fps:g} fps{fps_note}), {result.detections} detections, '
        f'{result.frames_per_second:.1f} frames/s')
  if result.frame_count > result.frames:
    print(f'note: {path} declares {result.frame_count} frames, {result.frames} could be '
          'decoded (truncated or corrupt after that?)', file=sys.stderr)
  return {'file_name': os.path.abspath(path), 'video': stem + suffix,
          'detections_file': stem + FRAMES_SUFFIX, 'frames': result.frames,
          'fps': result.fps, 'width': result.width, 'height': result.height,
          'num_detections': result.detections,
          'frames_per_second': round(result.frames_per_second, 3)}


def run(args) -> Dict[str, int]:
  """Predicts as `args` say; returns {'images', 'videos', 'frames', 'detections',
  'skipped'}."""
  if not 0.0 <= args.score_threshold <= 1.0:
    raise ValueError(f'--score_threshold must be in [0, 1], got {args.score_threshold}')
  paths, problems = image_files.expand_inputs(args.inputs, INPUT_EXTENSIONS)
  if not paths:
    raise ValueError('no input image or video: ' +
                     '; '.join(f'{i}: {r}' for i, r in problems))
  if os.path.exists(args.output) and not os.path.isdir(args.output):
    raise ValueError(f'--output {args.output} exists and is not a folder')
  # A bad --model fails now; loading (seconds) waits for the first readable input.
  _check_experiment(args, detector_lib.model_format(args.model)[0])
  for item, reason in problems:
    _skip(item, reason)
  predictor = _Predictor(args, len(paths))
  results, images, videos = [], [], []
  used = _inputs_in(paths, args.output)
  skipped = len(problems)
  for path in paths:
    try:
      if video_lib.is_video(path):
        reader = video_lib.VideoReader(path)
      else:
        image = image_files.read_image(path)
    except ValueError as e:
      _skip(path, str(e))
      skipped += 1
      continue
    if video_lib.is_video(path):
      with reader:
        detector = predictor.get()  # A model error is the run's, not this file's.
        try:
          videos.append(_predict_video(detector, reader, args, used))
        except ValueError as e:
          _skip(path, str(e))
          skipped += 1
      continue
    image_id = FIRST_IMAGE_ID + len(images)
    annotated = annotate.annotate(predictor.get(), image, image_id, args.score_threshold)
    results.extend(annotated.results)
    drawing = _drawing_name(path, used)
    annotated.drawing.save(os.path.join(args.output, drawing))
    images.append({'id': image_id, 'file_name': os.path.abspath(path),
                   'height': int(image.shape[0]), 'width': int(image.shape[1]),
                   'drawing': drawing, 'num_detections': len(annotated.results)})
  if not images and not videos:
    raise ValueError(f'none of the {len(paths)} input file(s) could be read as an image '
                     f'or a video ({skipped} skipped)')
  _write_json(os.path.join(args.output, DETECTIONS_FILE), results, indent=None)
  _write_json(os.path.join(args.output, IMAGES_FILE), images)
  _write_json(os.path.join(args.output, CATEGORIES_FILE),
              [{'id': i, 'name': n} for i, n in sorted(predictor.detector.names.items())])
  written = f'{DETECTIONS_FILE}, {IMAGES_FILE}, {CATEGORIES_FILE}'
  if videos:
    _write_json(os.path.join(args.output, VIDEOS_FILE), videos)
    written += f', {VIDEOS_FILE}, {len(videos)} annotated video(s)'
  frames = sum(v['frames'] for v in videos)
  summary = {'images': len(images), 'videos': len(videos), 'frames': frames,
             'detections': len(results) + sum(v['num_detections'] for v in videos),
             'skipped': skipped}
  print(f'wrote {args.output}/{written} and {len(images)} drawing(s)')
  counts = f'{summary["images"]} images'
  if videos:
    counts += f', {summary["videos"]} videos ({frames} frames)'
  print(f'{counts}, {summary["detections"]} detections, {summary["skipped"]} skipped')
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
  parser.add_argument('inputs', nargs='+',
                      help='image or video files, folders or glob patterns')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return flags.run_cli(lambda: run(args))
