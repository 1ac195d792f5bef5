"""Audit BatchNormalization moving statistics against data; re-estimate them (the
library behind tools/bn_audit.py, cli/bn_audit.py, and export's --recalibrate_bn).

Capture. Every `tf_keras.layers.BatchNormalization` reachable from the model (backbone,
SSDFeatureMaps, SSDLiteHead, however nested) gets its `call` temporarily replaced on
the instance by a wrapper that adds the per-channel moments of the layer's INPUT to
float64 accumulators and then calls the original. It works the same for functional
and subclassed layers, eagerly and inside tf.function; `_capture` restores the class
method afterwards.

Audit (inference mode, so each layer sees what it sees at serving time): over N
batches, the population mean mu_d and variance var_d of each channel of the input are
compared with moving_mean mu_m and moving_variance var_m (eps = the layer's epsilon):
  mean_shift        = mean_c |mu_d - mu_m| / sqrt(var_d + eps)   (in data std units)
  log_var_ratio     = mean_c log((var_d + eps) / (var_m + eps))  (signed)
  abs_log_var_ratio = mean_c |log((var_d + eps) / (var_m + eps))|
Status: 'never-updated' when moving_mean is exactly 0 and moving_variance exactly 1
(the initial values); 'stale' when mean_shift > STALE_MEAN_SHIFT or
abs_log_var_ratio > STALE_ABS_LOG_VAR_RATIO; 'unused' when the forward pass never
calls the layer; else 'ok'. A stale early layer shifts the inputs of later layers at
inference, so they may be flagged too; recalibration fixes both.

Recalibration (precise BN: detectron2 PreciseBN, torch.optim.swa_utils.update_bn):
training-mode forward passes over N batches (every BN normalizes with its batch
statistics, so later layers see exactly what they saw in training), accumulating each
layer's batch mean and batch variance; then moving_mean = average batch mean and
moving_variance = average batch variance, i.e. the limit of a moving average with
momentum -> 1 over these batches. By default the variance is the 1/n one that
training-mode BN divides by, so inference reproduces training-mode outputs; Keras'
moving average uses Bessel's n/(n-1) instead (`unbiased=True`), which matters only
where n = batch * h * w is small: with 16 images at 128x128 (1x1 maps at levels 7-9)
the Bessel variant leaves eval-vs-train output errors of 0.2-0.6 output std at those
levels, the 1/n variant 0.01-0.04. BN layers frozen with trainable=False are unfrozen
during the passes. Only moving statistics change; `write_checkpoint` copies the source
checkpoint tensor by tensor (object graph, optimizer slots and global_step included)
with the model's values substituted, into a NEW folder.
"""

import contextlib
import dataclasses
import math
import os
import shutil
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf
import tf_keras

from mnv2_det.core import checkpoints
from mnv2_det.core import params as params_lib

# A layer is 'stale' above either threshold: a mean off by half a data standard
# deviation on average over channels, or variances off by a factor 2 on average.
STALE_MEAN_SHIFT = 0.5
STALE_ABS_LOG_VAR_RATIO = math.log(2.0)
INITIAL_MOVING_MEAN = 0.0
INITIAL_MOVING_VARIANCE = 1.0
DEFAULT_NUM_BATCHES = 20
CHECKPOINT_INDEX_FILE = 'checkpoint'
STATUS_OK, STATUS_STALE, STATUS_NEVER_UPDATED, STATUS_UNUSED = (
    'ok', 'stale', 'never-updated', 'unused')


@dataclasses.dataclass
class LayerAudit:
  """One BN layer's audit row (metrics in the module docstring; None if unused)."""
  name: str
  channels: int
  status: str
  mean_shift: Optional[float] = None
  max_mean_shift: Optional[float] = None
  log_var_ratio: Optional[float] = None
  abs_log_var_ratio: Optional[float] = None


def batch_norm_layers(model) -> List[tf_keras.layers.BatchNormalization]:
  """Every BatchNormalization layer reachable from `model`, each once."""
  layers, seen = [], set()
  for module in [model] + list(model.submodules):
    if isinstance(module, tf_keras.layers.BatchNormalization) and id(module) not in seen:
      seen.add(id(module))
      layers.append(module)
  return layers


