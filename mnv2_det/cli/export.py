"""Command line of tools/export.py.

  python tools/export.py saved_model --experiment ssdlite_mnv2_shapes \
      --checkpoint runs/shapes --output exports/shapes_sm [--batch_size 8]
  python tools/export.py tflite --experiment ssdlite_mnv2_shapes \
      --checkpoint runs/shapes --output exports/shapes_int8.tflite --quant int8 \
      [--representative_images 100] [--fast_nms] [--recalibrate_bn 20] \
      [--preset mobile] [--max_detections 10] [--score_threshold 0.3] \
      [--calibration_images DIR]

Common flags: --config_file (repeatable), --params_override k=v,..., --best (with a
model_dir: best_ckpt/), --overwrite, --recalibrate_bn N (re-estimate every BN layer's
moving statistics from N batches of the training pipeline without augmentation before
exporting, as `tools/bn_audit.py --recalibrate` does; the checkpoint is not changed).
--checkpoint is a prefix (runs/shapes/ckpt-1500) or a model_dir (latest checkpoint and
its params.yaml). Errors print one
`error: ...` line and exit with code 2; nothing is left at --output.

int8 calibration: --representative_images N images of the training pipeline without
augmentation, or with --calibration_images DIR the first N readable images of any
folder (recursive; unreadable files skipped with a warning; no readable image is an
error), resized as TFLiteDetector does (mnv2_det/export/calibration.py).

A quantization-aware trained model (`--experiment ssdlite_mnv2_shapes_qat`, a
`task.quantization` config) exports as `--quant int8` with the ranges it learned: no
calibration images (mnv2_det/export/tflite_qat.py).

TFLite presets (mnv2_det/export/tflite_presets.py): `default` keeps the config's
post-processing (regular NMS, threshold 1e-8, 100 detections: for evaluation);
`--preset mobile` exports for apps: fast NMS, 10 detections, score threshold 0.3, safe
with any interpreter thread count. --max_detections / --score_threshold override either.

TFLite notes: the model input is [1, H, W, 3] at the config input size (resize outside,
see mnv2_det/export/tflite.py); with the config's score threshold 1e-8 regular NMS is
slow for many classes (raise task.model.detection_generator.score_threshold, or
--fast_nms); LiteRT's regular NMS is wrong with 1 < threads < classes
(TFLiteDetector runs such models single-threaded).
"""

import argparse
import os
import sys
import time
from typing import Optional, Sequence

import numpy as np

from mnv2_det.analysis import bn_audit
from mnv2_det.export import atomic
from mnv2_det.export import calibration
from mnv2_det.cli import flags
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.export import saved_model
from mnv2_det.export import tflite as tflite_runtime
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_presets
from mnv2_det.modeling import qat

BYTES_PER_MB = 1024.0 * 1024.0
# The `calibration` metadata source of a quantization-aware trained model.
CALIBRATION_QAT = 'quantization_aware_training'
# Pixel value of the blank image of the post-export smoke run.
SMOKE_TEST_PIXEL = 128


def _common_flags() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(add_help=False)
  flags.add_config_flags(parser)
  parser.add_argument('--checkpoint', required=True,
                      help='checkpoint prefix, or a model_dir (latest ckpt + params.yaml)')
  parser.add_argument('--output', required=True, help='output folder / .tflite file')
  parser.add_argument('--overwrite', action='store_true', help='replace --output')
  parser.add_argument('--recalibrate_bn', type=int, metavar='N',
                      help='re-estimate BN moving statistics from N training batches first')
  return parser


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='format', required=True)
  common = _common_flags()
  sm = sub.add_parser('saved_model', parents=[common],
                      help='SavedModel: uint8 images of any size -> original pixels')
  sm.add_argument('--batch_size', type=int,
                  help='also add signature serving_batch: uint8 [B, H, W, 3] at the '
                       'config input size')
  tfl = sub.add_parser('tflite', parents=[common],
                       help='TFLite detector with TFLite_Detection_PostProcess')
  tfl.add_argument('--quant', choices=tflite_convert.QUANT_TYPES, default='fp32')
  tfl.add_argument('--representative_images', type=int,
                   help='int8: number of calibration images (training set without '
                        'augmentation, or --calibration_images; default '
                        f'{tflite_convert.DEFAULT_REPRESENTATIVE_IMAGES}); not for a '
                        'QAT model')
  tfl.add_argument('--calibration_images', metavar='DIR',
                   help='int8: calibrate on the images of this folder (recursive) '
                        'instead of the training data')
  tfl.add_argument('--fast_nms', action='store_true',
                   help="the op's class-agnostic fast NMS instead of per-class NMS")
  tfl.add_argument('--preset', choices=sorted(tflite_presets.PRESETS),
                   default=tflite_presets.DEFAULT,
                   help='post-processing preset: default (the config) or mobile (fast '
                        f'NMS, {tflite_presets.MOBILE_MAX_DETECTIONS} detections, score '
                        f'threshold {tflite_presets.MOBILE_SCORE_THRESHOLD})')
  tfl.add_argument('--max_detections', type=int,
                   help='output rows of the post-process op (overrides the preset)')
  tfl.add_argument('--score_threshold', type=float,
                   help='keep detections scoring above this (overrides the preset)')
  return parser


