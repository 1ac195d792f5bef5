"""`task.seed` (core/seeding.py): one seed for data order, augmentation and initialization.

In process: the seed reaches the training data (shuffle + SSD crop + flip) and the
initial weights, and bad settings are one error line. End to end (slow): the same
tools/train.py command with `task.seed` and `task.op_determinism` run twice ends with the
same `final weights sha256`, which is that of the checkpoint it saved (so it is of the
trained weights, which another seed changes: the in-process tests).
"""

import os
import re
import subprocess
import sys
import types

import numpy as np
import pytest
import tensorflow as tf

from official.core import task_factory

from mnv2_det.cli import train as train_cli
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib
from mnv2_det.core import seeding
from mnv2_det.data import shapes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'tools', 'train.py')
EXPERIMENT = 'ssdlite_mnv2_shapes'
FINGERPRINT = re.compile(r'final weights sha256: ([0-9a-f]{64})')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  out = str(tmp_path_factory.mktemp('shapes'))
  shapes.generate(out, num_train=8, num_val=2, seed=3)
  return out


def _overrides(data_dir, extra=()):
  """A tiny run with shuffling, SSD random crop and flip all on, so the seed matters."""
  return ','.join([
      f'task.train_data.annotation_file={data_dir}/annotations/instances_train.json',
      f'task.train_data.image_dir={data_dir}/train',
      f'task.validation_data.annotation_file={data_dir}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data_dir}/val',
      'task.train_data.global_batch_size=4', 'task.train_data.shuffle_buffer_size=8',
      'task.train_data.parser.aug_ssd_random_crop=true',
      'task.train_data.parser.aug_random_flip=true',
      'task.model.input_size=[64,64,3]', 'task.model.backbone.mnv2_det.depth_multiplier=0.35',
      'trainer.train_steps=4', 'trainer.steps_per_loop=2', 'trainer.summary_interval=2',
      'trainer.checkpoint_interval=4', 'runtime.distribution_strategy=one_device',
      'runtime.num_gpus=0', *extra])


def _params(data_dir, *extra):
  params = params_lib.build_params(EXPERIMENT, params_override=_overrides(data_dir, extra))
  params.lock()
  return params


def test_seed_becomes_the_data_seed_unless_that_is_set(data_dir):
  unseeded = _params(data_dir)
  assert seeding.apply(unseeded) is unseeded
  seeded = seeding.apply(_params(data_dir, 'task.seed=5'))
  assert seeded.task.train_data.seed == 5 and seeded.task.seed == 5
  explicit = seeding.apply(_params(data_dir, 'task.seed=5', 'task.train_data.seed=9'))
  assert explicit.task.train_data.seed == 9


def _first_batches(params, count=2):
  task = task_factory.get_task(params.task)
  batches = []
  for images, labels in task.build_inputs(params.task.train_data).take(count):
    batches.append((images.numpy(), labels['gt_boxes'].numpy(), labels['source_id'].numpy()))
  return batches


def test_seed_fixes_order_and_augmentation_of_the_training_data(data_dir):
  """Same task.seed: the same images in the same order with the same crops and flips
  (boxes equal); another seed: other batches."""
  a, b, c = (_first_batches(seeding.apply(_params(data_dir, f'task.seed={s}')))
             for s in (11, 11, 12))
  for (ia, ba, sa), (ib, bb, sb) in zip(a, b):
    np.testing.assert_array_equal(sa, sb)
    np.testing.assert_array_equal(ba, bb)
    np.testing.assert_array_equal(ia, ib)
  assert not all(np.array_equal(x[1], y[1]) for x, y in zip(a, c))


def _initial_weights(params):
  model = task_factory.get_task(params.task).build_model()
  return [v.numpy() for v in model.variables]


def test_seed_fixes_the_initial_weights(data_dir):
  a, b, c = (_initial_weights(seeding.apply(_params(data_dir, f'task.seed={s}')))
             for s in (21, 21, 22))
  assert len(a) == len(b) > 100
  for x, y in zip(a, b):
    np.testing.assert_array_equal(x, y)
  random_kernels = [i for i, x in enumerate(a) if x.ndim == 4]
  assert all(not np.array_equal(a[i], c[i]) for i in random_kernels)


@pytest.mark.parametrize('override, message', [
    ('task.op_determinism=true', 'task.op_determinism needs task.seed'),
    ('task.seed=-1', 'task.seed must be an integer in [0, 2147483647]'),
    ('task.seed=true', 'task.seed must be an integer'),
])
def test_bad_seed_settings_are_one_error_line(data_dir, tmp_path, capsys, override,
                                              message):
  flag_values = types.SimpleNamespace(
      experiment=EXPERIMENT, config_file=[], mode='train',
      params_override=_overrides(data_dir, [override]), model_dir=str(tmp_path / 'run'))
  assert train_cli.run(flag_values) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith('error: ') and message in err[0], err
  assert not os.path.exists(tmp_path / 'run')  # Refused before anything is written.


def _fingerprint(model_dir, data_dir, *extra):
  cmd = [sys.executable, TRAIN, '--experiment', EXPERIMENT, '--mode', 'train',
         '--model_dir', str(model_dir), '--params_override', _overrides(data_dir, extra)]
  result = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                          env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'step 4/4' in result.stdout
  found = FINGERPRINT.findall(result.stdout)
  assert len(found) == 1, result.stdout[-2000:]
  assert tf.train.latest_checkpoint(str(model_dir)).endswith('ckpt-4')
  return found[0]


@pytest.mark.slow  # two tools/train.py runs
def test_same_command_twice_gives_the_same_weights(data_dir, tmp_path):
  seeded = ('task.seed=7', 'task.op_determinism=true')
  first = _fingerprint(tmp_path / 'a', data_dir, *seeded)
  second = _fingerprint(tmp_path / 'b', data_dir, *seeded)
  assert first == second
  # The print is the fingerprint of the trained weights the run saved, not a constant.
  saved = loading.load_model(str(tmp_path / 'a'))
  assert train_cli.weights_fingerprint(saved.model) == first
  initial = _initial_weights(seeding.apply(_params(data_dir, seeded[0])))  # no op det.
  assert any(not np.array_equal(x, v.numpy()) for x, v in zip(initial, saved.model.variables))