def layer_names(model) -> Dict[int, str]:
  """`{id(layer): 'component/layer_name'}`, component = the model attribute holding it."""
  names = {}
  for path, variable in checkpoints.model_variable_paths(model).items():
    if path[-1] == 'moving_mean':
      names[variable.ref()] = path[0]
  return {id(layer): f'{names.get(layer.moving_mean.ref(), "model")}/{layer.name}'
          for layer in batch_norm_layers(model)}


class _Moments:
  """float64 accumulators of one layer's input moments (per channel)."""

  def __init__(self, channels):
    def zeros(shape):
      return tf.Variable(tf.zeros(shape, tf.float64), trainable=False)
    self.count = zeros([])                     # sum of n (elements per channel per call)
    self.sum_mean = zeros([channels])          # sum of n * batch mean
    self.sum_mean_sq = zeros([channels])       # sum of n * batch mean^2
    self.sum_var = zeros([channels])           # sum of n * batch variance (1/n)
    self.sum_unbiased_var = zeros([channels])  # sum of n * batch variance * n/(n-1)

  def add(self, inputs, reduction_axes):
    mean, var = tf.nn.moments(tf.cast(inputs, tf.float32), reduction_axes)
    mean, var = tf.cast(mean, tf.float64), tf.cast(var, tf.float64)
    n = tf.cast(tf.size(inputs), tf.float64) / tf.cast(tf.size(mean), tf.float64)
    self.count.assign_add(n)
    self.sum_mean.assign_add(n * mean)
    self.sum_mean_sq.assign_add(n * tf.square(mean))
    self.sum_var.assign_add(n * var)
    self.sum_unbiased_var.assign_add(n * var * n / tf.maximum(n - 1.0, 1.0))

  def population(self):
    """(mean, variance) numpy float64 over all recorded elements."""
    count = self.count.numpy()
    mean = self.sum_mean.numpy() / count
    second = (self.sum_var.numpy() + self.sum_mean_sq.numpy()) / count
    return mean, np.maximum(second - mean**2, 0.0)

  def average_batch(self, unbiased: bool):
    """(average batch mean, average batch variance), numpy float64."""
    count = self.count.numpy()
    variance = self.sum_unbiased_var if unbiased else self.sum_var
    return self.sum_mean.numpy() / count, variance.numpy() / count


@contextlib.contextmanager
def _capture(layers):
  """Patches each layer's call to record its input; yields {id(layer): _Moments}."""
  moments = {}
  for layer in layers:
    if not layer.built:
      continue
    moments[id(layer)] = record = _Moments(int(layer.moving_mean.shape[0]))
    original = layer.call
    rank_axes = list(layer.axis)

    def call(inputs, *args, _original=original, _record=record, _axes=rank_axes,
             **kwargs):
      reduction = [i for i in range(inputs.shape.rank) if i not in _axes]
      _record.add(inputs, reduction)
      return _original(inputs, *args, **kwargs)
    object.__setattr__(layer, 'call', call)  # bypasses Keras attribute tracking
  try:
    yield moments
  finally:
    for layer in layers:
      if 'call' in layer.__dict__:
        object.__delattr__(layer, 'call')


def _forward(model, training: bool, eager: bool):
  """A fresh tf.function (or eager fn) images -> raw outputs (SSDLiteModel: no NMS)."""
  if all(hasattr(model, a) for a in ('backbone', 'feature_maps', 'head')):
    def forward(images):
      return model.raw_outputs(images, training=training)
  else:
    def forward(images):
      return model(images, training=training)
  return forward if eager else tf.function(forward)


def _run(model, dataset, num_batches: int, training: bool, eager: bool) -> int:
  """Forward passes over up to `num_batches` batches; returns how many ran."""
  forward = _forward(model, training, eager)
  batches = 0
  for element in dataset.take(num_batches):
    images = element[0] if isinstance(element, (tuple, list)) else element
    forward(images)
    batches += 1
  if not batches:
    raise ValueError('the BN audit dataset yielded no batches')
  return batches


