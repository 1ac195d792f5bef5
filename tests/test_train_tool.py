"""tools/train.py end to end in subprocesses: BN updates reach the checkpoint, resume
after kill -9, refusal of a foreign model_dir, NaN stop, EMA, mixed precision. (Frozen
BN staying at init is checked in tests/test_eval_plots.py's early-stopping run.)"""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.data import shapes
from mnv2_det.core import loading
from mnv2_det.core import model_dir as model_dir_lib
from mnv2_det.cli import export as export_cli
from mnv2_det.cli import eval as eval_cli
from mnv2_det.cli import predict
from mnv2_det.cli import train as train_cli

pytestmark = pytest.mark.slow  # tools/train.py subprocesses (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = os.path.join(ROOT, 'tools', 'train.py')
PROBE = os.path.join(ROOT, 'tests', 'train_probe.py')


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  out = tmp_path_factory.mktemp('shapes')
  shapes.generate(str(out), num_train=24, num_val=8, seed=3)
  return str(out)


def _overrides(data_dir, steps, extra=''):
  items = [
      f'task.train_data.annotation_file={data_dir}/annotations/instances_train.json',
      f'task.train_data.image_dir={data_dir}/train',
      f'task.validation_data.annotation_file={data_dir}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data_dir}/val',
      'task.train_data.global_batch_size=4', 'task.validation_data.global_batch_size=4',
      'task.model.input_size=[96,96,3]',
      'task.model.backbone.mnv2_det.depth_multiplier=0.35',
      f'trainer.train_steps={steps}', 'trainer.steps_per_loop=2',
      'trainer.summary_interval=2', 'trainer.checkpoint_interval=2',
      'runtime.distribution_strategy=one_device', 'runtime.num_gpus=0',
  ]
  if extra:
    items.append(extra)
  return ','.join(items)


def _train(model_dir, overrides, mode='train', wait=True):
  cmd = [sys.executable, TRAIN, '--experiment', 'ssdlite_mnv2_shapes', '--mode', mode,
         '--model_dir', str(model_dir), '--params_override', overrides]
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2')
  if not wait:
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=env)
  return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)


def _latest_step(model_dir):
  latest = tf.train.latest_checkpoint(model_dir)
  return int(latest.rsplit('-', 1)[1]) if latest else 0


def _bn_values(checkpoint):
  reader = tf.train.load_checkpoint(checkpoint)
  names = [n for n in reader.get_variable_to_shape_map()
           if n.endswith(('moving_mean/.ATTRIBUTES/VARIABLE_VALUE',
                          'moving_variance/.ATTRIBUTES/VARIABLE_VALUE'))]
  return {n: reader.get_tensor(n) for n in names}


def _bn_layer_count_changed(checkpoint):
  values = _bn_values(checkpoint)
  unchanged = [n for n, v in values.items()
               if np.array_equal(v, np.zeros_like(v) if 'moving_mean' in n else np.ones_like(v))]
  return len(values), unchanged


@pytest.fixture(scope='module')
def trained_dir(tmp_path_factory, data_dir):
  """A model_dir after 4 training steps, and the training run's result."""
  model_dir = tmp_path_factory.mktemp('trained') / 'run'
  result = _train(model_dir, _overrides(data_dir, 4))
  assert result.returncode == 0, result.stderr[-3000:]
  return model_dir, result


def test_every_bn_statistic_moves_in_the_checkpoint(trained_dir):
  model_dir, result = trained_dir
  total, unchanged = _bn_layer_count_changed(tf.train.latest_checkpoint(model_dir))
  # backbone 52 BN + 4 extra layers x 3 + 6 levels x 2 head branches = 76 layers.
  assert total == 2 * 76
  assert unchanged == []
  assert 'img/s' in result.stdout and 'ETA' in result.stdout and 'step 4/4' in result.stdout


def test_foreign_model_dir_is_refused(trained_dir, data_dir):
  model_dir, _ = trained_dir
  other = _train(model_dir, _overrides(data_dir, 8, 'task.model.num_classes=9'))
  assert other.returncode == 2
  assert 'holds a checkpoint of a different model' in other.stderr
  assert 'task.model.num_classes was 6, now 9' in other.stderr
  assert 'Traceback' not in other.stderr


def test_bad_params_override_is_one_line(tmp_path, data_dir):
  result = _train(tmp_path / 'x', 'task.model.no_such_field=3')
  assert result.returncode == 2
  assert 'error:' in result.stderr and 'Traceback' not in result.stderr


