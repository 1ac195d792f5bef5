"""Tests for mnv2_det.weights: Keras .h5, TF1 slim and TF2 checkpoints, and their errors.

Every weights file is written here from random values (no downloads). BN statistics are
random and far from their defaults (variance in [0.5, 2], mean ~ N(0, 0.1)), so a swapped or
skipped variable changes the outputs. The slim reference is an independent TF1 graph built
with tf_slim in slim's scopes, not through our name table.
"""

import os
import shutil

import h5py
import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import tf_slim as slim
from tensorflow.python.framework import ops as tf_ops

import mnv2_det  # registers the 'mnv2_det' backbone builder
from mnv2_det import weights as weights_lib
from mnv2_det.configs import backbones as backbone_cfg
from mnv2_det.modeling.backbone import MobileNetV2Backbone
from official.vision.configs import common
from official.vision.modeling.backbones import factory

IMAGE_SIZE = 224
ENDPOINTS = ['layer_19', 'layer_15/expansion_output']
# keras.applications names of the same tensors as our slim-named endpoints.
KERAS_ENDPOINTS = {'layer_19': 'out_relu', 'layer_15/expansion_output': 'block_13_expand_relu'}
TOLERANCE = 1e-4
# Paper Table 2 (t expansion, c channels, n repeats, s stride of the first repeat).
V2_BLOCKS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1)]
BN_EPSILON = 1e-3


def _random_value(name, shape, rng):
  """Random float32 value for a variable called `name`, by kind (kernel, gamma, ...)."""
  shape = list(shape)
  if 'moving_variance' in name:
    value = rng.uniform(0.5, 2.0, shape)
  elif 'moving_mean' in name:
    value = rng.normal(0.0, 0.1, shape)
  elif 'gamma' in name:
    value = rng.uniform(0.5, 1.5, shape)
  elif 'beta' in name or 'bias' in name:
    value = rng.normal(0.0, 0.1, shape)
  else:  # He-normal kernel; fan-in is every axis but the last (depthwise: 3*3*1).
    value = rng.normal(0.0, 1.0, shape) * np.sqrt(2.0 / np.prod(shape[:-1]))
  return value.astype(np.float32)


def _randomize_keras(model, seed):
  rng = np.random.default_rng(seed)
  model.set_weights([_random_value(w.name, w.shape, rng) for w in model.weights])


def _images(seed, size=IMAGE_SIZE):
  return np.random.default_rng(seed).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)


def _snapshot(model):
  return [w.numpy().copy() for w in model.weights]


def _assert_unchanged(model, snapshot):
  for w, before in zip(model.weights, snapshot):
    np.testing.assert_array_equal(w.numpy(), before, err_msg=w.name)


def _max_diff(outputs, refs):
  return {k: float(np.max(np.abs(np.asarray(outputs[k]) - refs[k]))) for k in refs}


def _keras_h5(path, alpha, include_top, seed):
  """Random keras.applications MobileNetV2 saved as .h5; returns its endpoint function."""
  model = tf_keras.applications.MobileNetV2(
      input_shape=(IMAGE_SIZE, IMAGE_SIZE, 3), alpha=alpha, include_top=include_top,
      weights=None)
  _randomize_keras(model, seed)
  model.save_weights(path)
  return tf_keras.Model(model.input, {k: model.get_layer(v).output
                                      for k, v in KERAS_ENDPOINTS.items()})


def _write_tf1_checkpoint(prefix, values):
  """Writes `{variable name: array}` as a name-keyed (TF1 Saver style) V2 checkpoint.

  `SaveV2` is the op `tf.compat.v1.train.Saver` runs; calling it eagerly skips building a
  graph of variables.
  """
  names = sorted(values)
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[values[n] for n in names])
  return prefix