def audit(model, dataset, num_batches: int = DEFAULT_NUM_BATCHES,
          eager: bool = False) -> List[LayerAudit]:
  """Inference-mode audit of every BN layer over `num_batches` of `dataset`.

  Args:
    model: a tf_keras model (SSDLiteModel or any) whose BN layers are built.
    dataset: tf.data of `(images [B, H, W, 3] float32, labels)` or images.
    num_batches: batches to use (fewer if the dataset ends).
    eager: run eagerly instead of tracing a tf.function (faster for 1-2 batches).

  Returns:
    LayerAudit rows in the order the forward pass first calls the layers, then the
    unused layers.
  """
  layers = batch_norm_layers(model)
  names = layer_names(model)
  with _capture(layers) as moments:
    _run(model, dataset, num_batches, training=False, eager=eager)
  rows = []
  for layer in layers:
    record = moments.get(id(layer))
    channels = int(layer.moving_mean.shape[0]) if layer.built else 0
    if record is None or record.count.numpy() == 0:
      rows.append(LayerAudit(names.get(id(layer), layer.name), channels, STATUS_UNUSED))
      continue
    mu_d, var_d = record.population()
    mu_m = layer.moving_mean.numpy().astype(np.float64)
    var_m = layer.moving_variance.numpy().astype(np.float64)
    eps = float(layer.epsilon)
    shift = np.abs(mu_d - mu_m) / np.sqrt(var_d + eps)
    log_ratio = np.log((var_d + eps) / (np.maximum(var_m, 0.0) + eps))
    row = LayerAudit(names[id(layer)], channels, STATUS_OK, float(shift.mean()),
                     float(shift.max()), float(log_ratio.mean()),
                     float(np.abs(log_ratio).mean()))
    if (np.all(mu_m == INITIAL_MOVING_MEAN) and
        np.all(var_m == INITIAL_MOVING_VARIANCE)):
      row.status = STATUS_NEVER_UPDATED
    elif (row.mean_shift > STALE_MEAN_SHIFT or
          row.abs_log_var_ratio > STALE_ABS_LOG_VAR_RATIO):
      row.status = STATUS_STALE
    rows.append(row)
  return rows


def flagged(rows: Sequence[LayerAudit]) -> List[LayerAudit]:
  return [r for r in rows if r.status in (STATUS_STALE, STATUS_NEVER_UPDATED)]


def recalibrate(model, dataset, num_batches: int = DEFAULT_NUM_BATCHES,
                unbiased: bool = False, eager: bool = False) -> int:
  """Re-estimates every used BN layer's moving statistics (precise BN, see module doc).

  Args:
    model: model whose BN layers are re-estimated in place.
    dataset: tf.data of `(images, labels)` or images, `[B, H, W, 3]` float32.
    num_batches: batches to average over (fewer if the dataset ends).
    unbiased: False (default) averages the batch variances training-mode BN divides
      by (1/n); True applies Bessel's n/(n-1) as Keras' moving average does. They
      differ only where n = batch * h * w is small (the 1x1 maps of the last levels).
    eager: as in `audit`.

  Returns the number of batches used. Gamma, beta and all other weights are unchanged.
  """
  layers = batch_norm_layers(model)
  frozen = [layer for layer in layers if not layer.trainable]
  for layer in frozen:
    layer.trainable = True
  try:
    with _capture(layers) as moments:
      batches = _run(model, dataset, num_batches, training=True, eager=eager)
  finally:
    for layer in frozen:
      layer.trainable = False
  for layer in layers:
    record = moments.get(id(layer))
    if record is not None and record.count.numpy() > 0:
      mean, variance = record.average_batch(unbiased)
      layer.moving_mean.assign(mean.astype(layer.moving_mean.dtype.as_numpy_dtype))
      layer.moving_variance.assign(
          variance.astype(layer.moving_variance.dtype.as_numpy_dtype))
  return batches


