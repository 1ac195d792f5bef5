"""Benchmarks that print ratios against peers measured in the same run.

  python tools/benchmark.py backbone      # MobileNetV2 features vs keras.applications, MG
  python tools/benchmark.py detector      # SSDLite forward / full inference, NMS cost

Latency is TF-graph (tf.function, no XLA) wall time at batch 1, median of interleaved
rounds. Run on an otherwise idle machine.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import tensorflow as tf  # pylint: disable=g-import-not-at-top
import tf_keras

import mnv2_det  # pylint: disable=unused-import
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.modeling import factory
from mnv2_det.modeling.backbone import MobileNetV2Backbone
from mnv2_det.tools_lib import timing
from official.vision.modeling.backbones import mobilenet as mg_mobilenet


def _graph_fn(model, size):
  images = tf.random.uniform([1, size, size, 3], -1, 1, seed=0)
  fn = tf.function(lambda x: model(x, training=False))
  return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(images))


def bench_backbone(args):
  for size in args.sizes:
    spec = tf_keras.layers.InputSpec(shape=[1, size, size, 3])
    candidates = {
        'mnv2_det (layer_19)': MobileNetV2Backbone(input_specs=spec.shape,
                                                   endpoints=['layer_19']),
        'keras.applications MobileNetV2': tf_keras.applications.MobileNetV2(
            input_shape=(size, size, 3), include_top=False, weights=None),
        'Model Garden MobileNet(V2)': mg_mobilenet.MobileNet(
            model_id='MobileNetV2', input_specs=spec),
    }
    fns = {name: _graph_fn(model, size) for name, model in candidates.items()}
    latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
    timing.print_table(f'backbone latency, batch 1, {size}x{size}', latencies,
                       'mnv2_det (layer_19)')
    peers = [v for k, v in latencies.items() if not k.startswith('mnv2_det')]
    print(f'  -> mnv2_det / faster peer = {latencies["mnv2_det (layer_19)"] / min(peers):.2f}x')


def bench_detector(args):
  config = ssdlite_cfg.SSDLite(num_classes=args.num_classes, input_size=[320, 320, 3])
  model = factory.build_ssdlite_model(config)
  images = tf.random.uniform([1, 320, 320, 3], -1, 1, seed=0)
  @tf.function
  def raw(x):
    endpoints = model.backbone(x, training=False)
    return model.head(model.feature_maps(endpoints, training=False), training=False)

  @tf.function
  def full(x):
    return model(x, training=False)

  fns = {'forward (backbone+maps+head)': lambda: tf.nest.map_structure(
             lambda t: t.numpy(), raw(images)),
         'full inference (decode+NMS)': lambda: tf.nest.map_structure(
             lambda t: t.numpy(), full(images))}
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  timing.print_table(f'SSDLite-320, {args.num_classes} classes, batch 1, untrained head',
                     latencies, 'forward (backbone+maps+head)')


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='command', required=True)
  b = sub.add_parser('backbone')
  b.add_argument('--sizes', type=int, nargs='+', default=[224, 320])
  d = sub.add_parser('detector')
  d.add_argument('--num_classes', type=int, default=91)
  for p in (b, d):
    p.add_argument('--rounds', type=int, default=5)
    p.add_argument('--runs', type=int, default=10)
  args = parser.parse_args(argv)
  {'backbone': bench_backbone, 'detector': bench_detector}[args.command](args)


if __name__ == '__main__':
  main()