def _slim_mobilenet_v2(images):
  """slim-scoped MobileNetV2 at depth 1.0 in inference mode; returns ENDPOINTS tensors.

  `updates_collections=None` selects slim's fused batch norm, whose code path does not need
  the legacy Keras layers missing from this TF; in inference mode both compute
  `gamma * (x - moving_mean) / sqrt(moving_variance + eps) + beta`.
  """
  endpoints = {}
  with slim.arg_scope([slim.conv2d, slim.separable_conv2d], normalizer_fn=slim.batch_norm,
                      activation_fn=tf.nn.relu6, padding='SAME'), \
       slim.arg_scope([slim.batch_norm], is_training=False, center=True, scale=True,
                      epsilon=BN_EPSILON, updates_collections=None), \
       tf.compat.v1.variable_scope('MobilenetV2'):
    net = slim.conv2d(images, 32, [3, 3], stride=2, scope='Conv')
    in_depth, block, layer = 32, 0, 2
    for expansion, depth, repeats, first_stride in V2_BLOCKS:
      for r in range(repeats):
        stride = first_stride if r == 0 else 1
        scope = 'expanded_conv' if block == 0 else f'expanded_conv_{block}'
        with tf.compat.v1.variable_scope(scope):
          shortcut = net
          if expansion > 1:
            net = slim.conv2d(net, in_depth * expansion, [1, 1], scope='expand')
            endpoints[f'layer_{layer}/expansion_output'] = net
          net = slim.separable_conv2d(net, None, [3, 3], depth_multiplier=1, stride=stride,
                                      scope='depthwise')
          net = slim.conv2d(net, depth, [1, 1], activation_fn=None, scope='project')
          if stride == 1 and in_depth == depth:
            net = net + shortcut
        in_depth, block, layer = depth, block + 1, layer + 1
    endpoints['layer_19'] = slim.conv2d(net, 1280, [1, 1], scope='Conv_1')
  return {k: endpoints[k] for k in ENDPOINTS}


@pytest.fixture(scope='module')
def workdir(tmp_path_factory):
  return tmp_path_factory.mktemp('weights')


@pytest.fixture(scope='module')
def backbone():
  """Full-depth backbone with both endpoints; every test's load overwrites all its weights."""
  return MobileNetV2Backbone(input_specs=[None, None, None, 3], endpoints=ENDPOINTS)


@pytest.fixture(scope='module')
def keras_file(workdir):
  """(h5 path, images, keras endpoint values) of a random alpha-1.0 no-top model."""
  path = str(workdir / 'mnv2_no_top.h5')
  endpoints_fn = _keras_h5(path, alpha=1.0, include_top=False, seed=1)
  images = _images(seed=2)
  refs = {k: v.numpy() for k, v in endpoints_fn(images).items()}
  return path, images, refs


@pytest.fixture(scope='module')
def slim_file(workdir):
  """(checkpoint prefix, {name: value}, images, slim endpoint values) of a random slim net."""
  images = _images(seed=3)
  rng = np.random.default_rng(4)
  # tf_slim 1.1 tests `isinstance(x, ops.Tensor)`, a name TF 2.20 dropped; restore it while
  # the reference graph is built.
  with pytest.MonkeyPatch.context() as patch, tf.Graph().as_default():
    patch.setattr(tf_ops, 'Tensor', tf.Tensor, raising=False)
    outputs = _slim_mobilenet_v2(tf.constant(images))
    variables = tf.compat.v1.global_variables()
    values = {v.op.name: _random_value(v.op.name, v.shape.as_list(), rng) for v in variables}
    # One feed of every initial value: per-variable session runs would grow the graph.
    feeds = {v.initial_value: values[v.op.name] for v in variables}
    with tf.compat.v1.Session() as sess:
      sess.run(tf.compat.v1.global_variables_initializer(), feed_dict=feeds)
      refs = sess.run(outputs)
      prefix = tf.compat.v1.train.Saver().save(sess, str(workdir / 'slim' / 'model.ckpt'),
                                               write_meta_graph=False)
  return prefix, values, images, refs