# Divergence only after the first checkpoint: learning rate 1e-4 (warmup) and 1e-3 for
# steps 1-2, then 1e30 (Adam moves every weight by ~lr) from step 3, so step 3's update
# overflows the weights and step 4's loss is NaN. The checkpoint of step 2 exists first.
DIVERGE_OVERRIDES = ','.join([
    'trainer.optimizer_config.warmup.linear.warmup_steps=1',
    'trainer.optimizer_config.learning_rate.type=stepwise',
    'trainer.optimizer_config.learning_rate.stepwise.boundaries=[1]',
    'trainer.optimizer_config.learning_rate.stepwise.values=[0.001,1e30]',
])


def _all_finite(checkpoint):
  reader = tf.train.load_checkpoint(checkpoint)
  floats = 0
  for name in reader.get_variable_to_shape_map():
    value = reader.get_tensor(name)
    if isinstance(value, np.ndarray) and value.dtype.kind == 'f':
      floats += 1
      assert np.all(np.isfinite(value)), name
  return floats


def test_nan_loss_after_a_checkpoint_stops_and_keeps_it(tmp_path, data_dir):
  model_dir = tmp_path / 'nan'
  result = _train(model_dir, _overrides(data_dir, 8, DIVERGE_OVERRIDES))
  assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
  # Steps 1-2 trained with a finite loss and were checkpointed before the divergence.
  assert 'step 2/8 | loss ' in result.stdout and 'step 4/8' not in result.stdout
  good = str(model_dir / 'ckpt-2')
  assert tf.train.latest_checkpoint(model_dir) == good
  assert tf.train.get_checkpoint_state(model_dir).all_model_checkpoint_paths == [good]
  reader = tf.train.load_checkpoint(good)
  assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == 2
  assert _all_finite(good) > 300  # model weights, BN statistics and Adam slots
  error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1, result.stderr[-2000:]
  assert 'non-finite loss' in error[0] and 'in steps 3..4' in error[0]
  # NaN itself is caught (a `loss > bound` test alone would let NaN through), not only inf.
  assert "'total_loss': nan" in error[0], error[0]
  assert 'the weights of step 4 were not saved' in error[0]
  assert f'last good checkpoint: {good}' in error[0]
  assert 'Traceback' not in result.stderr


def test_ema_best_checkpoint_holds_the_averaged_weights(tmp_path, data_dir):
  """Model Garden's trainer evaluates on the EMA weights (swap_weights at eval begin)
  and exports best_ckpt/ before swapping back: best_ckpt's model weights are the
  averages that the regular checkpoint keeps in its `average` slots."""
  model_dir = tmp_path / 'ema'
  result = _train(model_dir, _overrides(
      data_dir, 2, 'trainer.optimizer_config.ema.average_decay=0.9,'
      'trainer.validation_interval=2'), mode='train_and_eval')
  assert result.returncode == 0, result.stderr[-3000:]
  latest = _checkpoint_values(str(model_dir / 'ckpt-2'))
  best_prefix = tf.train.latest_checkpoint(model_dir / 'best_ckpt')
  assert best_prefix is not None and best_prefix.endswith('ckpt-2')
  best = _checkpoint_values(best_prefix)
  suffix = '/.ATTRIBUTES/VARIABLE_VALUE'
  average = '/.OPTIMIZER_SLOT/optimizer/average' + suffix
  trainable = [n[:-len(average)] + suffix for n in latest if n.endswith(average)]
  assert len(trainable) > 200
  for name in trainable:  # swapped: best model = average, best average slot = weights
    np.testing.assert_allclose(best[name], latest[name.replace(suffix, average)],
                               rtol=1e-6, atol=1e-7, err_msg=name)
    np.testing.assert_allclose(best[name.replace(suffix, average)], latest[name],
                               rtol=1e-6, atol=1e-7, err_msg=name)
  # The averages are not the weights (shadows start at 0, dynamic decay 2/11, 3/12).
  kernel = 'backbone/layer_with_weights-0/kernel' + suffix
  assert np.abs(best[kernel] - latest[kernel]).max() > 1e-3 * np.abs(latest[kernel]).max()
  # Statistics are not averaged: BN moving statistics are the same in both.
  moving = [n for n in latest if n.endswith(('moving_mean' + suffix, 'moving_variance' + suffix))]
  assert len(moving) == 2 * 76
  for name in moving:
    np.testing.assert_array_equal(best[name], latest[name], err_msg=name)
  # The tools' --best reads those averaged weights.
  loaded = loading.load_model(str(model_dir), 'ssdlite_mnv2_shapes', best=True)
  np.testing.assert_allclose(loaded.model.backbone.get_layer('Conv1').kernel.numpy(),
                             latest[kernel.replace(suffix, average)], rtol=1e-6, atol=1e-7)


