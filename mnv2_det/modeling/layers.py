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
