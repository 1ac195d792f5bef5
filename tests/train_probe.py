"""tools/train.py with a look inside, for tests of what a run restored.

  python tests/train_probe.py [--probe_output PREFIX] [--probe_batches] <tools/train.py flags>

Runs `train_cli.run` exactly as tools/train.py does, keeping the Model Garden trainer it
creates. With --probe_output, afterwards the optimizer's slot variables are created as
its first `apply_gradients` would create them (a restored checkpoint's slot values are
filled in on creation; a run that trained no step never creates them), and the trainer's
own `tf.train.Checkpoint` (model, optimizer, global step: what the checkpoint manager
saves) is written to PREFIX, so a test can compare it value by value with a checkpoint
on disk.

With --probe_batches, every replica of every training step prints what it trained on,
from inside the step (tf.print to stdout, before the gradients are applied):

  probe batch: step S replica R source_ids [i j ...] positives P

(S: optimizer iterations before the step, from 0; R: replica id in sync; source_ids:
the COCO image ids of the replica's batch, in batch order; P: its matched anchors, the
number its loss is normalized by), and after training the strategy the trainer ran
under:

  probe: strategy CLASS, multi-worker BOOL, replicas in sync N

(multi-worker: isinstance of tf.distribute.MultiWorkerMirroredStrategy).
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import tensorflow as tf

from official.common import flags as tfm_flags
from official.core import train_utils

from mnv2_det.cli import train as train_cli
from mnv2_det.tasks import ssdlite

flags.DEFINE_string('probe_output', None, 'Prefix the trainer checkpoint is written to.')
flags.DEFINE_bool('probe_batches', False,
                  'Print each replica\'s source ids and positives at every step, and '
                  'the strategy.')

_TRAINERS = []


def _keeping_trainer(create_trainer):
  def create(*args, **kwargs):
    trainer = create_trainer(*args, **kwargs)
    _TRAINERS.append(trainer)
    return trainer
  return create


def create_slots(optimizer, variables):
  """The slot variables `optimizer.apply_gradients` creates on its first call (of the
  innermost optimizer, under EMA / loss-scale wrappers)."""
  while True:
    inner = getattr(optimizer, 'inner_optimizer', getattr(optimizer, '_optimizer', None))
    if inner is None:
      break
    optimizer = inner
  if hasattr(optimizer, '_create_all_weights'):  # tf_keras legacy optimizers
    optimizer._create_all_weights(variables)  # pylint: disable=protected-access
  else:
    optimizer.build(variables)


def _printing_batches(train_step):
  def step(self, inputs, model, optimizer, metrics=None):
    _, labels = inputs
    replica = tf.distribute.get_replica_context().replica_id_in_sync_group
    tf.print('probe batch: step', optimizer.iterations, 'replica', replica, 'source_ids',
             labels['source_id'], 'positives',
             tf.cast(tf.reduce_sum(labels['positive_mask']), tf.int64),
             summarize=-1, output_stream=sys.stdout)
    return train_step(self, inputs, model, optimizer, metrics)
  return step


def main(_):
  train_utils.create_trainer = _keeping_trainer(train_utils.create_trainer)
  if flags.FLAGS.probe_batches:
    ssdlite.SSDLiteTask.train_step = _printing_batches(ssdlite.SSDLiteTask.train_step)
  code = train_cli.run(flags.FLAGS)
  if code == 0 and flags.FLAGS.probe_batches:
    strategy = _TRAINERS[-1].strategy
    print(f'probe: strategy {type(strategy).__name__}, multi-worker '
          f'{isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)}, '
          f'replicas in sync {strategy.num_replicas_in_sync}', flush=True)
  if code == 0 and flags.FLAGS.probe_output:
    trainer = _TRAINERS[-1]
    create_slots(trainer.optimizer, trainer.model.trainable_variables)
    trainer.checkpoint.write(flags.FLAGS.probe_output)
    conv = trainer.model.backbone.get_layer('Conv1')
    print(f'probe: optimizer {type(trainer.optimizer).__name__}, '
          f'iterations {int(trainer.optimizer.iterations.numpy())}, '
          f'compute dtype {conv.compute_dtype}, variable dtype {conv.kernel.dtype.name}',
          flush=True)
  return code


if __name__ == '__main__':
  tfm_flags.define_flags()
  train_cli.define_flags()
  flags.mark_flags_as_required(['experiment', 'mode', 'model_dir'])
  app.run(main)
