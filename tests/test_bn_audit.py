"""Tests for mnv2_det.analysis.bn_audit and tools/bn_audit.py (BN statistics audit / recalibration)."""

import hashlib
import json
import os

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml

from official.core import task_factory
from official.core import train_utils

from mnv2_det.analysis import bn_audit
from mnv2_det.cli import bn_audit as bn_audit_cli
from mnv2_det.data import shapes
from mnv2_det.core import checkpoints
from mnv2_det.core import errors
from mnv2_det.core import params as params_lib

EXPERIMENT = 'ssdlite_mnv2_shapes'
NUM_IMAGES = 8
# BN layers: backbone 52 (Conv, expanded_conv 2, 16 expanding blocks x 3, Conv_1),
# feature maps 4 levels x 3 (1x1, depthwise, pointwise), head 6 levels x 2 branches.
NUM_BN_LAYERS = 52 + 12 + 12
# Head layers feed no other BN layer, so leaving them un-updated affects only them.
NEVER_UPDATED = ('head/class_9_depthwise_bn', 'head/box_7_depthwise_bn')
STALE_MEAN = 'backbone/block_3_expand_BN'  # planted: moving_mean + 3 std
STALE_VAR = 'feature_maps/level_6_1x1_bn'  # planted: moving_variance x 20
MEAN_PLANT_STDS = 3.0
VAR_PLANT_FACTOR = 20.0


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  """Tiny experiment (128x128, multiplier 0.35) on 8 + 8 synthetic images; one batch."""
  data = shapes.generate(str(tmp_path_factory.mktemp('shapes')), num_train=NUM_IMAGES,
                         num_val=NUM_IMAGES, seed=7)

  def split(name):
    return {'annotation_file': data[f'{name}_annotations'],
            'image_dir': data[f'{name}_images'], 'global_batch_size': NUM_IMAGES}
  config = str(tmp_path_factory.mktemp('cfg') / 'tiny.yaml')
  with open(config, 'w', encoding='utf-8') as f:
    yaml.safe_dump({'task': {
        'model': {'input_size': [128, 128, 3],
                  'backbone': {'mnv2_det': {'depth_multiplier': 0.35}}},
        'train_data': split('train'), 'validation_data': split('val')}}, f)
  params = params_lib.build_params(EXPERIMENT, config_files=[config])
  task = task_factory.get_task(params.task)
  dataset = bn_audit.audit_dataset(task, params, 'validation')
  return task, params, dataset


@pytest.fixture(scope='module')
def built(setup):
  """One randomly initialized model and its initial weights (built once: slow)."""
  tf_keras.utils.set_random_seed(0)
  model = setup[0].build_model()
  return model, model.get_weights()


@pytest.fixture
def model(built):
  """The shared model, reset to its initial weights (moving stats 0 / 1)."""
  model, weights = built
  model.set_weights(weights)
  return model


def _by_name(model):
  names = bn_audit.layer_names(model)
  return {names[id(layer)]: layer for layer in bn_audit.batch_norm_layers(model)}


def _raw(model, images, training):
  cls, box = model.head(model.feature_maps(model.backbone(images, training=training),
                                           training=training), training=training)
  return [t.numpy() for t in list(cls.values()) + list(box.values())]


def _keras_update(model, images, frozen=()):
  """One training-mode pass with momentum 0: Keras sets moving stats to this batch's.

  Layers named in `frozen` get momentum 1 and keep their initial 0 / 1.
  """
  layers = _by_name(model)
  saved = {name: layer.momentum for name, layer in layers.items()}
  for name, layer in layers.items():
    layer.momentum = 1.0 if name in frozen else 0.0
  _raw(model, images, training=True)
  for name, layer in layers.items():
    layer.momentum = saved[name]


def _eval_vs_train(model, images):
  """Mean over output tensors of RMS(eval - train) / std(train); moving stats kept."""
  layers = bn_audit.batch_norm_layers(model)
  saved = [(l.moving_mean.numpy(), l.moving_variance.numpy()) for l in layers]
  train = _raw(model, images, training=True)
  for layer, (mean, var) in zip(layers, saved):
    layer.moving_mean.assign(mean)
    layer.moving_variance.assign(var)
  evaluation = _raw(model, images, training=False)
  return float(np.mean([np.sqrt(np.mean((t - e)**2) / np.var(t, axis=(0, 1, 2)).mean())
                        for t, e in zip(train, evaluation)]))


def _images(dataset):
  return next(iter(dataset))[0]


