"""SSDLite with quantization-aware training, as Model Garden's QAT RetinaNet task
(`official/projects/qat/vision/tasks/retinanet.py`): `build_model` builds the float
detector, restores `task.quantization.pretrained_original_checkpoint` into it and
returns its QAT twin (`modeling/qat.py`); losses, steps and evaluation are the float
task's. `tools/train.py --experiment ssdlite_mnv2_shapes_qat` fine-tunes that way, and
checkpoints hold the QAT model (weights and quantization ranges).
"""

from absl import logging
import tensorflow as tf
import tf_keras

from official.core import task_factory

from mnv2_det.configs import qat as qat_cfg
from mnv2_det.modeling import qat
from mnv2_det.tasks import ssdlite

SUPPORTED_VERSION = 'v2'


def check_quantization(quantization: qat_cfg.Quantization) -> None:
  """ValueError naming the `task.quantization` field this detector does not support."""
  field = 'task.quantization.'
  if quantization.version != SUPPORTED_VERSION:
    raise ValueError(f'{field}version must be {SUPPORTED_VERSION!r} (tfmot quantize_apply); '
                     f'got {quantization.version!r}')
  if quantization.change_num_bits:
    raise ValueError(f'{field}change_num_bits must be false: the TFLite export is 8-bit')
  for name in ('quantize_detection_decoder', 'quantize_detection_head'):
    if not getattr(quantization, name):
      raise ValueError(f'{field}{name} must be true: the int8 export takes every range '
                       'from training, so every part is quantized')
  if quantization.range_init_batches < 0:
    raise ValueError(f'{field}range_init_batches must be >= 0, got '
                     f'{quantization.range_init_batches}')


@task_factory.register_task_cls(qat_cfg.SSDLiteQATTask)
class SSDLiteQATTask(ssdlite.SSDLiteTask):
  """`SSDLiteTask` whose model is fake-quantized when `task.quantization` is set."""

  def __init__(self, params, logging_dir=None, name=None):
    super().__init__(params, logging_dir=logging_dir, name=name)
    self._float_model = None
    self._float_checkpoint = None

  def build_model(self) -> tf_keras.Model:
    """The float detector, or with `task.quantization` its QAT twin, built from the
    float model with `pretrained_original_checkpoint` restored when that exists (when
    it does not, e.g. a QAT model dir copied without it, the model is built from fresh
    float weights: loading a QAT checkpoint replaces them all; a fresh QAT run stops
    in `initialize`)."""
    model = super().build_model()
    quantization = self.task_config.quantization
    if quantization is None:
      return model
    check_quantization(quantization)
    self._float_checkpoint = self._restore_float(model,
                                                 quantization.pretrained_original_checkpoint)
    self._float_model = model
    return qat.quantize_ssdlite(model)

  @staticmethod
  def _restore_float(model, path):
    """The prefix restored into the float `model`, or None when `path` is unset or
    does not exist."""
    if not path or not (tf.io.gfile.exists(path) or tf.io.gfile.exists(path + '.index')):
      logging.warning('QAT: pretrained_original_checkpoint %r does not exist; float '
                      'weights start fresh', path)
      return None
    from mnv2_det.core import checkpoints  # pylint: disable=g-import-not-at-top
    prefix, _ = checkpoints.resolve_checkpoint(path)
    try:
      checkpoints.restore_model(model, prefix)
    except ValueError as e:
      raise ValueError(f'task.quantization.pretrained_original_checkpoint: {e}') from e
    logging.info('QAT: float weights from %s', prefix)
    return prefix

  def initialize(self, model: tf_keras.Model):
    """A fresh QAT run (no checkpoint in the model dir yet): needs the float
    checkpoint, then starts the ranges from `range_init_batches` training batches
    (`qat.init_ranges`). Without `task.quantization`, the float task's initialize."""
    quantization = self.task_config.quantization
    if quantization is None:
      super().initialize(model)
      return
    if self.task_config.init_checkpoint:
      raise ValueError('task.init_checkpoint is not used by QAT: the float model to '
                       'fine-tune is task.quantization.pretrained_original_checkpoint')
    if self._float_checkpoint is None:
      raise ValueError('task.quantization.pretrained_original_checkpoint '
                       f'{quantization.pretrained_original_checkpoint!r} does not exist: '
                       'QAT fine-tunes a trained float model (train one with '
                       '--experiment ssdlite_mnv2_shapes first)')
    batches = quantization.range_init_batches
    if batches:
      dataset = self.build_inputs(self.task_config.train_data)
      count = qat.init_ranges(model, self._float_model,
                              (images for images, _ in dataset.take(batches)))
      logging.info('QAT: %d activation ranges from %d training batches', count, batches)
    self._float_model = None
