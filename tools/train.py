"""Train / evaluate an mnv2_det experiment with Model Garden's driver (orbit + tf.distribute).

  python tools/train.py --experiment ssdlite_mnv2_shapes --mode train_and_eval \
      --model_dir runs/shapes [--config_file configs/x.yaml] [--params_override k=v,...]

Rerunning the same command resumes from the latest checkpoint in --model_dir.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from official.common import flags as tfm_flags

from mnv2_det.cli import train as train_cli


def main(_):
  return train_cli.run(flags.FLAGS)


if __name__ == '__main__':
  tfm_flags.define_flags()
  train_cli.define_flags()
  flags.mark_flags_as_required(['experiment', 'mode', 'model_dir'])
  app.run(main)