def _size_mb(path: str) -> float:
  if os.path.isdir(path):
    total = sum(os.path.getsize(os.path.join(root, name))
                for root, _, names in os.walk(path) for name in names)
  else:
    total = os.path.getsize(path)
  return total / BYTES_PER_MB


def smoke_test(path: str) -> None:
  """Loads a written .tflite with TFLiteDetector and runs it on a blank image."""
  detector = tflite_runtime.TFLiteDetector(path)
  h, w = detector.input_size
  detector(np.full([h, w, 3], SMOKE_TEST_PIXEL, np.uint8))


def run(args) -> str:
  """Exports as `args` say; returns the output path."""
  atomic.check_output(args.output, args.overwrite)  # Fail before the slow part.
  if args.format == 'saved_model':
    params_lib.optional_int(args.batch_size, '--batch_size')
  else:
    params_lib.optional_int(args.representative_images, '--representative_images')
    num_images = (tflite_convert.DEFAULT_REPRESENTATIVE_IMAGES
                  if args.representative_images is None else args.representative_images)
    tflite_presets.get(args.preset)
    if args.calibration_images:
      if args.quant != 'int8':
        raise ValueError(f'--calibration_images applies to --quant int8, not {args.quant}')
      calibration.image_files(args.calibration_images)  # Fail before the slow part.
    try:
      tflite_presets.validate(args.max_detections, args.score_threshold)
    except ValueError as e:
      raise ValueError(f'--{e}') from e
  params_lib.optional_int(args.recalibrate_bn, '--recalibrate_bn')
  start = time.perf_counter()
  loaded = loading.load_model(args.checkpoint, args.experiment, args.config_file,
                              args.params_override, args.best)
  quantization_aware = qat.is_quantized(loaded.model)
  if args.recalibrate_bn and quantization_aware:
    # It runs the model in training mode, which also moves the learned int8 ranges.
    raise ValueError('--recalibrate_bn does not apply to a quantization-aware trained '
                     'model (its BN statistics and int8 ranges were trained together)')
  if args.recalibrate_bn:
    dataset = bn_audit.audit_dataset(loaded.task, loaded.params, 'train')
    used = bn_audit.recalibrate(loaded.model, dataset, args.recalibrate_bn)
    print(f'recalibrated BN moving statistics from {used} training batches')
  if args.format == 'saved_model':
    path = saved_model.export_saved_model(
        loaded.params, loaded.model, loaded.category_map, args.output,
        batch_size=args.batch_size, overwrite=args.overwrite)
  else:
    representative = None
    if quantization_aware:
      # Its int8 ranges come from training (mnv2_det/export/tflite_qat.py).
      if args.calibration_images or args.representative_images is not None:
        raise ValueError(f'{loaded.checkpoint} is a quantization-aware trained model: its '
                         'int8 ranges come from training; --calibration_images / '
                         '--representative_images do not apply')
    elif args.quant == 'int8' and args.calibration_images:
      settings = loading.detection_settings(loaded.params)
      representative = calibration.folder_images(
          args.calibration_images, settings['input_size'], settings['resize_mode'],
          num_images, seed=loaded.params.task.train_data.seed)
      print(f'calibrating on {len(representative)} images of {args.calibration_images}')
    elif args.quant == 'int8':
      representative = tflite_convert.representative_images(
          loaded.task, loaded.params, num_images)
    params, use_regular_nms, extra = tflite_presets.apply(
        loaded.params, args.preset, args.max_detections, args.score_threshold,
        args.fast_nms)
    if representative is not None:
      extra['calibration'] = {
          'source': 'folder' if args.calibration_images else 'train_data',
          'num_images': len(representative)}
    elif quantization_aware:
      extra['calibration'] = {'source': CALIBRATION_QAT, 'num_images': 0}
    path = tflite_convert.export_tflite(
        params, loaded.model, loaded.category_map, args.output, args.quant,
        representative=representative, use_regular_nms=use_regular_nms,
        overwrite=args.overwrite, experiment=args.experiment, verify=smoke_test,
        extra_info=extra)
  print(f'exported {args.format} from {loaded.checkpoint} to {path} '
        f'({_size_mb(path):.2f} MB, {time.perf_counter() - start:.1f} s)')
  return path


def main(argv: Optional[Sequence[str]] = None) -> int:
  args = build_parser().parse_args(argv)
  return flags.run_cli(lambda: run(args))


if __name__ == '__main__':
  sys.exit(main())
