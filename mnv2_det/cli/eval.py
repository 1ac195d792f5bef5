"""tools/eval.py: COCO box evaluation of a checkpoint or an exported model.

    python tools/eval.py --checkpoint runs/shapes [--experiment ssdlite_mnv2_shapes] \
        [--best] [--config_file x.yaml] [--params_override k=v,...] \
        [--report report.json] [--detections results.json] [--max_images N] \
        [--plots DIR [--confusion_score_threshold T]]
    python tools/eval.py --model exported/saved_model_dir_or_model.tflite \
        [--experiment E | --annotation_file val.json --image_dir val/] [--num_threads 2]

Both go through the same `inference.detector.Detector` (each original image of the
annotation file, resized by the detector) and `evaluation.coco.evaluate_images`.
A checkpoint is scored on its config's validation data (task.validation_data, or
task.annotation_file); --experiment is needed only without a params.yaml beside it.
An exported model is scored on --annotation_file / --image_dir, or on the validation
data of the config its folder's params.yaml (+ --experiment, overrides) gives.

The report (and the printed table) ends with the score threshold of the best
class-mean F1 at IoU 0.5: the value for `tools/export.py --score_threshold`.
--plots DIR writes per-class PR curves (IoU 0.5 and 0.5:0.95, from pycocotools'
eval['precision']), a confusion matrix with a background row and column (IoU 0.5, score
>= --confusion_score_threshold, default the best-F1 threshold) and the F1 curve, as
PNG + JSON (evaluation/plots.py); the report's 'analysis' names them.
"""

import json
import os
from typing import Any, Dict, Optional, Sequence, Tuple

from mnv2_det.cli import flags
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.evaluation import coco
from mnv2_det.evaluation import plots
from mnv2_det.export import tflite
from mnv2_det.inference import detector as detector_lib


def _checkpoint_data(params) -> Tuple[str, str]:
  data = params.task.validation_data
  annotation_file = params.task.annotation_file or data.annotation_file
  if not annotation_file:
    raise ValueError('task.validation_data.annotation_file (or task.annotation_file) '
                     'must name the COCO JSON to evaluate against')
  return annotation_file, _check_image_dir(data.image_dir)


def _check_image_dir(image_dir: str) -> str:
  if not os.path.isdir(image_dir or ''):
    raise ValueError(f'image dir {image_dir!r} does not exist (--image_dir or '
                     'task.validation_data.image_dir)')
  return image_dir


def _exported_data(args) -> Tuple[str, str]:
  """(annotation file, image dir) for --model: flags first, else the config's."""
  annotation_file, image_dir = args.annotation_file, args.image_dir
  if not (annotation_file and image_dir):
    params_file = os.path.join(args.model, params_lib.PARAMS_FILE)
    params_file = params_file if os.path.isfile(params_file) else None
    if not (args.experiment or params_file):
      raise ValueError(f'--model {args.model}: give --annotation_file and --image_dir, '
                       'or --experiment (+ overrides) naming the validation data')
    params = params_lib.build_params(args.experiment, params_file, args.config_file,
                                     args.params_override)
    data = params.task.validation_data
    annotation_file = annotation_file or params.task.annotation_file or data.annotation_file
    image_dir = image_dir or data.image_dir
  return annotation_file, _check_image_dir(image_dir)


def run(args) -> Dict[str, Any]:
  """Evaluates --checkpoint or --model (module docstring); prints, returns the report."""
  if bool(args.checkpoint) == bool(args.model):
    raise ValueError('give exactly one of --checkpoint and --model')
  analyze = None
  if args.plots is not None:  # a bad folder or threshold fails before the evaluation
    plots.check_plots_dir(args.plots)
    if args.confusion_score_threshold is not None:
      plots.check_score_threshold(args.confusion_score_threshold,
                                  '--confusion_score_threshold')
    analyze = plots.analyze_fn(args.plots, args.confusion_score_threshold)
  elif args.confusion_score_threshold is not None:
    raise ValueError('--confusion_score_threshold needs --plots DIR')
  if args.checkpoint:
    detector = detector_lib.from_loaded(loading.load_model(
        args.checkpoint, args.experiment, args.config_file, args.params_override,
        args.best))
    annotation_file, image_dir = _checkpoint_data(detector.loaded.params)
    source = {'checkpoint': detector.loaded.checkpoint, 'experiment': args.experiment}
  else:
    detector_lib.model_format(args.model)  # a bad --model fails before anything else
    annotation_file, image_dir = _exported_data(args)
    detector = detector_lib.load_detector(args.model, num_threads=args.num_threads)
    source = {'model': args.model, 'format': detector.format}
  report = coco.evaluate_images(detector.detect_image, annotation_file, image_dir,
                                max_images=args.max_images,
                                detections_file=args.detections, analyze=analyze)
  report = {**source, **report}
  print(coco.format_report(report))
  if analyze is not None:
    print(f'plots written to {args.plots} (confusion matrix at score >= '
          f'{report["analysis"]["confusion_score_threshold"]:.3f})')
  if args.report:
    with open(args.report, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=2)
  return report


def main_parser():
  """The tools/eval.py flags."""
  parser = flags.argument_parser(__doc__, checkpoint_required=False)
  parser.add_argument('--model', help='exported SavedModel folder or .tflite file')
  parser.add_argument('--annotation_file', help='with --model: COCO JSON to evaluate on')
  parser.add_argument('--image_dir', help='with --model: folder of its images')
  parser.add_argument('--num_threads', type=int, default=tflite.DEFAULT_NUM_THREADS,
                      help='TFLite interpreter threads (lowered for the LiteRT '
                      'regular-NMS bug, see export/tflite.py)')
  parser.add_argument('--report', help='write the JSON report here')
  parser.add_argument('--detections', help='write the COCO results JSON here')
  parser.add_argument('--max_images', type=int, help='evaluate the first N images')
  parser.add_argument('--plots', help='write PR curves, confusion matrix and F1 curve '
                      '(PNG + JSON) into this folder')
  parser.add_argument('--confusion_score_threshold', type=float,
                      help='with --plots: the confusion matrix keeps detections with '
                      'score >= this (default: the best-F1 threshold)')
  return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = main_parser().parse_args(argv)
  return flags.run_cli(lambda: run(args))
