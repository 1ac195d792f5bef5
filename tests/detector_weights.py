"""Deterministic, non-degenerate detector weights for tests that compare exported models.

An untrained detector's sigmoid scores all sit at the 0.01 class prior, so comparisons of
its detections prove little. These weights give O(1) activations (He-normal convs,
identity BN) and class scores spread around sigmoid(-2), background near sigmoid(-6).
"""

import numpy as np
import tensorflow as tf

from official.core import task_factory

from mnv2_det.core import params as params_lib

SHAPES_EXPERIMENT = 'ssdlite_mnv2_shapes'
SHAPES_NUM_CLASSES = 6  # background + the 5 shapes categories
TINY_INPUT = 128
TINY_MULTIPLIER = 0.35


def spread_weights(model, num_classes: int, seed: int = 0):
  """Assigns the weights in place (class-bias channels are anchor-major)."""
  rng = np.random.default_rng(seed)
  for v in model.variables:
    name, shape = v.name, v.shape.as_list()
    if 'moving_variance' in name or 'gamma' in name:
      value = np.ones(shape)
    elif 'moving_mean' in name or 'beta' in name:
      value = np.zeros(shape)
    elif name.endswith('bias:0'):
      value = np.zeros(shape)
      if 'class' in name:  # channel 0 of each anchor is background
        value = rng.uniform(-2.5, -1.5, shape)
        value[::num_classes] = -6.0
    else:
      fan_in = np.prod(shape[:2]) if 'depthwise' in name else np.prod(shape[:-1])
      std = np.sqrt(2.0 / fan_in) * (0.3 if 'predictor' in name else 1.0)
      value = rng.normal(0.0, std, shape)
    v.assign(value.astype(np.float32))


def tiny_overrides(data_dir: str, input_size: int = TINY_INPUT,
                   multiplier: float = TINY_MULTIPLIER) -> str:
  """`--params_override` of the shapes experiment on a `shapes.generate(data_dir)` set,
  with a small square input and depth multiplier."""
  return ','.join([
      f'task.train_data.annotation_file={data_dir}/annotations/instances_train.json',
      f'task.train_data.image_dir={data_dir}/train',
      f'task.validation_data.annotation_file={data_dir}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data_dir}/val',
      f'task.model.input_size=[{input_size},{input_size},3]',
      f'task.model.backbone.mnv2_det.depth_multiplier={multiplier}',
  ])


def spread_detector(params_override: str, num_classes: int = SHAPES_NUM_CLASSES,
                    experiment: str = SHAPES_EXPERIMENT):
  """(params, task, model): the experiment with `params_override`, built, with
  `spread_weights`."""
  params = params_lib.build_params(experiment, params_override=params_override)
  task = task_factory.get_task(params.task)
  model = task.build_model()
  spread_weights(model, num_classes)
  return params, task, model


def smooth_image(seed, hw=(150, 210)):
  """Smooth random uint8 RGB image `[h, w, 3]` (upsampled noise); the default size is not
  a test model's input size, so exported models must resize."""
  rng = np.random.default_rng(seed)
  small = rng.integers(0, 256, [hw[0] // 10, hw[1] // 10, 3]).astype(np.float32)
  return tf.cast(tf.image.resize(small, hw), tf.uint8).numpy()
