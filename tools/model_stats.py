"""Print parameter and MAdd counts of an experiment's detector.

  python tools/model_stats.py --experiment ssdlite_mnv2_coco [--params_override ...]
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from official.common import flags as tfm_flags
from official.core import train_utils

import mnv2_det  # pylint: disable=unused-import
from mnv2_det.modeling import factory
from mnv2_det.analysis import model_stats


def main(_):
  params = train_utils.parse_configuration(flags.FLAGS)
  model_cfg = params.task.model
  model = factory.build_ssdlite_model(model_cfg)
  stats = model_stats.detector_stats(model, model_cfg.input_size)
  print(f'input {model_cfg.input_size[0]}x{model_cfg.input_size[1]}, '
        f'num_classes {model_cfg.num_classes} (incl. background), '
        f'{len(model.anchor_boxes)} anchors')
  for key, value in stats.items():
    unit = f'{value / 1e9:.3f}B' if 'madds' in key else f'{value / 1e6:.3f}M'
    print(f'{key:16s} {value:>14,d}  ({unit})')


if __name__ == '__main__':
  tfm_flags.define_flags()
  flags.FLAGS.set_default('mode', 'train')
  flags.FLAGS.set_default('model_dir', '/tmp/unused')
  flags.mark_flags_as_required(['experiment'])
  app.run(main)
