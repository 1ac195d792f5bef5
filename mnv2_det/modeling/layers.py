"""Small Keras layers shared by the backbone and the detector."""

import tf_keras

from mnv2_det.ops import padding


@tf_keras.utils.register_keras_serializable(package='mnv2_det')
class PadToMultiple(tf_keras.layers.Layer):
  """Zero-pads `[batch, H, W, C]` at the bottom/right to multiples of `multiple`.

  See `mnv2_det.ops.padding.pad_to_multiple`; `multiple=1` is the identity.
  """

  def __init__(self, multiple: int = 32, **kwargs):
    super().__init__(**kwargs)
    self._config_dict = {'multiple': int(multiple)}

  def call(self, inputs):
    return padding.pad_to_multiple(inputs, self._config_dict['multiple'])

  def get_config(self):
    return {**super().get_config(), **self._config_dict}


def truncated_normal(stddev):
  """A fresh initializer per call (a shared unseeded instance repeats its values)."""
  return tf_keras.initializers.TruncatedNormal(stddev=stddev)


def l2_decay(weight_decay):
  """slim.l2_regularizer(wd) is wd·Σw²/2; Keras' L2(x) is x·Σw². None when wd == 0."""
  return tf_keras.regularizers.L2(weight_decay / 2.0) if weight_decay > 0 else None


def batch_norm(momentum, epsilon, use_sync_bn, name):
  return tf_keras.layers.BatchNormalization(
      momentum=momentum, epsilon=epsilon, synchronized=use_sync_bn, name=name)


def apply_sequence(ops, x, training=None):
  """Applies layers in order, passing `training` to BatchNormalization only."""
  for op in ops:
    if isinstance(op, tf_keras.layers.BatchNormalization):
      x = op(x, training=training)
    else:
      x = op(x)
  return x