def _probe(model_dir, overrides, probe_output, mode='train', **env):
  """tests/train_probe.py: tools/train.py plus its trainer's state at the end."""
  return subprocess.run(
      [sys.executable, PROBE, '--probe_output', str(probe_output), '--experiment',
       'ssdlite_mnv2_shapes', '--mode', mode, '--model_dir', str(model_dir),
       '--params_override', overrides],
      capture_output=True, text=True, timeout=600,
      env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', **env))


# float16: Model Garden's dynamic loss scale starts at 2**15, too high for this model
# (float16 gradients of the first convs overflow above ~1024): it halves on each such
# step, which is skipped, and training proceeds from about step 7 (measured: 6 skips).
@pytest.mark.parametrize('dtype,optimizer,steps', [('float16', 'LossScaleOptimizer', 10),
                                                   ('bfloat16', 'Adam', 2)])
def test_mixed_precision_from_the_config(tmp_path, data_dir, dtype, optimizer, steps):
  model_dir = tmp_path / dtype
  # bfloat16 with oneDNN on an AVX512-BF16 / AMX CPU (Intel Xeon, TF 2.20): the depthwise
  # kernels of the last two extra layers (1x1 maps) came out NaN after 2 steps in about
  # half the runs, never with TF_ENABLE_ONEDNN_OPTS=0 (4 of 4); tools/train.py warns.
  env = {'TF_ENABLE_ONEDNN_OPTS': '0'} if dtype == 'bfloat16' else {}
  result = _probe(model_dir, _overrides(data_dir, steps,
                                        f'runtime.mixed_precision_dtype={dtype}'),
                  tmp_path / 'probe' / 'state', **env)
  assert result.returncode == 0, result.stderr[-3000:]
  # Model Garden's float16 path wraps the optimizer in a dynamic LossScaleOptimizer.
  assert (f'probe: optimizer {optimizer}, iterations {steps}, compute dtype {dtype}, '
          'variable dtype float32') in result.stdout, result.stdout[-2000:]
  losses = re.findall(r'^step \d+/\d+ \| loss (\S+) \(cls_loss (\S+), box_loss (\S+)\)',
                      result.stdout, re.M)
  assert len(losses) == steps // 2
  assert all(np.isfinite(float(x)) for line in losses for x in line), losses
  reader = tf.train.load_checkpoint(str(model_dir / f'ckpt-{steps}'))
  dtypes = reader.get_variable_to_dtype_map()
  weights = [n for n in dtypes if n.endswith('kernel/.ATTRIBUTES/VARIABLE_VALUE')]
  assert len(weights) > 50
  floating = [n for n, d in dtypes.items() if d.is_floating]
  assert {dtypes[n] for n in floating} == {tf.float32}, {
      n: dtypes[n] for n in floating if dtypes[n] != tf.float32}
  assert all(np.all(np.isfinite(reader.get_tensor(n))) for n in floating)
  loss_scale = {n.split('/')[2]: reader.get_tensor(n) for n in dtypes if 'loss_scale' in n}
  if dtype == 'float16':
    scale, good = float(loss_scale['current_loss_scale']), int(loss_scale['good_steps'])
    skipped = np.log2(2.0 ** 15 / scale)
    # The loss really is scaled: at 2**15 the scaled gradients overflow, so the scale
    # came down (an unscaled loss would keep it at 2**15 with no step skipped).
    assert skipped == int(skipped) and 1 <= skipped < steps, loss_scale
    assert good >= 1, loss_scale  # the last steps applied float16 gradients
    assert skipped + good <= steps, loss_scale
  else:
    assert not loss_scale


def _checkpoint_values(prefix):
  reader = tf.train.load_checkpoint(prefix)
  return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
          if n != '_CHECKPOINTABLE_OBJECT_GRAPH'}


def _fingerprint_line(stdout):
  lines = [l for l in stdout.splitlines() if l.startswith('final weights sha256: ')]
  assert len(lines) == 1, stdout[-2000:]
  return lines[0].split(': ')[1]


