"""Write a registered experiment as YAML (how configs/*.yaml are produced).

  python tools/dump_experiment_yaml.py ssdlite_mnv2_coco > configs/ssdlite_mnv2_coco.yaml

tests/test_configs.py checks that every YAML under configs/ still equals its experiment.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # pylint: disable=g-import-not-at-top

import mnv2_det  # pylint: disable=unused-import
from official.core import exp_factory

SECTIONS = ('task', 'trainer', 'runtime')


def experiment_yaml(name: str) -> str:
  config = exp_factory.get_exp_config(name).as_dict()
  body = {k: config[k] for k in SECTIONS}
  header = (f'# Experiment `{name}` as registered in mnv2_det/configs/experiments.py.\n'
            f'# python tools/train.py --experiment {name} --config_file THIS_FILE ...\n')
  return header + yaml.safe_dump(body, sort_keys=True, default_flow_style=False)


if __name__ == '__main__':
  if len(sys.argv) != 2:
    sys.exit('usage: dump_experiment_yaml.py EXPERIMENT_NAME')
  sys.stdout.write(experiment_yaml(sys.argv[1]))
