"""Deterministic, non-degenerate detector weights for tests that compare exported models.

An untrained detector's sigmoid scores all sit at the 0.01 class prior, so comparisons of
its detections prove little. These weights give O(1) activations (He-normal convs,
identity BN) and class scores spread around sigmoid(-2), background near sigmoid(-6).
"""

import numpy as np


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