def test_keras_h5_matches_keras_applications(backbone, keras_file):
  path, images, refs = keras_file
  report = weights_lib.load_backbone_weights(backbone, path)
  # 52 conv/depthwise kernels + 52 BN layers x 4 = 260 variables, all used (no-top file).
  assert report['format'] == 'keras_h5'
  assert report['num_variables'] == len(backbone.weights) == 260
  assert report['num_unused'] == 0
  diffs = _max_diff(backbone(images), refs)
  print('keras h5 max abs diff', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs


def test_keras_h5_with_top_ignores_classifier(workdir):
  path = str(workdir / 'mnv2_035_top.h5')
  endpoints_fn = _keras_h5(path, alpha=0.35, include_top=True, seed=5)
  images = _images(seed=6)
  model = MobileNetV2Backbone(input_specs=[None, None, None, 3], depth_multiplier=0.35,
                              endpoints=ENDPOINTS)
  report = weights_lib.load_backbone_weights(model, path)
  assert report['num_unused'] == 2  # the 'predictions' Dense kernel and bias
  diffs = _max_diff(model(images), {k: v.numpy() for k, v in endpoints_fn(images).items()})
  print('keras h5 alpha 0.35 with top max abs diff', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs


@pytest.mark.parametrize('outer_scope', ['', 'FeatureExtractor/'])
def test_tf1_slim_checkpoint_matches_slim_graph(backbone, slim_file, workdir, outer_scope):
  prefix, values, images, refs = slim_file
  if outer_scope:  # OD API layout: the same variables under an outer scope.
    prefix = _write_tf1_checkpoint(str(workdir / 'od' / 'model.ckpt'),
                                   {outer_scope + k: v for k, v in values.items()})
  report = weights_lib.load_backbone_weights(backbone, prefix)
  assert report['format'] == 'tf1_slim'
  assert report['scope'] == outer_scope + 'MobilenetV2/'
  assert report['num_variables'] == 260 and report['num_unused'] == 0
  diffs = _max_diff(backbone(images), refs)
  print(f'slim checkpoint ({outer_scope or "plain"}) max abs diff', diffs)
  assert max(diffs.values()) <= TOLERANCE, diffs


def test_slim_name_table():
  # Golden names, written out from slim's scopes: layer_5 is keras block_3 = expanded_conv_3.
  name = weights_lib.slim_variable_name
  assert name('Conv1', 'kernel') == 'MobilenetV2/Conv/weights'
  assert name('bn_Conv1', 'moving_variance') == 'MobilenetV2/Conv/BatchNorm/moving_variance'
  assert name('expanded_conv_depthwise', 'depthwise_kernel') == (
      'MobilenetV2/expanded_conv/depthwise/depthwise_weights')
  assert name('block_3_project_BN', 'gamma') == (
      'MobilenetV2/expanded_conv_3/project/BatchNorm/gamma')
  with pytest.raises(ValueError, match="'predictions' has no slim"):
    name('predictions', 'kernel')
  assert name('Conv_1_bn', 'beta', 'FeatureExtractor/MobilenetV2/') == (
      'FeatureExtractor/MobilenetV2/Conv_1/BatchNorm/beta')


def test_tf2_checkpoint_round_trip(backbone, keras_file, workdir):
  path, images, refs = keras_file
  weights_lib.load_backbone_weights(backbone, path)
  expected = _snapshot(backbone)
  wrapper = tf.Module()
  wrapper.backbone = backbone  # a detector-like parent: saved as model/backbone
  prefixes = {
      'backbone': tf.train.Checkpoint(backbone=backbone).write(str(workdir / 'tf2_a' / 'ck')),
      # A checkpoint's .index file names it as well as its prefix.
      'model': tf.train.Checkpoint(model=backbone).write(str(workdir / 'tf2_b' / 'ck')) +
               '.index',
      'model/backbone': tf.train.Checkpoint(model=wrapper).write(str(workdir / 'tf2_c' / 'ck')),
  }
  backbone.save_weights(str(workdir / 'tf2_d' / 'ck'))
  prefixes[''] = str(workdir / 'tf2_d')  # a directory: its latest checkpoint is used
  rng = np.random.default_rng(7)
  for scope, prefix in prefixes.items():
    _randomize_keras(backbone, seed=int(rng.integers(1000)))
    report = weights_lib.load_backbone_weights(backbone, prefix)
    assert (report['format'], report['scope'], report['num_variables']) == (
        'tf2_checkpoint', scope, 260), report
    _assert_unchanged(backbone, expected)
  diffs = _max_diff(backbone(images), refs)
  assert max(diffs.values()) <= TOLERANCE, diffs

  # A truncated backbone reads its layers from the full checkpoint, as Checkpoint.restore.
  small = MobileNetV2Backbone(input_specs=[None, None, None, 3], endpoints=['layer_4'])
  report = weights_lib.load_backbone_weights(small, prefixes['backbone'])
  assert report['num_variables'] == len(small.weights)
  restored = MobileNetV2Backbone(input_specs=[None, None, None, 3], endpoints=['layer_4'])
  status = tf.train.Checkpoint(backbone=restored).read(prefixes["backbone"])
  status.expect_partial().assert_existing_objects_matched()
  for ours, theirs in zip(small.weights, restored.weights):
    np.testing.assert_array_equal(ours.numpy(), theirs.numpy(), err_msg=ours.name)

  # ...while the full backbone cannot load from the truncated one: a clear missing variable.
  small_prefix = tf.train.Checkpoint(backbone=small).write(str(workdir / 'tf2_small' / 'ck'))
  snapshot = _snapshot(backbone)
  with pytest.raises(ValueError, match=r'block_3_expand/kernel.*is missing'):
    weights_lib.load_backbone_weights(backbone, small_prefix)
  _assert_unchanged(backbone, snapshot)


def test_missing_h5_variable_is_named_and_nothing_loads(backbone, keras_file, workdir):
  path = str(workdir / 'missing.h5')
  shutil.copy(keras_file[0], path)
  layer, weight = 'block_16_project_BN', 'block_16_project_BN/moving_variance:0'
  with h5py.File(path, 'a') as f:  # drop the very last BN statistic from data and index
    del f[layer][weight]
    names = [n for n in f[layer].attrs['weight_names'] if n != weight.encode()]
    f[layer].attrs['weight_names'] = names
  snapshot = _snapshot(backbone)
  with pytest.raises(ValueError, match=r'block_16_project_BN/moving_variance.* is missing'):
    weights_lib.load_backbone_weights(backbone, path)
  _assert_unchanged(backbone, snapshot)  # earlier layers were valid but not assigned


def test_missing_slim_variable_names_both_names(backbone, slim_file, workdir):
  values = dict(slim_file[1])
  del values['MobilenetV2/expanded_conv_5/depthwise/BatchNorm/gamma']
  prefix = _write_tf1_checkpoint(str(workdir / 'slim_missing' / 'model.ckpt'), values)
  snapshot = _snapshot(backbone)
  with pytest.raises(ValueError) as e:
    weights_lib.load_backbone_weights(backbone, prefix)
  assert 'MobilenetV2/expanded_conv_5/depthwise/BatchNorm/gamma' in str(e.value)
  assert 'block_5_depthwise_BN/gamma' in str(e.value)
  _assert_unchanged(backbone, snapshot)


def test_depth_multiplier_mismatch_is_a_shape_error(keras_file):
  model = MobileNetV2Backbone(input_specs=[None, None, None, 3], depth_multiplier=0.5,
                              endpoints=['layer_3'])
  snapshot = _snapshot(model)
  # Conv1 is the first variable: 32 filters at 1.0, 16 at 0.5.
  with pytest.raises(ValueError, match=r"Conv1/kernel:0' .* shape \(3, 3, 3, 32\) but our "
                                       r'Conv1/kernel has shape \(3, 3, 3, 16\)'):
    weights_lib.load_backbone_weights(model, keras_file[0])
  _assert_unchanged(model, snapshot)


def test_other_architectures_are_rejected(backbone, workdir):
  dense = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(2, name='fc')])
  h5_path = str(workdir / 'dense.h5')
  dense.save_weights(h5_path)
  with pytest.raises(ValueError, match=f'{h5_path} is not a MobileNetV2'):
    weights_lib.load_backbone_weights(backbone, h5_path)

  resnet = _write_tf1_checkpoint(str(workdir / 'resnet' / 'model.ckpt'), {
      'resnet_v1_50/conv1/weights': np.zeros((7, 7, 3, 64), np.float32),
      'resnet_v1_50/conv1/BatchNorm/beta': np.zeros((64,), np.float32)})
  with pytest.raises(ValueError, match=f'{resnet} is not a MobileNetV2'):
    weights_lib.load_backbone_weights(backbone, resnet)

  tf2_dense = tf.train.Checkpoint(model=dense).write(str(workdir / 'dense_tf2' / 'ck'))
  with pytest.raises(ValueError, match=f'{tf2_dense} is not a MobileNetV2'):
    weights_lib.load_backbone_weights(backbone, tf2_dense)