def test_fresh_model_never_updated_and_moments_match_brute_force(setup, model):
  dataset = setup[2]
  rows = bn_audit.audit(model, dataset, num_batches=1, eager=True)
  assert len(rows) == NUM_BN_LAYERS
  assert {r.status for r in rows} == {bn_audit.STATUS_NEVER_UPDATED}
  rows = {r.name: r for r in rows}
  images = _images(dataset)
  # Brute force: each BN input recomputed outside the model (functional backbone,
  # subclassed feature maps and head); moving stats are the initial 0 and 1.
  endpoints = model.backbone(images, training=False)
  features = model.feature_maps(endpoints, training=False)
  backbone_tap = tf_keras.Model(model.backbone.inputs,
                                model.backbone.get_layer('block_3_expand_BN').input)
  inputs = {
      'backbone/block_3_expand_BN': backbone_tap(images, training=False),
      'feature_maps/level_6_1x1_bn': model.feature_maps._extra[0][0](endpoints['layer_19']),
      'head/class_4_depthwise_bn': model.head._branches['4'][0][0](features['4']),
  }
  eps = _by_name(model)['head/class_4_depthwise_bn'].epsilon
  for name, x in inputs.items():
    x = x.numpy().astype(np.float64).reshape([-1, x.shape[-1]])
    mean, var = x.mean(0), x.var(0)
    assert rows[name].mean_shift == pytest.approx(
        np.mean(np.abs(mean) / np.sqrt(var + eps)), rel=1e-4), name
    assert rows[name].log_var_ratio == pytest.approx(
        np.mean(np.log((var + eps) / (1.0 + eps))), rel=1e-4, abs=1e-6), name


def test_keras_updated_stats_not_flagged_except_never_updated(setup, model):
  dataset = setup[2]
  _keras_update(model, _images(dataset), frozen=NEVER_UPDATED)
  rows = bn_audit.audit(model, dataset, num_batches=1, eager=True)
  flagged = {r.name: r.status for r in bn_audit.flagged(rows)}
  assert flagged == {name: bn_audit.STATUS_NEVER_UPDATED for name in NEVER_UPDATED}


def test_planted_stale_stats_flagged_then_recalibrated(setup, model):
  dataset = setup[2]
  images = _images(dataset)
  _keras_update(model, images)  # nothing flagged then (previous test)
  layers = _by_name(model)
  gamma = {name: layer.gamma.numpy() for name, layer in layers.items()}
  # Downstream layer first: x20 variance reads as log ratio -log(20) ~ -3.0 while
  # nothing upstream is planted (the layer's inputs are unchanged).
  var_layer = layers[STALE_VAR]
  var_layer.moving_variance.assign(var_layer.moving_variance * VAR_PLANT_FACTOR)
  rows = {r.name: r for r in bn_audit.audit(model, dataset, 1, eager=True)}
  assert rows[STALE_VAR].status == bn_audit.STATUS_STALE
  assert rows[STALE_VAR].log_var_ratio == pytest.approx(-np.log(VAR_PLANT_FACTOR),
                                                        abs=0.1)
  # Then upstream: +3 std on the mean reads as a shift of ~3 (data std ~ moving std
  # here: n = 8 images x 16 x 16 positions, so Bessel's factor is ~1).
  mean_layer = layers[STALE_MEAN]
  mean_layer.moving_mean.assign(mean_layer.moving_mean +
                                MEAN_PLANT_STDS * tf.sqrt(mean_layer.moving_variance))
  rows = {r.name: r for r in bn_audit.audit(model, dataset, 1, eager=True)}
  assert rows[STALE_MEAN].status == rows[STALE_VAR].status == bn_audit.STATUS_STALE
  assert rows[STALE_MEAN].mean_shift == pytest.approx(MEAN_PLANT_STDS, rel=0.02)
  error_before = _eval_vs_train(model, images)
  assert error_before > 0.3
  assert bn_audit.recalibrate(model, dataset, num_batches=1, eager=True) == 1
  assert not bn_audit.flagged(bn_audit.audit(model, dataset, 1, eager=True))
  error_after = _eval_vs_train(model, images)
  assert error_after < 0.05 and error_after < error_before / 10
  for name, layer in layers.items():  # only moving statistics change
    np.testing.assert_array_equal(layer.gamma.numpy(), gamma[name])


