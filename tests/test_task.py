"""The SSDLite task in-process: a train step under mixed precision and with an EMA
optimizer (both Model Garden features reached through our config), and the losses."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import mnv2_det  # pylint: disable=unused-import
from official.core import exp_factory
from official.core import task_factory
from official.core import train_utils
from official.modeling import performance


@pytest.fixture(scope='module')
def data_dir(shapes_data):
  return shapes_data(num_train=8, num_val=4, seed=2)['dir']


def _params(data_dir, **trainer):
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  params.override({
      'task': {
          'model': {'input_size': [96, 96, 3],
                    'backbone': {'mnv2_det': {'depth_multiplier': 0.35}}},
          'train_data': {'annotation_file': f'{data_dir}/annotations/instances_train.json',
                         'image_dir': f'{data_dir}/train', 'global_batch_size': 4},
      },
      'trainer': trainer,
  }, is_strict=True)
  return params


def _one_step(params):
  task = task_factory.get_task(params.task)
  model = task.build_model()
  optimizer = train_utils.create_optimizer(task, params)
  if hasattr(optimizer, 'shadow_copy'):  # as Model Garden's Trainer does for EMA
    optimizer.shadow_copy(model)
  inputs = next(iter(task.build_inputs(params.task.train_data)))
  before = model.backbone.get_layer('Conv1').kernel.numpy().copy()
  logs = tf.function(lambda: task.train_step(inputs, model, optimizer))()
  return model, optimizer, logs, before


# A small decay so that Model Garden's dynamic decay min(EMA_DECAY, (1 + t) / (10 + t))
# (t = optimizer updates so far) is below the cap for t < 5 and capped from t = 5 on;
# a constant Adam lr of 0.01 moves the weights by ~0.01 per step, so a wrong average
# (constant decay, no zero start, a missed update) is far outside the tolerance.
EMA_DECAY = 0.4
EMA_STEPS = 6
EMA_LR = 0.01


def _hand_ema(history, decays):
  """official/modeling/optimization/ema_optimizer.py: the shadow starts at 0; after
  update t, average -= (1 - decay_t) * (average - weight after update t)."""
  average = np.zeros_like(history[0])
  for weight, decay in zip(history, decays):
    average = average - (1 - decay) * (average - weight)
  return average


def test_ema_shadow_weights_are_the_hand_computed_average(data_dir):
  params = _params(data_dir, optimizer_config={
      'ema': {'average_decay': EMA_DECAY},
      'learning_rate': {'type': 'constant', 'constant': {'learning_rate': EMA_LR}},
      'warmup': {'type': None}})
  task = task_factory.get_task(params.task)
  model = task.build_model()
  optimizer = train_utils.create_optimizer(task, params)
  assert type(optimizer).__name__ == 'ExponentialMovingAverage'
  optimizer.shadow_copy(model)  # as Model Garden's Trainer does
  variables = model.trainable_variables
  inputs = iter(task.build_inputs(params.task.train_data))
  step = tf.function(lambda batch: task.train_step(batch, model, optimizer))
  history = []
  for t in range(1, EMA_STEPS + 1):
    logs = step(next(inputs))
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert int(optimizer.iterations.numpy()) == t
    history.append([v.numpy().astype(np.float64) for v in variables])
  decays = [min(EMA_DECAY, (1 + t) / (10 + t)) for t in range(1, EMA_STEPS + 1)]
  assert decays[0] < EMA_DECAY == decays[-1]  # both sides of the dynamic-decay cap
  shadows = [optimizer.get_slot(v, 'average').numpy() for v in variables]
  assert len(shadows) == len(variables) > 200  # every trainable weight is averaged
  for i, (v, shadow) in enumerate(zip(variables, shadows)):
    want = _hand_ema([h[i] for h in history], decays)
    np.testing.assert_allclose(shadow, want, rtol=1e-5, atol=1e-6, err_msg=v.name)
  # The check can tell (differences 50x the tolerance): the first conv's shadow is
  # neither its last weights nor the average with a constant decay.
  i = next(i for i, v in enumerate(variables) if v.name == 'Conv1/kernel:0')
  weights = [h[i] for h in history]
  assert np.abs(shadows[i] - weights[-1]).max() > 1e-4
  assert np.abs(shadows[i] - _hand_ema(weights, [EMA_DECAY] * EMA_STEPS)).max() > 1e-4


def test_train_step_under_mixed_bfloat16(data_dir):
  params = _params(data_dir)
  performance.set_mixed_precision_policy('bfloat16')  # runtime.mixed_precision_dtype
  try:
    model, _, logs, before = _one_step(params)
    assert model.backbone.get_layer('Conv1').compute_dtype == 'bfloat16'
    assert model.backbone.get_layer('Conv1').kernel.dtype == tf.float32
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert not np.allclose(model.backbone.get_layer('Conv1').kernel.numpy(), before)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')


def test_losses_are_named_and_add_up(data_dir):
  params = _params(data_dir)
  task = task_factory.get_task(params.task)
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  losses = task.build_losses(model(images, training=True), labels, model.losses)
  assert set(losses) >= {'total_loss', 'cls_loss', 'box_loss', 'regularization_loss',
                         'num_positives'}
  np.testing.assert_allclose(
      float(losses['total_loss']),
      float(losses['cls_loss'] + losses['box_loss'] + losses['regularization_loss']),
      rtol=1e-5)
  assert float(losses['num_positives']) >= 1
  # The regularization term is the layers' L2 (slim preset + head + extra layers).
  np.testing.assert_allclose(float(losses['regularization_loss']),
                             float(tf.add_n(model.losses)), rtol=1e-6)


# --------------------------------------------- config fields the builder honours

# Distinct per-part decays, so the hand sums can tell which value reached which kernel.
PART_DECAYS = {'backbone': 1e-4, 'feature_maps': 2e-4, 'head': 3e-4}
L2_WEIGHT_DECAY = 1e-3


def _conv_kernels(layer):
  """Conv kernels of `layer` (not depthwise kernels, biases or BN)."""
  return [v.numpy().astype(np.float64) for v in layer.trainable_variables
          if v.name.endswith('/kernel:0')]


def _l2_loss(kernels):
  return sum(float((k ** 2).sum()) / 2.0 for k in kernels)  # tf.nn.l2_loss, summed


def test_l2_weight_decay_replaces_the_per_part_decay_in_regularization_loss(data_dir):
  params = _params(data_dir)
  params.override({'task': {'model': {
      'backbone': {'mnv2_det': {'weight_decay': PART_DECAYS['backbone']}},
      'feature_map_weight_decay': PART_DECAYS['feature_maps'],
      'head': {'weight_decay': PART_DECAYS['head']}}}}, is_strict=True)
  assert params.task.losses.l2_weight_decay == 0.0  # the shipped default
  task = task_factory.get_task(params.task)
  model = task.build_model()
  images, labels = next(iter(task.build_inputs(params.task.train_data)))
  outputs = model(images, training=False)

  def regularization(task, model):
    return float(task.build_losses(outputs, labels, model.losses)['regularization_loss'])

  parts = {'backbone': model.backbone, 'feature_maps': model.feature_maps,
           'head': model.head}
  sums = {name: _l2_loss(_conv_kernels(layer)) for name, layer in parts.items()}
  assert all(s > 0 for s in sums.values())
  # 0.0: the per-part slim decays, wd * l2_loss(w) on each part's conv kernels.
  per_part = sum(PART_DECAYS[name] * s for name, s in sums.items())
  np.testing.assert_allclose(regularization(task, model), per_part, rtol=1e-5)

  params.task.losses.l2_weight_decay = L2_WEIGHT_DECAY
  l2_task = task_factory.get_task(params.task)
  l2_model = l2_task.build_model()
  l2_model.set_weights(model.get_weights())
  # > 0: one decay for every conv kernel, in place of the per-part values (MG's
  # l2_regularizer = l2(l2_weight_decay / 2) on every builder).
  by_hand = L2_WEIGHT_DECAY * sum(sums.values())
  got = regularization(l2_task, l2_model)
  np.testing.assert_allclose(got, by_hand, rtol=1e-5)
  np.testing.assert_allclose(got - regularization(task, model), by_hand - per_part,
                             rtol=1e-4)
  # The sums leave depthwise kernels out (slim: regularize_depthwise False); they
  # would add far more than the tolerance.
  depthwise = _l2_loss([v.numpy().astype(np.float64) for v in l2_model.trainable_variables
                        if 'depthwise_kernel' in v.name])
  assert L2_WEIGHT_DECAY * depthwise > 1e-3 * by_hand


def test_negative_l2_weight_decay_names_the_field(data_dir):
  params = _params(data_dir)
  params.task.losses.l2_weight_decay = -1e-4
  with pytest.raises(ValueError, match=r'task\.losses\.l2_weight_decay'):
    task_factory.get_task(params.task).build_model()


@pytest.mark.parametrize('activation', ['relu', 'hard_swish', 'swish'])
def test_an_activation_other_than_relu6_names_the_field(data_dir, activation):
  params = _params(data_dir)
  params.task.model.norm_activation.activation = activation
  with pytest.raises(ValueError,
                     match=r"task\.model\.norm_activation\.activation must be 'relu6'"):
    task_factory.get_task(params.task).build_model()


def test_train_step_on_bfloat16_images_under_mixed_bfloat16(data_dir):
  params = _params(data_dir)
  params.task.train_data.dtype = 'bfloat16'
  performance.set_mixed_precision_policy('bfloat16')
  try:
    task = task_factory.get_task(params.task)
    images, _ = next(iter(task.build_inputs(params.task.train_data)))
    assert images.dtype == tf.bfloat16
    model, _, logs, before = _one_step(params)
    assert all(np.isfinite(float(v)) for v in logs.values())
    assert not np.allclose(model.backbone.get_layer('Conv1').kernel.numpy(), before)
  finally:
    tf_keras.mixed_precision.set_global_policy('float32')
