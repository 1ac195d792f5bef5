"""Complete TFLite detectors (post-process op included) against an int8 MobileNetV2
backbone, and the int8 post-processing presets side by side (subcommand tflite)."""

import os
import tempfile

import numpy as np
import tensorflow as tf
import tf_keras
from ai_edge_litert.interpreter import Interpreter

import timing
from mnv2_det.core import loading
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.evaluation import coco
from mnv2_det.export import tflite as tflite_runtime
from mnv2_det.export import tflite_convert
from mnv2_det.export import tflite_presets
from mnv2_det.modeling import factory

import detectors
from detectors import LATENCY_SCORE_THRESHOLD

NUM_REPRESENTATIVE = 8
PIXEL_MAX = 255.0
TFLITE_TARGET_RATIO = 1.6  # int8 SSDLite / int8 backbone


def _random_pixels(size, count, seed=0):
  rng = np.random.default_rng(seed)
  return [rng.uniform(0, PIXEL_MAX, [1, size, size, 3]).astype(np.float32)
          for _ in range(count)]


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
    loaded = loading.load_model(args.checkpoint, args.experiment,
                                params_override=args.params_override)
    params, model, category_map = loaded.params, loaded.model, loaded.category_map
    representative = tflite_convert.representative_images(
        loaded.task, params, args.representative_images)
    source = f'{args.experiment} {loaded.checkpoint}'
  else:
    params = detectors.ssdlite_params(args.num_classes, args.size, fast_nms=True)
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
    settings = loading.detection_settings(preset_params)
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
      report = coco.evaluate_images(
          tflite_runtime.TFLiteDetector(path, num_threads=fns[name][1]), annotation_file,
          data.image_dir, max_images=args.max_images)
      stats = report['stats']
      print(f'  {name:60s} AP {stats["AP"]:.3f}  AP50 {stats["AP50"]:.3f}  '
            f'ARmax10 {stats["ARmax10"]:.3f}  {latencies[name]:.2f} ms')


def bench_tflite(args):
  """Full TFLite detectors (post-process op included) vs an int8 MNv2 backbone."""
  size = args.size
  params = detectors.ssdlite_params(args.num_classes, size, args.fast_nms)
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