def _trainer_checkpoint(task, params, model, model_dir):
  """Saves like the Model Garden trainer: global_step, model, optimizer (with slots)."""
  optimizer = task.create_optimizer(params.trainer.optimizer_config, params.runtime)
  variables = model.trainable_variables
  optimizer.apply_gradients(zip([tf.ones_like(v) * 1e-3 for v in variables], variables))
  checkpoint = tf.train.Checkpoint(global_step=tf.Variable(7, dtype=tf.int64), model=model,
                                   optimizer=optimizer, **model.checkpoint_items)
  manager = tf.train.CheckpointManager(checkpoint, model_dir, max_to_keep=1)
  train_utils.serialize_config(params, model_dir)
  return manager.save(checkpoint_number=7)


def test_write_checkpoint_keeps_structure(setup, built, model, tmp_path):
  task, params, dataset = setup
  source = _trainer_checkpoint(task, params, model, str(tmp_path / 'run'))
  # Traced (tf.function) path, as the CLI's default; the eager path agrees.
  bn_audit.recalibrate(model, dataset, 1, eager=True)
  eager = [l.moving_variance.numpy() for l in bn_audit.batch_norm_layers(model)]
  bn_audit.recalibrate(model, dataset, 1, eager=False)
  for layer, expected in zip(bn_audit.batch_norm_layers(model), eager):
    np.testing.assert_allclose(layer.moving_variance.numpy(), expected, rtol=1e-4)
  out = str(tmp_path / 'recal')
  prefix = bn_audit.write_checkpoint(model, source, out,
                                     os.path.join(str(tmp_path / 'run'), 'params.yaml'))
  assert prefix == os.path.join(out, 'ckpt-7') == tf.train.latest_checkpoint(out)
  assert os.path.exists(os.path.join(out, 'params.yaml'))
  old, new = tf.train.load_checkpoint(source), tf.train.load_checkpoint(prefix)
  assert old.get_variable_to_shape_map() == new.get_variable_to_shape_map()
  changed = {k for k in old.get_variable_to_shape_map()
             if not np.array_equal(old.get_tensor(k), new.get_tensor(k))}
  # Exactly the used BN layers' moving statistics changed (slots, step, graph kept).
  assert changed and all(k.endswith(('moving_mean/.ATTRIBUTES/VARIABLE_VALUE',
                                     'moving_variance/.ATTRIBUTES/VARIABLE_VALUE'))
                         for k in changed)
  assert len(changed) == 2 * NUM_BN_LAYERS
  layers = bn_audit.batch_norm_layers(model)
  recalibrated = [layer.moving_variance.numpy() for layer in layers]
  model.set_weights(built[1])  # back to moving variance 1, then read the new checkpoint
  checkpoints.restore_model(model, prefix)
  for layer, expected in zip(layers, recalibrated):
    np.testing.assert_array_equal(layer.moving_variance.numpy(), expected)
  with pytest.raises(ValueError, match='already holds a checkpoint'):
    bn_audit.write_checkpoint(model, source, out)
  with pytest.raises(ValueError, match='never overwrites'):
    bn_audit.write_checkpoint(model, source, str(tmp_path / 'run'))


def _digest(folder):
  h = hashlib.sha256()
  for name in sorted(os.listdir(folder)):
    with open(os.path.join(folder, name), 'rb') as f:
      h.update(name.encode() + f.read())
  return h.hexdigest()


def test_cli_audit_and_recalibrate(setup, model, tmp_path, capsys):
  task, params, _ = setup
  model_dir = str(tmp_path / 'run')
  _trainer_checkpoint(task, params, model, model_dir)  # fresh BN: never updated
  digest = _digest(model_dir)
  out, report_path = str(tmp_path / 'recal'), str(tmp_path / 'bn.json')
  argv = ['--experiment', EXPERIMENT, '--checkpoint', model_dir, '--data', 'train',
          '--num_batches', '1', '--eager', '--report', report_path]
  assert bn_audit_cli.main(argv + ['--recalibrate']) == errors.ERROR_EXIT_CODE
  assert capsys.readouterr().err.startswith('error: --recalibrate needs --output_dir')
  assert bn_audit_cli.main(argv + ['--recalibrate', '--output_dir', out]) == 0
  text = capsys.readouterr().out
  assert 'never-updated' in text and 'after recalibration' in text
  with open(report_path, encoding='utf-8') as f:
    report = json.load(f)
  assert report['num_flagged'] == NUM_BN_LAYERS
  assert report['num_flagged_after'] == 0
  assert report['recalibrated_checkpoint'] == os.path.join(out, 'ckpt-7')
  assert _digest(model_dir) == digest  # the input is untouched
  # The new folder reads as a model_dir, like the source.
  assert checkpoints.resolve_checkpoint(out) == (os.path.join(out, 'ckpt-7'),
                                              os.path.join(out, 'params.yaml'))
