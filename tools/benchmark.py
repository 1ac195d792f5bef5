"""Benchmarks that print ratios against peers measured in the same run.

  python tools/benchmark.py backbone      # MobileNetV2 features vs keras.applications, MG
  python tools/benchmark.py detector      # SSDLite forward / full inference vs MG RetinaNet
  python tools/benchmark.py train         # training images/s vs MG RetinaNet-MNv2
  python tools/benchmark.py train_cli     # the same, both through tools/train.py
  python tools/benchmark.py tflite        # fp32/int8 TFLite detector vs int8 MNv2 backbone,
                                          # then int8 regular NMS vs the mobile preset
      [--experiment ssdlite_mnv2_shapes --checkpoint runs/shapes]  # + their val AP
  python tools/benchmark.py gflops        # CPU matmul GFLOP/s vs our achieved GFLOP/s

Latency is TF-graph (tf.function, no XLA) wall time at batch 1, median of interleaved
rounds. Run on an otherwise idle machine.
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # pylint: disable=g-import-not-at-top
import tensorflow as tf
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import mnv2_det  # pylint: disable=unused-import
from official.core import exp_factory
from official.core import task_factory
from official.vision.ops import anchor
from official.vision.configs import backbones
from official.vision.configs import decoders
from official.vision.tasks import retinanet
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.modeling import factory
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.export import tflite as tflite_runtime
from mnv2_det.export import loader
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_presets
from mnv2_det.tools_lib import evaluate
from mnv2_det.modeling.backbone import MobileNetV2Backbone
from mnv2_det.tools_lib import model_stats
from mnv2_det.tools_lib import timing
from mnv2_det.tools_lib import train_benchmark
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


def _retinanet_mnv2_config(num_classes, size, nms_version='batched'):
  """Model Garden RetinaNet-MobileNetV2: separable FPN + head, 128 filters, ReLU6."""
  config = exp_factory.get_exp_config('retinanet_mobile_coco')
  model = config.task.model
  model.backbone = backbones.Backbone(
      type='mobilenet', mobilenet=backbones.MobileNet(model_id='MobileNetV2'))
  model.decoder = decoders.Decoder(
      type='fpn', fpn=decoders.FPN(num_filters=128, use_separable_conv=True))
  model.head.num_filters = 128
  model.head.use_separable_conv = True
  model.min_level, model.max_level = 3, 7
  model.num_classes = num_classes
  model.input_size = [size, size, 3]
  model.norm_activation.activation = 'relu6'
  model.norm_activation.use_sync_bn = False
  model.detection_generator.nms_version = nms_version
  return config


def _fetch(fn, *args):
  return lambda: tf.nest.map_structure(lambda t: t.numpy(), fn(*args))


def bench_detector(args):
  """Forward and full inference (decode + NMS) vs Model Garden RetinaNet-MNv2."""
  config = ssdlite_cfg.SSDLite(num_classes=args.num_classes, input_size=[320, 320, 3])
  model = factory.build_ssdlite_model(config)
  images = tf.random.uniform([1, 320, 320, 3], -1, 1, seed=0)
  raw = tf.function(lambda x: model.raw_outputs(x, training=False))
  full = tf.function(lambda x: model(x, training=False))
  mg = retinanet.RetinaNetTask(
      _retinanet_mnv2_config(args.num_classes, 320, args.mg_nms).task).build_model()
  mg_raw = tf.function(lambda x: mg.head(mg.decoder(mg.backbone(x, training=False),
                                                    training=False)))
  mg_full = tf.function(lambda x: mg(x, image_shape=tf.constant([[320, 320]]),
                                     training=False))
  mg_full_name = f'MG RetinaNet-MNv2 full ({args.mg_nms} NMS)'
  fns = {'mnv2_det forward': _fetch(raw, images),
         'mnv2_det full inference': _fetch(full, images),
         'MG RetinaNet-MNv2 forward': _fetch(mg_raw, images),
         mg_full_name: _fetch(mg_full, images)}
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  timing.print_table(f'320x320, {args.num_classes} classes, batch 1, untrained heads',
                     latencies, 'mnv2_det forward')
  ours = latencies['mnv2_det full inference']
  print(f'  -> mnv2_det full / forward = {ours / latencies["mnv2_det forward"]:.2f}x '
        '(target <= 1.2x)')
  print(f'  -> mnv2_det full / {mg_full_name} = {ours / latencies[mg_full_name]:.2f}x')


TRAIN_TARGET_RATIO = 1.3


def _images_per_second(step_fn, batch, warmup, steps):
  for _ in range(warmup):
    step_fn()
  start = time.perf_counter()
  for _ in range(steps):
    step_fn()
  return batch * steps / (time.perf_counter() - start)


def _mg_labels(config, batch, size):
  model = config.task.model
  anchor_boxes = anchor.build_anchor_generator(
      min_level=model.min_level, max_level=model.max_level,
      num_scales=model.anchor.num_scales, aspect_ratios=model.anchor.aspect_ratios,
      anchor_size=model.anchor.anchor_size)((size, size))
  labeler = anchor.AnchorLabeler(match_threshold=0.5, unmatched_threshold=0.5)
  gt_boxes = tf.constant([[10., 12., 90., 120.], [150., 40., 300., 200.], [200, 210, 260, 300]])
  cls_t, box_t, _, cls_w, box_w = labeler.label_anchors(
      anchor_boxes, gt_boxes, tf.constant([[1], [3], [5]]))
  stack = lambda x: tf.stack([x] * batch)
  return {'cls_targets': tf.nest.map_structure(stack, cls_t),
          'box_targets': tf.nest.map_structure(stack, box_t),
          'cls_weights': stack(cls_w), 'box_weights': stack(box_w)}


def bench_train(args):
  """Training images/s: ours with the real input pipeline vs MG with fixed targets."""
  size, batch = 320, args.batch_size
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.override({'task': {
      'model': {'num_classes': 91, 'input_size': [size, size, 3],
                'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}},
      'train_data': {'global_batch_size': batch,
                     'annotation_file': os.path.join(args.data_dir,
                                                     'annotations/instances_train.json'),
                     'image_dir': os.path.join(args.data_dir, 'train')}}})
  task = task_factory.get_task(params.task)
  model = task.build_model()
  optimizer = tf_keras.optimizers.Adam(1e-4)
  iterator = iter(task.build_inputs(params.task.train_data))
  ours = tf.function(lambda inputs: task.train_step(inputs, model, optimizer))
  ours_step = lambda: ours(next(iterator))

  mg_config = _retinanet_mnv2_config(91, size)
  mg_task = retinanet.RetinaNetTask(mg_config.task)
  mg_model = mg_task.build_model()
  mg_optimizer = tf_keras.optimizers.Adam(1e-4)
  mg_inputs = (tf.random.uniform([batch, size, size, 3], -1, 1), _mg_labels(mg_config, batch, size))
  mg = tf.function(lambda: mg_task.train_step(mg_inputs, mg_model, mg_optimizer))

  results = {}
  for _ in range(args.rounds):
    results.setdefault('mnv2_det SSDLite (real pipeline)', []).append(
        _images_per_second(ours_step, batch, 3, args.steps))
    results.setdefault('MG RetinaNet-MNv2 (fixed batch)', []).append(
        _images_per_second(lambda: mg(), batch, 3, args.steps))
  print(f'\ntraining images/s at {size}x{size}, batch {batch}, 91 classes')
  best = {k: max(v) for k, v in results.items()}
  for name, value in best.items():
    print(f'  {name:40s} {value:8.2f} img/s')
  ratio = best['mnv2_det SSDLite (real pipeline)'] / best['MG RetinaNet-MNv2 (fixed batch)']
  print(f'  -> mnv2_det / MG = {ratio:.2f}x (target >= {TRAIN_TARGET_RATIO}x)')


def bench_train_cli(args):
  """Training images/s with everything `tools/train.py` does (input pipeline,
  train_lib + orbit loop, summaries): ours vs MG RetinaNet-MNv2, same TFRecords."""
  size, batch = 320, args.batch_size
  workdir = tempfile.mkdtemp(prefix='mnv2_det_train_bench_')
  records = os.path.join(workdir, 'train.tfrecord')
  count = train_benchmark.write_tfrecord(
      os.path.join(args.data_dir, 'annotations/instances_train.json'),
      os.path.join(args.data_dir, 'train'), records, args.max_images)
  data = {'input_path': records, 'global_batch_size': batch}
  trainer = train_benchmark.trainer_overrides(args.steps, args.steps_per_loop)
  ours = {'task': {
      'model': {'num_classes': 91, 'input_size': [size, size, 3],
                'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}},
      'train_data': dict(data, annotation_file='', image_dir=''),
      'allow_image_summary': False}, 'trainer': trainer}
  mg = _retinanet_mnv2_config(91, size).as_dict()
  mg['task']['train_data'].update(data)
  # MG pads inputs to a multiple of 2^max_level (320 -> 384); keep both at 320.
  mg['task']['train_data']['parser']['pad'] = False
  mg['trainer'].update(trainer)
  rates = train_benchmark.interleaved_runs(
      {'mnv2_det SSDLite-MNv2 (tools/train.py)': ('ssdlite_mnv2_shapes', ours),
       'MG RetinaNet-MNv2 (tools/train.py)': ('retinanet_mobile_coco', mg)},
      workdir, args.rounds, args.skip_loops)
  train_benchmark.print_ratio_table(
      f'training images/s at {size}x{size}, batch {batch}, 91 classes, {count} '
      f'TFRecord images, median of loops {args.skip_loops + 1}.. of '
      f'{args.steps // args.steps_per_loop}, best of {args.rounds} rounds ({workdir})',
      rates, 'MG RetinaNet-MNv2 (tools/train.py)', TRAIN_TARGET_RATIO)


LATENCY_SCORE_THRESHOLD = 0.05  # instead of 1e-8 when timing regular NMS
NUM_REPRESENTATIVE = 8
PIXEL_MAX = 255.0
TFLITE_TARGET_RATIO = 1.6  # int8 SSDLite / int8 backbone
MATMUL_SIZE = 1024
FLOPS_PER_MADD = 2


def _random_pixels(size, count, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(0, PIXEL_MAX, [1, size, size, 3]).astype(np.float32)
          for _ in range(count)]


def _detector_params(num_classes, size, fast_nms):
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.override({'task': {'model': {
      'num_classes': num_classes, 'input_size': [size, size, 3],
      'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}}}})
  if not fast_nms:  # LiteRT regular NMS: see mnv2_det/export/tflite.py
    params.task.model.detection_generator.score_threshold = LATENCY_SCORE_THRESHOLD
  return params


def _int8_backbone_bytes(size, representative):
  """keras.applications MobileNetV2 features, random weights, full-integer int8."""
  backbone = tf_keras.applications.MobileNetV2(input_shape=(size, size, 3),
                                               include_top=False, weights=None)
  converter = tf.lite.TFLiteConverter.from_keras_model(backbone)
  converter.optimizations = [tf.lite.Optimize.DEFAULT]
  converter.representative_dataset = lambda: ([r / PIXEL_MAX * 2 - 1]
                                              for r in representative)
  converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
  converter.inference_input_type = tf.int8
  converter.inference_output_type = tf.int8
  return converter.convert()


def _interpreter_fn(contents, threads, pixels=None):
  """Invokes the model on `pixels` ([1, H, W, 3] in [0, 255]; None: zeros)."""
  interpreter = Interpreter(model_content=contents, num_threads=threads)
  interpreter.allocate_tensors()
  detail = interpreter.get_input_details()[0]
  value = np.zeros(detail['shape'], detail['dtype'])
  if pixels is not None:
    scale, zero_point = detail['quantization']
    value = (np.asarray(pixels, np.float32) if detail['dtype'] == np.float32 else
             np.clip(np.round(pixels / scale + zero_point), 0, 255).astype(detail['dtype']))
  interpreter.set_tensor(detail['index'], value)
  return interpreter.invoke


def bench_tflite_presets(args):
  """int8 detector: the config's regular NMS (what the default export does) vs the
  mobile preset (fast NMS, 10 detections, threshold 0.3), latency side by side; with
  --checkpoint also their validation AP (`tools/eval.py --model` on original images).
  Regular NMS runs 1 thread (tensorflow/tensorflow#56058), the preset --threads."""
  if args.checkpoint:
    loaded = loader.load_detector(args.experiment, args.checkpoint,
                                  params_override=args.params_override)
    params, model, category_map = loaded.params, loaded.model, loaded.category_map
    representative = tflite_convert.representative_images(
        loaded.task, params, args.representative_images)
    source = f'{args.experiment} {loaded.checkpoint}'
  else:
    params = _detector_params(args.num_classes, args.size, fast_nms=True)
    model = factory.build_ssdlite_model(params.task.model)
    category_map = CategoryMap.from_ids(range(1, args.num_classes))
    representative = _random_pixels(args.size, NUM_REPRESENTATIVE)
    source = f'random weights, {args.num_classes} classes (no AP)'
  fns, paths = {}, {}
  tmp = tempfile.mkdtemp(prefix='bench_presets_')
  for preset in (tflite_presets.DEFAULT, tflite_presets.MOBILE):
    preset_params, regular, extra = tflite_presets.apply(params, preset)
    threads = tflite_runtime.safe_num_threads(args.threads, len(category_map.dataset_ids),
                                              regular)
    settings = loader.detection_settings(preset_params)
    name = (f'{preset}: {"regular" if regular else "fast"} NMS, '
            f'thr {settings["score_threshold"]:g}, {settings["max_num_detections"]} det, '
            f'{threads} thr')
    contents = tflite_convert.tflite_detector_bytes(
        preset_params, model, category_map, 'int8', representative, regular,
        'benchmark', extra)
    paths[name] = os.path.join(tmp, f'{preset}.tflite')
    with open(paths[name], 'wb') as f:
      f.write(contents)
    fns[name] = (_interpreter_fn(contents, threads, representative[0]), threads)
  latencies = timing.interleaved_latency_ms({k: v[0] for k, v in fns.items()},
                                            rounds=args.rounds, runs=args.runs)
  reference = list(fns)[0]
  timing.print_table(f'TFLite int8 post-processing presets, {source}', latencies, reference)
  if args.checkpoint:
    data = params.task.validation_data
    annotation_file = params.task.annotation_file or data.annotation_file
    print(f'\nval AP ({annotation_file}, up to {args.max_images or "all"} images)')
    for name, path in paths.items():
      report = evaluate.evaluate_images(
          tflite_runtime.TFLiteDetector(path, num_threads=fns[name][1]), annotation_file,
          data.image_dir, max_images=args.max_images)
      stats = report['stats']
      print(f'  {name:60s} AP {stats["AP"]:.3f}  AP50 {stats["AP50"]:.3f}  '
            f'ARmax10 {stats["ARmax10"]:.3f}  {latencies[name]:.2f} ms')


def bench_tflite(args):
  """Full TFLite detectors (post-process op included) vs an int8 MNv2 backbone."""
  size = args.size
  params = _detector_params(args.num_classes, size, args.fast_nms)
  model = factory.build_ssdlite_model(params.task.model)
  category_map = CategoryMap.from_ids(range(1, args.num_classes))
  representative = _random_pixels(size, NUM_REPRESENTATIVE)
  nms = ('fast (class-agnostic) NMS' if args.fast_nms else
         f'regular NMS, score threshold {LATENCY_SCORE_THRESHOLD}')
  fns = {}
  for quant in ('fp32', 'int8'):
    contents = tflite_convert.tflite_detector_bytes(
        params, model, category_map, quant, representative if quant == 'int8' else None,
        not args.fast_nms, 'benchmark')
    threads = tflite_runtime.safe_num_threads(args.threads, args.num_classes - 1,
                                              not args.fast_nms)
    fns[f'SSDLite {quant} ({threads} threads)'] = _interpreter_fn(contents, threads)
  backbone = f'int8 MNv2 backbone ({args.threads} threads)'
  fns[backbone] = _interpreter_fn(_int8_backbone_bytes(size, representative), args.threads)
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  timing.print_table(f'TFLite latency, {size}x{size}, {args.num_classes} classes, {nms}, '
                     'random weights', latencies, backbone)
  int8 = [k for k in latencies if 'SSDLite int8' in k][0]
  print(f'  -> int8 SSDLite / int8 backbone = {latencies[int8] / latencies[backbone]:.2f}x '
        f'(target <= {TFLITE_TARGET_RATIO}x)')
  if args.presets:
    bench_tflite_presets(args)


def bench_gflops(args):
  """Dense matmul GFLOP/s (physical reference) vs our forward pass's GFLOP/s."""
  n = MATMUL_SIZE
  a = tf.random.uniform([n, n], seed=0)
  b = tf.random.uniform([n, n], seed=1)
  matmul = tf.function(lambda: tf.linalg.matmul(a, b))
  params = _detector_params(args.num_classes, args.size, fast_nms=True)
  model = factory.build_ssdlite_model(params.task.model)
  shape = [1, args.size, args.size, 3]
  madds = model_stats.count_madds(model_stats.raw_forward(model), shape)['total']
  images = tf.random.uniform(shape, -1, 1, seed=0)
  forward = tf.function(lambda x: model.raw_outputs(x, training=False))
  fns = {f'matmul {n}x{n} float32': _fetch(matmul),
         'SSDLite forward (TF graph)': _fetch(forward, images)}
  latencies = timing.interleaved_latency_ms(fns, rounds=args.rounds, runs=args.runs)
  matmul_gflops = FLOPS_PER_MADD * n ** 3 / (latencies[f'matmul {n}x{n} float32'] * 1e6)
  ours = FLOPS_PER_MADD * madds / (latencies['SSDLite forward (TF graph)'] * 1e6)
  print(f'\nGFLOP/s on this CPU ({os.cpu_count()} cores), float32, batch 1')
  print(f'  matmul {n}x{n}: {latencies[f"matmul {n}x{n} float32"]:.2f} ms -> '
        f'{matmul_gflops:.1f} GFLOP/s (physical reference)')
  print(f'  SSDLite {args.size}x{args.size} forward: {madds / 1e9:.3f} GMAdds, '
        f'{latencies["SSDLite forward (TF graph)"]:.2f} ms -> {ours:.1f} GFLOP/s '
        f'({ours / matmul_gflops:.1%} of matmul)')


def main(argv=None):
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
  for p in (b, d, t, q, g):
    p.add_argument('--rounds', type=int, default=3 if p is t else 5)
    p.add_argument('--runs', type=int, default=10)
  args = parser.parse_args(argv)
  {'backbone': bench_backbone, 'detector': bench_detector,
   'train': bench_train, 'train_cli': bench_train_cli, 'tflite': bench_tflite, 'gflops': bench_gflops}[args.command](args)


if __name__ == '__main__':
  main()
