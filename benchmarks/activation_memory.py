"""Forward activation bytes of our SSDLite vs torchvision SSDLite, and the import RSS of each.

  python benchmarks/benchmark.py memory [--torch_python .venv-torch/bin/python]

The peak RSS of a training process is its framework's import footprint plus what one
train step holds live: mostly the forward activations that the backward pass reads.
This counts the second part the same way for both detectors, at the throughput
benchmark's setting (320x320, batch 8, 91 classes, our depth 1.0):

- ours: the float32 output bytes of every conv, depthwise, BatchNorm, ReLU6 and add op
  of `SSDLiteModel(images, training=True)` traced as one graph (backbone, extra feature
  maps, head); TensorFlow runs none of them in place;
- torchvision `ssdlite320_mobilenet_v3_large`: the output bytes of every leaf module of
  its backbone and head in train() mode, in-place outputs not counted
  (accuracy/torchvision_activations.py, in the torch venv).

Neither count is the exact live set (the backward pass frees some tensors early and
adds its own), but both use one rule, so their ratio says how much more a train step
of each model holds.
"""

import collections
import json
import os
import subprocess

import numpy as np
import tensorflow as tf

from official.core import exp_factory
from official.core import task_factory

import procfs

HERE = os.path.dirname(os.path.abspath(__file__))
TORCH_SCRIPT = os.path.join(HERE, 'accuracy', 'torchvision_activations.py')
# Ops whose outputs are the activations a train step keeps (the rest are scalars,
# shapes, or views of these).
COUNTED_OPS = ('Conv2D', 'DepthwiseConv2dNative', 'FusedBatchNormV3', 'Relu6', 'AddV2',
               'BiasAdd', 'Pad')


def our_activation_mb(size: int, batch: int, num_classes: int, depth: float) -> dict:
  """{'total_mb', 'by_op_type'}: float32 op output MB of one training forward pass."""
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.override({'task': {'model': {
      'input_size': [size, size, 3], 'num_classes': num_classes,
      'backbone': {'mnv2_det': {'depth_multiplier': depth}}}}})
  model = task_factory.get_task(params.task).build_model()
  forward = tf.function(lambda images: model(images, training=True))
  graph = forward.get_concrete_function(
      tf.TensorSpec([batch, size, size, 3], tf.float32)).graph
  by_type = collections.Counter()
  for op in graph.get_operations():
    if op.type in COUNTED_OPS:
      out = op.outputs[0]  # FusedBatchNormV3: y; the rest are per-channel
      by_type[op.type] += int(np.prod(out.shape.as_list())) * out.dtype.size
  return {'total_mb': sum(by_type.values()) / 2**20,
          'by_op_type': {k: v / 2**20 for k, v in by_type.most_common()}}


def _torchvision(args):
  if not os.path.exists(args.torch_python):
    print(f'torchvision: skipped, no torch venv at {args.torch_python} '
          '(benchmarks/accuracy/README.md)')
    return None
  out = subprocess.run([args.torch_python, TORCH_SCRIPT, '--size', str(args.size),
                        '--batch_size', str(args.batch_size),
                        '--num_classes', str(args.num_classes)],
                       check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def bench_memory(args):
  import_rss = procfs.vm_rss_bytes() / 2**20  # TensorFlow, tf_keras, Model Garden, mnv2_det imported
  ours = our_activation_mb(args.size, args.batch_size, args.num_classes, args.depth)
  print(f'{args.size}x{args.size}, batch {args.batch_size}, {args.num_classes} classes, '
        f'float32 forward activations in training mode')
  print(f'ours (depth {args.depth}): {ours["total_mb"]:.0f} MB  '
        + ', '.join(f'{k} {v:.0f}' for k, v in ours['by_op_type'].items()))
  print(f'  import RSS (TensorFlow + Model Garden + mnv2_det): {import_rss:.0f} MB')
  theirs = _torchvision(args)
  if theirs:
    print(f'torchvision ssdlite320_mobilenet_v3_large: {theirs["total_mb"]:.0f} MB  '
          + ', '.join(f'{k} {v:.0f}' for k, v in theirs['by_module_type'].items()))
    print(f'  import RSS (torch + torchvision): {theirs["import_rss_mb"]:.0f} MB')
    print(f'ratio ours / torchvision: activations '
          f'{ours["total_mb"] / theirs["total_mb"]:.2f}x, import '
          f'{import_rss / theirs["import_rss_mb"]:.2f}x')