def test_format_comes_from_content_not_extension(backbone, keras_file, workdir):
  renamed = str(workdir / 'mnv2_weights.ckpt')
  shutil.copy(keras_file[0], renamed)
  assert weights_lib.load_backbone_weights(backbone, renamed)['format'] == 'keras_h5'


def test_bad_paths(backbone, workdir):
  missing = str(workdir / 'no_such_weights.h5')
  with pytest.raises(ValueError, match=f'{missing} does not exist'):
    weights_lib.load_backbone_weights(backbone, missing)
  text = workdir / 'notes.h5'
  text.write_text('not weights')  # the extension says h5, the content does not
  with pytest.raises(ValueError, match=f'{text} is neither HDF5'):
    weights_lib.load_backbone_weights(backbone, str(text))


def test_factory_config_loads_weights(keras_file):
  path, images, refs = keras_file
  endpoint = 'layer_15/expansion_output'
  config = backbone_cfg.Backbone(
      type='mnv2_det',
      mnv2_det=backbone_cfg.MobileNetV2Det(endpoints=[endpoint], weights=path))
  model = factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None, IMAGE_SIZE, IMAGE_SIZE, 3]),
      backbone_config=config, norm_activation_config=common.NormActivation())
  assert isinstance(model, mnv2_det.MobileNetV2Backbone)
  diffs = _max_diff(model(images), {endpoint: refs[endpoint]})
  assert max(diffs.values()) <= TOLERANCE, diffs
