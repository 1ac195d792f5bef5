"""TF-graph latency at batch 1 against peers: the backbone, the detector, and the
achieved GFLOP/s against a dense matmul (subcommands backbone, detector, gflops)."""

import os

import tensorflow as tf
import tf_keras

from official.vision.modeling.backbones import mobilenet as mg_mobilenet
from official.vision.tasks import retinanet
from mnv2_det.analysis import model_stats
import timing
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.modeling import factory
from mnv2_det.modeling.backbone import MobileNetV2Backbone

import detectors

MATMUL_SIZE = 1024
FLOPS_PER_MADD = 2


def fetch(fn, *args):
  """`fn(*args)` with every output brought to numpy (so the timing includes it)."""
  return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(*args))


def _graph_fn(model, size):
  images = tf.random.uniform([1, size, size, 3], -1, 1, seed=0)
  return fetch(tf.function(lambda x: model(x, training=False)), images)


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
  """Forward and full inference (decode + NMS) vs Model Garden RetinaNet-MNv2."""
  config = ssdlite_cfg.SSDLite(num_classes=args.num_classes, input_size=[320, 320, 3])
  model = factory.build_ssdlite_model(config)
  images = tf.random.uniform([1, 320, 320, 3], -1, 1, seed=0)
  raw = tf.function(lambda x: model.raw_outputs(x, training=False))
  full = tf.function(lambda x: model(x, training=False))
  mg = retinanet.RetinaNetTask(
      detectors.retinanet_mnv2_config(args.num_classes, 320, args.mg_nms).task).build_model()
  mg_raw = tf.function(lambda x: mg.head(mg.decoder(mg.backbone(x, training=False),
                                                    training=False)))
  mg_full = tf.function(lambda x: mg(x, image_shape=tf.constant([[320, 320]]),
                                     training=False))
  mg_full_name = f'MG RetinaNet-MNv2 full ({args.mg_nms} NMS)'
  fns = {'mnv2_det forward': fetch(raw, images),
         'mnv2_det full inference': fetch(full, images),
         'MG RetinaNet-MNv2 forward': fetch(mg_raw, images),
         mg_full_name: fetch(mg_full, images)}
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  timing.print_table(f'320x320, {args.num_classes} classes, batch 1, untrained heads',
                     latencies, 'mnv2_det forward')
  ours = latencies['mnv2_det full inference']
  print(f'  -> mnv2_det full / forward = {ours / latencies["mnv2_det forward"]:.2f}x '
        '(target <= 1.2x)')
  print(f'  -> mnv2_det full / {mg_full_name} = {ours / latencies[mg_full_name]:.2f}x')


def bench_gflops(args):
  """Dense matmul GFLOP/s (physical reference) vs our forward pass's GFLOP/s."""
  n = MATMUL_SIZE
  a = tf.random.uniform([n, n], seed=0)
  b = tf.random.uniform([n, n], seed=1)
  matmul = tf.function(lambda: tf.linalg.matmul(a, b))
  params = detectors.ssdlite_params(args.num_classes, args.size, fast_nms=True)
  model = factory.build_ssdlite_model(params.task.model)
  shape = [1, args.size, args.size, 3]
  madds = model_stats.count_madds(model_stats.raw_forward(model), shape)['total']
  images = tf.random.uniform(shape, -1, 1, seed=0)
  forward = tf.function(lambda x: model.raw_outputs(x, training=False))
  fns = {f'matmul {n}x{n} float32': fetch(matmul),
         'SSDLite forward (TF graph)': fetch(forward, images)}
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  matmul_gflops = FLOPS_PER_MADD * n ** 3 / (latencies[f'matmul {n}x{n} float32'] * 1e6)
  ours = FLOPS_PER_MADD * madds / (latencies['SSDLite forward (TF graph)'] * 1e6)
  print(f'\nGFLOP/s on this CPU ({os.cpu_count()} cores), float32, batch 1')
  print(f'  matmul {n}x{n}: {latencies[f"matmul {n}x{n} float32"]:.2f} ms -> '
        f'{matmul_gflops:.1f} GFLOP/s (physical reference)')
  print(f'  SSDLite {args.size}x{args.size} forward: {madds / 1e9:.3f} GMAdds, '
        f'{latencies["SSDLite forward (TF graph)"]:.2f} ms -> {ours:.1f} GFLOP/s '
        f'({ours / matmul_gflops:.1%} of matmul)')
