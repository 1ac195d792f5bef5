"""tools/train.py with a look inside, for tests of what a run restored.

  python tests/train_probe.py --probe_output PREFIX <tools/train.py flags>

Runs `train_cli.run` exactly as tools/train.py does, keeping the Model Garden trainer it
creates. Afterwards the optimizer's slot variables are created as its first
`apply_gradients` would create them (a restored checkpoint's slot values are filled in
on creation; a run that trained no step never creates them), and the trainer's own
`tf.train.Checkpoint` (model, optimizer, global step: what the checkpoint manager saves)
is written to PREFIX, so a test can compare it value by value with a checkpoint on disk.
"""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from official.common import flags as tfm_flags
from official.core import train_utils

from mnv2_det.cli import train as train_cli

flags.DEFINE_string('probe_output', None, 'Prefix the trainer checkpoint is written to.')

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


def main(_):
  train_utils.create_trainer = _keeping_trainer(train_utils.create_trainer)
  code = train_cli.run(flags.FLAGS)
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
  flags.mark_flags_as_required(['experiment', 'mode', 'model_dir', 'probe_output'])
  app.run(main)
