"""Benchmarks that print ratios against peers measured in the same run.

  python benchmarks/benchmark.py backbone   # MobileNetV2 features vs keras.applications, MG
  python benchmarks/benchmark.py detector   # SSDLite forward / full inference vs MG RetinaNet
  python benchmarks/benchmark.py train      # training images/s vs MG RetinaNet-MNv2
  python benchmarks/benchmark.py train_cli  # the same, both through tools/train.py
  python benchmarks/benchmark.py determinism  # tools/train.py: task.seed vs + op determinism
  python benchmarks/benchmark.py profile    # where the main job's train step spends its time
  python benchmarks/benchmark.py tflite     # fp32/int8 TFLite detector vs int8 MNv2 backbone,
                                            # then int8 regular NMS vs the mobile preset
      [--experiment ssdlite_mnv2_shapes --checkpoint runs/shapes]  # + their val AP
  python benchmarks/benchmark.py gflops     # CPU matmul GFLOP/s vs our achieved GFLOP/s
  python benchmarks/benchmark.py memory     # train-step activation MB + import RSS vs
                                            # torchvision SSDLite (in its venv)

Latency is TF-graph (tf.function, no XLA) wall time at batch 1, median of interleaved
rounds. Run on an otherwise idle machine, from a repository checkout (train_cli runs
tools/train.py).
"""

import argparse
import importlib
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.export import tflite_convert  # pylint: disable=g-import-not-at-top

from detectors import LATENCY_SCORE_THRESHOLD
import torch_venv

# subcommand -> (module in this folder, function); imported on use, so that only
# `tflite` needs the `export` extra (ai-edge-litert).
COMMANDS = {
    'backbone': ('latency', 'bench_backbone'),
    'detector': ('latency', 'bench_detector'),
    'train': ('train_speed', 'bench_train'),
    'train_cli': ('train_speed', 'bench_train_cli'),
    'determinism': ('train_speed', 'bench_determinism'),
    'profile': ('profile_train_step', 'bench_profile'),
    'tflite': ('tflite_latency', 'bench_tflite'),
    'gflops': ('latency', 'bench_gflops'),
    'memory': ('activation_memory', 'bench_memory'),
}


def _parser():
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  b = sub.add_parser('backbone')
  b.add_argument('--sizes', type=int, nargs='+', default=[224, 320])
  d = sub.add_parser('detector')
  d.add_argument('--num_classes', type=int, default=91)
  d.add_argument('--mg_nms', default='batched', help="Model Garden nms_version")
  t = sub.add_parser('train')
  t.add_argument('--batch_size', type=int, default=8)
  t.add_argument('--steps', type=int, default=10)
  t.add_argument('--data_dir', default='data/shapes',
                 help='synthetic set from `python -m mnv2_det.data.shapes DIR`')
  c = sub.add_parser('train_cli')
  c.add_argument('--batch_size', type=int, default=8)
  c.add_argument('--steps', type=int, default=80)
  c.add_argument('--steps_per_loop', type=int, default=10)
  c.add_argument('--skip_loops', type=int, default=2,
                 help='first progress lines dropped (tracing, warm-up)')
  c.add_argument('--data_dir', default='data/shapes',
                 help='synthetic set from `python -m mnv2_det.data.shapes DIR`')
  c.add_argument('--max_images', type=int, default=512,
                 help='training images written to the shared TFRecord')
  c.add_argument('--rounds', type=int, default=2)
  o = sub.add_parser('determinism')
  o.add_argument('--batch_size', type=int, default=16)
  o.add_argument('--steps', type=int, default=60)
  o.add_argument('--steps_per_loop', type=int, default=10)
  o.add_argument('--skip_loops', type=int, default=1,
                 help='first progress lines dropped (tracing, warm-up)')
  o.add_argument('--data_dir', default='data/shapes',
                 help='synthetic set from `python -m mnv2_det.data.shapes DIR`')
  o.add_argument('--rounds', type=int, default=2)
  f = sub.add_parser('profile')
  f.add_argument('--data_dir', default='data/shapes',
                 help='synthetic set from `python -m mnv2_det.data.shapes DIR`')
  f.add_argument('--size', type=int, default=0, help="input size (0: the experiment's)")
  f.add_argument('--batch_size', type=int, default=0, help="0: the experiment's")
  f.add_argument('--depth', type=float, default=0.0, help="0: the experiment's")
  f.add_argument('--steps', type=int, default=5, help='steps per timed round')
  f.add_argument('--rounds', type=int, default=3)
  f.add_argument('--trace_steps', type=int, default=5)
  f.add_argument('--top', type=int, default=25, help='op types listed')
  q = sub.add_parser('tflite')
  g = sub.add_parser('gflops')
  for p in (q, g):
    p.add_argument('--size', type=int, default=320)
    p.add_argument('--num_classes', type=int, default=91)
  q.add_argument('--threads', type=int, default=2)
  q.add_argument('--fast_nms', action=argparse.BooleanOptionalAction, default=True,
                 help='class-agnostic NMS (default); --no-fast_nms: regular NMS with '
                 f'score threshold {LATENCY_SCORE_THRESHOLD} (1 thread, LiteRT bug)')
  q.add_argument('--presets', action=argparse.BooleanOptionalAction, default=True,
                 help='also int8 regular NMS (config) vs --preset mobile')
  q.add_argument('--experiment', default='ssdlite_mnv2_shapes',
                 help='with --checkpoint: the presets on a trained model, with val AP')
  q.add_argument('--checkpoint', help='trained checkpoint (prefix or model_dir)')
  q.add_argument('--params_override', default='')
  q.add_argument('--representative_images', type=int,
                 default=tflite_convert.DEFAULT_REPRESENTATIVE_IMAGES)
  q.add_argument('--max_images', type=int, help='val images for the AP (None: all)')
  m = sub.add_parser('memory')
  m.add_argument('--size', type=int, default=320)
  m.add_argument('--batch_size', type=int, default=8)
  m.add_argument('--num_classes', type=int, default=91)
  m.add_argument('--depth', type=float, default=1.0)
  m.add_argument('--torch_python', default=torch_venv.default_python(),
                 help=torch_venv.HELP)
  for p in (b, d, t, q, g):
    p.add_argument('--rounds', type=int, default=3 if p is t else 5)
    p.add_argument('--runs', type=int, default=10)
  return parser


def main(argv=None):
  args = _parser().parse_args(argv)
  module, function = COMMANDS[args.command]
  getattr(importlib.import_module(module), function)(args)


if __name__ == '__main__':
  main()
