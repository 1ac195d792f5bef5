"""Registered experiments, their YAML twins under configs/, and the task registration."""

import glob
import os

import pytest
import yaml

import mnv2_det  # pylint: disable=unused-import
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.tasks.ssdlite import SSDLiteTask
from official.core import exp_factory
from official.core import task_factory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
YAMLS = sorted(glob.glob(os.path.join(ROOT, 'configs', '*.yaml')))


def test_yaml_files_exist_for_both_experiments():
  names = {os.path.basename(p)[:-len('.yaml')] for p in YAMLS}
  assert {'ssdlite_mnv2_coco', 'ssdlite_mnv2_shapes'} <= names


@pytest.mark.parametrize('path', YAMLS, ids=os.path.basename)
def test_yaml_equals_registered_experiment(path):
  name = os.path.basename(path)[:-len('.yaml')]
  registered = exp_factory.get_exp_config(name)
  with open(path) as f:
    loaded = yaml.safe_load(f)
  for section, values in loaded.items():
    assert values == registered.as_dict()[section], f'{path}: section {section} drifted'
  # And the file is usable as --config_file on top of the experiment.
  registered.override(loaded, is_strict=True)


def test_coco_experiment_follows_the_od_api():
  config = exp_factory.get_exp_config('ssdlite_mnv2_coco')
  model = config.task.model
  assert model.num_classes == 91 and model.input_size == [320, 320, 3]
  assert model.backbone.type == 'mnv2_det'
  assert list(model.backbone.mnv2_det.endpoints) == ['layer_15/expansion_output', 'layer_19']
  assert config.task.losses.classification == 'sigmoid_hem'
  assert config.task.train_data.global_batch_size == 24
  opt = config.trainer.optimizer_config
  assert opt.optimizer.type == 'rmsprop' and opt.optimizer.rmsprop.epsilon == 1.0
  assert opt.learning_rate.exponential.initial_learning_rate == 0.004


def test_task_is_registered():
  task = task_factory.get_task(exp_factory.get_exp_config('ssdlite_mnv2_shapes').task)
  assert isinstance(task, SSDLiteTask)
  assert task_factory.get_task_cls(ssdlite_cfg.SSDLiteTask) is SSDLiteTask
