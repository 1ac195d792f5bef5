"""task.model.norm_activation.use_sync_bn under MirroredStrategy on 2 logical CPUs.

Logical devices must be configured before TensorFlow initializes its devices, so the
check runs in a fresh subprocess. The two replicas get very different images (about
-0.8 and +0.8 everywhere, plus small noise), so the first BN layer's per-replica batch
statistics differ: local variances are small, the global batch's variance is large
(it holds the difference of the replica means). The moving means cannot tell sync from
per-replica BN (the mirrored update averages the replicas' means, which is the global
mean), the moving variances can: with sync BN they move toward the GLOBAL-batch
variance; without it, toward the mean of the per-replica variances.
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mnv2_det.data import shapes

pytestmark = pytest.mark.slow  # subprocess with its own TensorFlow devices

MOMENTUM = 0.9  # shapes experiment BN momentum (bn_momentum and norm_momentum)

_SCRIPT = r'''
import json, sys
import numpy as np
import tensorflow as tf
import tf_keras
cpu = tf.config.list_physical_devices('CPU')[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import mnv2_det
from official.core import task_factory
from mnv2_det.core import params as params_lib

data_dir, = sys.argv[1:]
strategy = tf.distribute.MirroredStrategy(['/cpu:0', '/cpu:1'])
rng = np.random.default_rng(0)
per_replica = np.stack([np.full([2, 96, 96, 3], level, np.float32) +
                        rng.normal(0, 0.05, [2, 96, 96, 3]).astype(np.float32)
                        for level in (-0.8, 0.8)])
out = {'replicas': strategy.num_replicas_in_sync}
for sync in (True, False):
  params = params_lib.build_params('ssdlite_mnv2_shapes', params_override=','.join([
      f'task.train_data.annotation_file={data_dir}/annotations/instances_train.json',
      f'task.train_data.image_dir={data_dir}/train',
      'task.model.input_size=[96,96,3]',
      'task.model.backbone.mnv2_det.depth_multiplier=0.35',
      f'task.model.norm_activation.use_sync_bn={sync}']))
  with strategy.scope():
    model = task_factory.get_task(params.task).build_model()
  bns = [l for l in model.submodules if isinstance(l, tf_keras.layers.Layer)
         and 'BatchNormalization' in type(l).__name__]
  bn = model.backbone.get_layer('bn_Conv1')
  conv = model.backbone.get_layer('Conv1')
  images = strategy.experimental_distribute_values_from_function(
      lambda ctx: tf.constant(per_replica[ctx.replica_id_in_sync_group]))

  @tf.function
  def step(x):
    strategy.run(lambda im: model(im, training=True), args=(x,))

  step(images)
  features = [conv(tf.constant(im)).numpy().astype(np.float64) for im in per_replica]
  both = np.concatenate(features)
  out[str(sync)] = {
      'synchronized': [bool(getattr(l, 'synchronized', False)) for l in bns],
      'moving_mean': bn.moving_mean.numpy().tolist(),
      'moving_variance': bn.moving_variance.numpy().tolist(),
      'global_mean': both.mean((0, 1, 2)).tolist(),
      'global_variance': both.var((0, 1, 2)).tolist(),
      'replica_variances': [f.var((0, 1, 2)).tolist() for f in features],
  }
print('RESULT ' + json.dumps(out))
'''


@pytest.fixture(scope='module')
def stats(tmp_path_factory):
  data = tmp_path_factory.mktemp('shapes')
  shapes.generate(str(data), num_train=4, num_val=0, seed=1)
  result = subprocess.run([sys.executable, '-c', _SCRIPT, str(data)], capture_output=True,
                          text=True, timeout=600,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  line = [l for l in result.stdout.splitlines() if l.startswith('RESULT ')]
  assert len(line) == 1, result.stdout[-2000:]
  return json.loads(line[0][len('RESULT '):])


def test_every_bn_layer_is_synchronized_only_with_use_sync_bn(stats):
  assert stats['replicas'] == 2
  assert len(stats['True']['synchronized']) == 76  # backbone, extra layers and head
  assert all(stats['True']['synchronized'])
  assert not any(stats['False']['synchronized'])


def test_sync_bn_moves_toward_the_global_batch_statistics(stats):
  s = {k: np.array(v) for k, v in stats['True'].items() if k != 'synchronized'}
  # One training step from mean 0 / variance 1 with momentum MOMENTUM.
  np.testing.assert_allclose(s['moving_mean'], (1 - MOMENTUM) * s['global_mean'],
                             rtol=1e-3, atol=1e-5)
  np.testing.assert_allclose(s['moving_variance'],
                             MOMENTUM + (1 - MOMENTUM) * s['global_variance'],
                             rtol=1e-3, atol=1e-5)
  # The data make the two rules far apart: global variance >> per-replica variances.
  local = s['replica_variances'].mean(0)
  assert np.median(s['global_variance'] / np.maximum(local, 1e-12)) > 10


def test_without_sync_bn_the_per_replica_statistics_are_averaged(stats):
  s = {k: np.array(v) for k, v in stats['False'].items() if k != 'synchronized'}
  np.testing.assert_allclose(s['moving_variance'],
                             MOMENTUM + (1 - MOMENTUM) * s['replica_variances'].mean(0),
                             rtol=1e-3, atol=1e-5)
  assert not np.allclose(s['moving_variance'],
                         MOMENTUM + (1 - MOMENTUM) * s['global_variance'], rtol=1e-2)