def check_output_dir(output_dir: str, source_prefix: str) -> None:
  """ValueError if `output_dir` is the source's folder or already holds a checkpoint."""
  if os.path.abspath(output_dir) == os.path.dirname(os.path.abspath(source_prefix)):
    raise ValueError(f'--output_dir {output_dir} is the source checkpoint folder; '
                     'recalibration never overwrites its input')
  if tf.io.gfile.exists(os.path.join(output_dir, CHECKPOINT_INDEX_FILE)) or tf.io.gfile.glob(
      os.path.join(output_dir, '*.index')):
    raise ValueError(f'--output_dir {output_dir} already holds a checkpoint')


def write_checkpoint(model, source_prefix: str, output_dir: str,
                     params_file: Optional[str] = None) -> str:
  """Copies `source_prefix` into `output_dir` with the model's current values.

  Every tensor of the source (object graph, optimizer slots, global_step, ...) is
  kept; the model's variables (found through the checkpoint's 'model' object) take
  the values they have now. The copy keeps the source's name (e.g. ckpt-1500) and a
  `checkpoint` index file, so `tf.train.latest_checkpoint(output_dir)`,
  tools/eval.py and tools/train.py --mode eval read it as they read the source;
  params.yaml is copied along when given. Never overwrites: ValueError if
  `output_dir` already holds a checkpoint or is the source's folder.
  """
  check_output_dir(output_dir, source_prefix)
  tf.io.gfile.makedirs(output_dir)
  reader = tf.train.load_checkpoint(source_prefix)
  keys = checkpoints.model_variable_keys(source_prefix)
  values = {keys[path]: variable.numpy()
            for path, variable in checkpoints.model_variable_paths(model).items()}
  names = sorted(reader.get_variable_to_dtype_map())
  prefix = os.path.join(output_dir, os.path.basename(source_prefix))
  tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[''] * len(names),
                    tensors=[values[n] if n in values else reader.get_tensor(n)
                             for n in names])
  # The `checkpoint` index file CheckpointManager writes (text proto, relative path).
  name = os.path.basename(prefix)
  with tf.io.gfile.GFile(os.path.join(output_dir, CHECKPOINT_INDEX_FILE), 'w') as f:
    f.write(f'model_checkpoint_path: "{name}"\nall_model_checkpoint_paths: "{name}"\n')
  if params_file:
    shutil.copyfile(params_file, os.path.join(output_dir, params_lib.PARAMS_FILE))
  return prefix


def format_table(rows: Sequence[LayerAudit]) -> str:
  lines = [f'{"layer":52s}{"ch":>6s}{"shift":>8s}{"max":>8s}{"logvar":>8s}'
           f'{"|logvar|":>9s}  status']
  for r in rows:
    metrics = ''.join(f'{v:8.3f}' if v is not None else f'{"-":>8s}' for v in (
        r.mean_shift, r.max_mean_shift, r.log_var_ratio)) + (
            f'{r.abs_log_var_ratio:9.3f}' if r.abs_log_var_ratio is not None else
            f'{"-":>9s}')
    lines.append(f'{r.name[-52:]:52s}{r.channels:6d}{metrics}  {r.status}')
  counts = {s: sum(r.status == s for r in rows) for s in (
      STATUS_OK, STATUS_STALE, STATUS_NEVER_UPDATED, STATUS_UNUSED)}
  lines.append(f'{len(rows)} BN layers: ' + ', '.join(f'{v} {k}' for k, v in counts.items())
               + f' (stale: shift > {STALE_MEAN_SHIFT} or |logvar| > '
               f'{STALE_ABS_LOG_VAR_RATIO:.3f})')
  return '\n'.join(lines)


def audit_dataset(task, params, data: str):
  """'train': the training pipeline without augmentation (seeded); or 'validation'."""
  if data == 'validation':
    return task.build_inputs(params.task.validation_data)
  if data != 'train':
    raise ValueError(f'--data must be train or validation, got {data!r}')
  return task.build_inputs(params_lib.unaugmented_train_data(params))
