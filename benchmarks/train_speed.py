"""Training images/s against Model Garden RetinaNet-MNv2 (subcommands train, train_cli).

`train` times the task's train step in-process: ours with the real input pipeline, MG on
a fixed batch. `train_cli` runs both candidates as `python tools/train.py --mode train`
subprocesses (found relative to this folder, i.e. in a repository checkout) on the SAME
Model Garden TFRecords (written here from a COCO JSON with Model Garden's own
`create_coco_tf_record.create_tf_example`), each with its own real input pipeline,
train_lib + orbit loop, checkpointing off except at the end. Images/s is read from the
progress line `tools/train.py` prints after every train loop (`... | 15.2 img/s | ...`);
the first `skip_loops` loops (tracing, pipeline warm-up) are dropped.
"""

import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Dict, List

import tensorflow as tf
import tf_keras
import yaml

from official.core import exp_factory
from official.core import task_factory
from official.vision.data import create_coco_tf_record
from official.vision.ops import anchor
from official.vision.tasks import retinanet

import detectors

TRAIN_TARGET_RATIO = 1.3
IMAGES_PER_SECOND = re.compile(r'^step \d+/\d+ \|.*\| ([0-9.]+) img/s \|', re.MULTILINE)
TRAIN_TOOL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          'tools', 'train.py')


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

  mg_config = detectors.retinanet_mnv2_config(91, size)
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


def write_tfrecord(annotation_file: str, image_dir: str, output_path: str,
                   max_images: int) -> int:
  """Writes the first `max_images` images of `annotation_file` as Model Garden
  tf.Examples.

  Returns:
    the number of examples written.
  """
  with open(annotation_file, encoding='utf-8') as f:
    coco = json.load(f)
  by_image: Dict[int, List[dict]] = {}
  for ann in coco['annotations']:
    by_image.setdefault(ann['image_id'], []).append(ann)
  names = {c['id']: c['name'] for c in coco['categories']}
  with tf.io.TFRecordWriter(output_path) as writer:
    for image in coco['images'][:max_images]:
      example, _ = create_coco_tf_record.create_tf_example(
          image, [image_dir], bbox_annotations=by_image.get(image['id'], []),
          id_to_name_map=names)
      writer.write(example.SerializeToString())
  return len(coco['images'][:max_images])


def trainer_overrides(steps: int, steps_per_loop: int) -> dict:
  """Train only: no validation, one checkpoint at the end, a loop per progress line."""
  return {'train_steps': steps, 'steps_per_loop': steps_per_loop,
          'summary_interval': steps_per_loop, 'checkpoint_interval': steps,
          'validation_interval': steps, 'best_checkpoint_export_subdir': '',
          'best_checkpoint_eval_metric': ''}


def _run_train_tool(experiment: str, config: dict, workdir: str, name: str,
                    skip_loops: int) -> float:
  """Runs tools/train.py on `config` (a YAML-able override dict); median img/s.

  Raises:
    RuntimeError: the tool failed or printed too few progress lines.
  """
  config_file = os.path.join(workdir, f'{name}.yaml')
  with open(config_file, 'w', encoding='utf-8') as f:
    yaml.safe_dump(config, f)
  model_dir = os.path.join(workdir, f'{name}_model')
  result = subprocess.run(
      [sys.executable, TRAIN_TOOL, f'--experiment={experiment}', '--mode=train',
       f'--model_dir={model_dir}', f'--config_file={config_file}'],
      capture_output=True, text=True, check=False)
  rates = [float(x) for x in IMAGES_PER_SECOND.findall(result.stdout)]
  if result.returncode != 0 or len(rates) <= skip_loops:
    tail = '\n'.join((result.stderr or result.stdout).strip().splitlines()[-5:])
    raise RuntimeError(f'{experiment} via tools/train.py failed (exit '
                       f'{result.returncode}, {len(rates)} progress lines):\n{tail}')
  return statistics.median(rates[skip_loops:])


def _interleaved_runs(candidates: Dict[str, tuple], workdir: str, rounds: int,
                      skip_loops: int) -> Dict[str, float]:
  """Best median img/s per candidate over `rounds` alternating runs.

  Args:
    candidates: name -> (experiment, config dict).
  """
  results: Dict[str, List[float]] = {name: [] for name in candidates}
  for index in range(rounds):
    for name, (experiment, config) in candidates.items():
      slug = re.sub(r'[^a-z0-9]+', '_', name.lower()) + f'_{index}'
      results[name].append(_run_train_tool(experiment, config, workdir, slug, skip_loops))
  return {name: max(values) for name, values in results.items()}