def test_resume_after_kill_9(trained_dir, data_dir, tmp_path):
  model_dir, _ = trained_dir
  overrides = _overrides(data_dir, 400)
  proc = _train(model_dir, overrides, wait=False)
  deadline = time.time() + 300
  while time.time() < deadline and _latest_step(model_dir) < 8:
    time.sleep(0.5)
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  killed_at = _latest_step(model_dir)
  assert 8 <= killed_at < 400
  checkpoint = tf.train.latest_checkpoint(model_dir)
  saved = _checkpoint_values(checkpoint)
  slots = [n for n in saved if '/.OPTIMIZER_SLOT/optimizer/' in n]
  trainable = [n for n in saved if n.endswith(('kernel/.ATTRIBUTES/VARIABLE_VALUE',
                                               'bias/.ATTRIBUTES/VARIABLE_VALUE',
                                               'gamma/.ATTRIBUTES/VARIABLE_VALUE',
                                               'beta/.ATTRIBUTES/VARIABLE_VALUE'))]
  # Adam: one m and one v per trainable variable, and they hold trained values.
  assert len(slots) == 2 * len(trainable) > 0
  assert all(np.any(saved[n] != 0) for n in slots if '/optimizer/v/' in n)
  assert int(saved['optimizer/iter/.ATTRIBUTES/VARIABLE_VALUE']) == killed_at

  # Rerun to the checkpoint's step: nothing trains, so what the run ends with is what it
  # restored. tests/train_probe.py is tools/train.py plus a dump of its trainer's state.
  probe = str(tmp_path / 'probe' / 'state')
  rerun = overrides.replace('trainer.train_steps=400', f'trainer.train_steps={killed_at}')
  result = _probe(model_dir, rerun, probe)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f'restored model from {checkpoint}' in result.stdout + result.stderr
  loaded = loading.load_model(checkpoint, 'ssdlite_mnv2_shapes')
  assert _fingerprint_line(result.stdout) == train_cli.weights_fingerprint(loaded.model)
  assert f'probe: optimizer Adam, iterations {killed_at}' in result.stdout
  restored = _checkpoint_values(probe)
  assert sorted(restored) == sorted(saved)
  different = [n for n in saved if not np.array_equal(restored[n], saved[n])]
  assert different == []  # weights, BN statistics, Adam m / v, iterations, global step

  # Training continues from the checkpoint's step counter instead of starting at 0.
  final_steps = killed_at + 2
  result = _train(model_dir, overrides.replace('trainer.train_steps=400',
                                               f'trainer.train_steps={final_steps}'))
  assert result.returncode == 0, result.stderr[-3000:]
  assert _latest_step(model_dir) == final_steps
  assert f'step {final_steps}/{final_steps}' in result.stdout
  assert f'step {killed_at}/' not in result.stdout


@pytest.mark.parametrize('content,field', [
    ('{"images": [', 'JSON'),
    ('{"annotations": [], "categories": [{"id": 1, "name": "a"}]}', 'images'),
])
def test_bad_annotation_file_is_one_line_naming_it(tmp_path, data_dir, content, field):
  bad = tmp_path / 'instances_bad.json'
  bad.write_text(content)
  overrides = _overrides(data_dir, 2).replace(
      f'{data_dir}/annotations/instances_train.json', str(bad))
  result = _train(tmp_path / 'model', overrides)
  assert result.returncode == 2, result.stderr[-2000:]
  assert 'Traceback' not in result.stderr
  error = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(error) == 1 and 'instances_bad.json' in error[0], result.stderr[-2000:]
  assert field.lower() in error[0].lower()


def test_copied_model_dir_needs_no_training_data(trained_dir, data_dir, tmp_path):
  """A model dir copied to an empty folder exports, predicts and evaluates with no
  --experiment and no training annotations anywhere (core/model_dir.py)."""
  model_dir, _ = trained_dir
  with open(model_dir / model_dir_lib.CATEGORIES_FILE, encoding='utf-8') as f:
    table = [(c['id'], c['name']) for c in json.load(f)['categories']]
  assert table == [(i, name) for i, name, _ in shapes.CATEGORIES]
  names = [name for _, name in table]
  copy = tmp_path / 'elsewhere' / 'run'
  shutil.copytree(model_dir, copy)
  hidden = tmp_path / 'hidden'
  hidden.mkdir()
  train_json = os.path.join(data_dir, 'annotations', 'instances_train.json')
  moved = [(train_json, str(hidden / 'train.json')),
           (os.path.join(data_dir, 'train'), str(hidden / 'train'))]
  val_json = os.path.join(data_dir, 'annotations', 'instances_val.json')
  val_dir = os.path.join(data_dir, 'val')
  out = tmp_path / 'out'
  try:
    for src, dst in moved:
      shutil.move(src, dst)
    assert export_cli.main(['saved_model', '--checkpoint', str(copy),
                            '--output', str(out / 'sm')]) == 0
    assert export_cli.main(['tflite', '--checkpoint', str(copy),
                            '--output', str(out / 'm.tflite')]) == 0
    assert predict.main(['--model', str(copy), '--output', str(out / 'pred'),
                         val_dir]) == 0
    with open(out / 'pred' / predict.CATEGORIES_FILE, encoding='utf-8') as f:
      assert [c['name'] for c in json.load(f)] == names
    report_file = str(out / 'report.json')
    assert eval_cli.main(['--checkpoint', str(copy), '--report', report_file,
                          '--params_override',
                          f'task.validation_data.annotation_file={val_json},'
                          f'task.validation_data.image_dir={val_dir}']) == 0
    with open(report_file, encoding='utf-8') as f:
      report = json.load(f)
    assert report['num_images'] == 8 and len(report['per_class']) == len(names)
    with open(out / 'sm' / 'detector.json', encoding='utf-8') as f:
      assert json.load(f)['class_names'] == names
  finally:
    for src, dst in moved:
      if os.path.exists(dst):
        shutil.move(dst, src)
