"""Where the train step's time goes (subcommand `profile` of benchmark.py).

Two independent measurements of the main job's train step (the `ssdlite_mnv2_shapes`
experiment as configured, or with `--size/--batch_size/--depth` overrides), on one fixed
batch from the real input pipeline, in graph mode (`tf.function`, no XLA):

1. Phases, by subtraction of nested graphs timed interleaved: forward (training=True,
   BN batch statistics and moving-average updates), + loss (hard-example mining and
   focal / smooth-L1 terms), + gradient, + optimizer (the full `task.train_step`).
   The input pipeline is timed alone, as images/s of `next(iterator)`.
2. Op types, from a TF profiler trace of `--trace_steps` full steps: the executor's
   per-op events (XPlane events named `name:type` on the tf_Compute threads) summed by
   type, by layer (backbone block, head, ...) and by top-level name scope (forward vs
   `gradient_tape`, optimizer, loss).

All times are wall milliseconds per step on this machine; record `lscpu` beside them.
"""

import collections
import glob
import os
import re
import tempfile
import time

import tensorflow as tf
import tf_keras
from tensorflow.tsl.profiler.protobuf import xplane_pb2

from official.core import exp_factory
from official.core import task_factory

import timing


def _task_and_batch(args):
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  ann = os.path.join(args.data_dir, 'annotations')
  override = {'task': {
      'train_data': {'annotation_file': os.path.join(ann, 'instances_train.json'),
                     'image_dir': os.path.join(args.data_dir, 'train')},
      'validation_data': {'annotation_file': os.path.join(ann, 'instances_val.json'),
                          'image_dir': os.path.join(args.data_dir, 'val')}}}
  if args.batch_size:
    override['task']['train_data']['global_batch_size'] = args.batch_size
  if args.size:
    override['task']['model'] = {'input_size': [args.size, args.size, 3]}
  if args.depth:
    override['task'].setdefault('model', {})['backbone'] = {
        'mnv2_det': {'depth_multiplier': args.depth}}
  params.override(override)
  task = task_factory.get_task(params.task)
  dataset = task.build_inputs(params.task.train_data)
  return params, task, dataset


def _phase_functions(task, model, optimizer, inputs):
  images, labels = inputs

  @tf.function
  def forward():
    outputs = model(images, training=True)
    return tf.add_n([tf.reduce_sum(v) for v in tf.nest.flatten(
        [outputs['cls_outputs'], outputs['box_outputs']])])

  @tf.function
  def forward_loss():
    outputs = model(images, training=True)
    return task.build_losses(outputs, labels, aux_losses=model.losses)['total_loss']

  @tf.function
  def forward_loss_grad():
    with tf.GradientTape() as tape:
      outputs = model(images, training=True)
      loss = task.build_losses(outputs, labels, aux_losses=model.losses)['total_loss']
    grads = tape.gradient(loss, model.trainable_variables)
    return tf.add_n([tf.reduce_sum(g) for g in grads])

  @tf.function
  def full_step():
    return task.train_step(inputs, model, optimizer)

  return {'forward': forward, 'forward + loss': forward_loss,
          'forward + loss + gradient': forward_loss_grad,
          'full train step (+ optimizer)': full_step}


def _op_events(logdir: str):
  """(op name, op type, duration ms) of every TF op the executor ran, from the trace
  under `logdir` (events named `name:type` on the host's tf_Compute threads)."""
  space = xplane_pb2.XSpace()
  paths = glob.glob(os.path.join(logdir, '**', '*.xplane.pb'), recursive=True)
  with open(paths[-1], 'rb') as f:
    space.ParseFromString(f.read())
  for plane in space.planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      if not line.name.startswith('tf_Compute'):
        continue
      for event in line.events:
        tf_op = plane.event_metadata[event.metadata_id].name
        if ':' not in tf_op or '::' in tf_op:
          continue
        name, op_type = tf_op.rsplit(':', 1)
        yield name, op_type, event.duration_ps / 1e9


def _scope(name: str) -> str:
  """Top-level phase of an op, from its name scope."""
  if 'gradient_tape' in name or name.startswith('gradients'):
    return 'backward (gradient_tape)'
  lowered = name.lower()
  if 'adam' in lowered or 'apply' in lowered or 'optimizer' in lowered:
    return 'optimizer'
  if 'ssd_loss' in lowered or 'loss' in lowered or 'mining' in lowered:
    return 'loss'
  if 'model' in lowered or 'backbone' in lowered or 'head' in lowered:
    return 'forward'
  return 'other'


_LAYER = re.compile(r'(block_\d+|Conv1|Conv_1|head|ssd_feature_maps|map/while)')


def _layer(name: str) -> str:
  """The network part an op belongs to (backbone block, head, extra layers, mining)."""
  match = _LAYER.search(name)
  return match.group(1) if match else 'other'


def _print_shares(title, totals, steps, top):
  grand = sum(totals.values())
  print(f'\n{title} (sum of op times {grand / steps:.1f} ms per step)')
  for key, ms in sorted(totals.items(), key=lambda kv: -kv[1])[:top]:
    print(f'  {key:46s} {ms / steps:9.2f} ms  {100 * ms / grand:5.1f}%')


def bench_profile(args):
  """Prints the phase and op-type breakdown of the train step."""
  params, task, dataset = _task_and_batch(args)
  batch = params.task.train_data.global_batch_size
  size = params.task.model.input_size[0]
  model = task.build_model()
  optimizer = tf_keras.optimizers.Adam(1e-4)
  iterator = iter(dataset)
  inputs = next(iterator)
  print(f'train step of ssdlite_mnv2_shapes at {size}x{size}, batch {batch}, depth '
        f'{params.task.model.backbone.mnv2_det.depth_multiplier}, inter/intra threads '
        f'{tf.config.threading.get_inter_op_parallelism_threads()}/'
        f'{tf.config.threading.get_intra_op_parallelism_threads()} (0 = all cores)')

  start = time.perf_counter()
  for _ in range(args.steps * 4):
    next(iterator)
  pipeline = batch * args.steps * 4 / (time.perf_counter() - start)

  phases = timing.interleaved_latency_ms(_phase_functions(task, model, optimizer, inputs),
                                         warmup=3, rounds=args.rounds, runs=args.steps)
  print(f'\ninput pipeline alone: {pipeline:.0f} img/s')
  print('phases, ms per step (interleaved rounds, median step):')
  previous = 0.0
  for name, ms in phases.items():
    print(f'  {name:34s} {ms:8.1f} ms  (+{ms - previous:6.1f})  {batch * 1e3 / ms:6.1f} img/s')
    previous = ms

  if not args.trace_steps:
    return
  step = tf.function(lambda: task.train_step(inputs, model, optimizer))
  step()
  logdir = tempfile.mkdtemp(prefix='mnv2_det_profile_')
  tf.profiler.experimental.start(logdir)
  for _ in range(args.trace_steps):
    step()
  tf.profiler.experimental.stop()
  by_type, by_scope, by_layer = (collections.Counter() for _ in range(3))
  for name, op_type, ms in _op_events(logdir):
    by_type[op_type] += ms
    by_scope[_scope(name)] += ms
    by_layer[_layer(name)] += ms
  _print_shares('op time by phase (name scope)', by_scope, args.trace_steps, 10)
  _print_shares('op time by layer (forward + backward)', by_layer, args.trace_steps, 12)
  _print_shares('op time by op type', by_type, args.trace_steps, args.top)
  print(f'(trace in {logdir})')