def bench_train_cli(args):
  """Training images/s with everything `tools/train.py` does (input pipeline,
  train_lib + orbit loop, summaries): ours vs MG RetinaNet-MNv2, same TFRecords."""
  size, batch = 320, args.batch_size
  workdir = tempfile.mkdtemp(prefix='mnv2_det_train_bench_')
  records = os.path.join(workdir, 'train.tfrecord')
  count = write_tfrecord(
      os.path.join(args.data_dir, 'annotations/instances_train.json'),
      os.path.join(args.data_dir, 'train'), records, args.max_images)
  data = {'input_path': records, 'global_batch_size': batch}
  trainer = trainer_overrides(args.steps, args.steps_per_loop)
  ours = {'task': {
      'model': {'num_classes': 91, 'input_size': [size, size, 3],
                'backbone': {'mnv2_det': {'depth_multiplier': 1.0}}},
      'train_data': dict(data, annotation_file='', image_dir=''),
      # the category table comes from the val annotations (the records carry none)
      'validation_data': {'annotation_file': os.path.join(
          args.data_dir, 'annotations/instances_val.json'),
                          'image_dir': os.path.join(args.data_dir, 'val')},
      'allow_image_summary': False}, 'trainer': trainer}
  mg = detectors.retinanet_mnv2_config(91, size).as_dict()
  mg['task']['train_data'].update(data)
  # MG pads inputs to a multiple of 2^max_level (320 -> 384); keep both at 320.
  mg['task']['train_data']['parser']['pad'] = False
  mg['trainer'].update(trainer)
  reference = 'MG RetinaNet-MNv2 (tools/train.py)'
  rates = _interleaved_runs(
      {'mnv2_det SSDLite-MNv2 (tools/train.py)': ('ssdlite_mnv2_shapes', ours),
       reference: ('retinanet_mobile_coco', mg)},
      workdir, args.rounds, args.skip_loops)
  _print_rates(f'training images/s at {size}x{size}, batch {batch}, 91 classes, {count} '
               'TFRecord images', rates, reference, args, workdir,
               f' (target >= {TRAIN_TARGET_RATIO}x)')


def _print_rates(title, rates, reference, args, workdir, note=''):
  """The img/s of each candidate and the other candidate's ratio to `reference`."""
  print(f'\n{title}, median of loops {args.skip_loops + 1}.. of '
        f'{args.steps // args.steps_per_loop}, best of {args.rounds} rounds ({workdir})')
  for name, value in rates.items():
    print(f'  {name:44s} {value:8.2f} img/s')
  other = [k for k in rates if k != reference][0]
  print(f'  -> {other} / {reference} = {rates[other] / rates[reference]:.2f}x{note}')


def bench_determinism(args):
  """What `task.op_determinism` costs: `tools/train.py` images/s of the shapes
  experiment with `task.seed` alone vs `task.seed` + op determinism (interleaved)."""
  workdir = tempfile.mkdtemp(prefix='mnv2_det_determinism_bench_')
  data = os.path.join(args.data_dir, 'annotations')
  base = {'task': {
      'seed': 1,
      'train_data': {'annotation_file': os.path.join(data, 'instances_train.json'),
                     'image_dir': os.path.join(args.data_dir, 'train'),
                     'global_batch_size': args.batch_size},
      'validation_data': {'annotation_file': os.path.join(data, 'instances_val.json'),
                          'image_dir': os.path.join(args.data_dir, 'val')}},
      'trainer': trainer_overrides(args.steps, args.steps_per_loop)}
  determined = json.loads(json.dumps(base))
  determined['task']['op_determinism'] = True
  reference = 'task.seed'
  rates = _interleaved_runs(
      {reference: ('ssdlite_mnv2_shapes', base),
       'task.seed + task.op_determinism': ('ssdlite_mnv2_shapes', determined)},
      workdir, args.rounds, args.skip_loops)
  _print_rates(f'tools/train.py ssdlite_mnv2_shapes images/s, batch {args.batch_size}',
               rates, reference, args, workdir)
