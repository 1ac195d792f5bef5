"""The core (mnv2_det/core): the params builder without --experiment, and the model
dir's category table."""

import json
import os

import pytest

from official.core import exp_factory
from official.core import train_utils

from mnv2_det.core import loading
from mnv2_det.core import model_dir as model_dir_lib
from mnv2_det.core import params as params_lib
from mnv2_det.data import shapes
from mnv2_det.data.category_map import CategoryMap

EXPERIMENT = 'ssdlite_mnv2_shapes'


def test_params_yaml_alone_rebuilds_the_experiment(tmp_path):
  params = params_lib.build_params(
      EXPERIMENT, params_override='task.model.input_size=[160,224,3],'
      'task.model.detection_generator.iou_threshold=0.55,trainer.train_steps=17')
  train_utils.serialize_config(params, str(tmp_path))
  path = str(tmp_path / params_lib.PARAMS_FILE)
  again = params_lib.build_params(None, path)
  assert again.as_dict() == params.as_dict()
  # The shapes experiment differs from the base one the file is read into.
  base = exp_factory.get_exp_config(params_lib.BASE_EXPERIMENT)
  assert base.as_dict() != params.as_dict()
  # Later overrides still apply on top of the file.
  assert params_lib.build_params(None, path, params_override='trainer.train_steps=3'
                                 ).trainer.train_steps == 3


def test_no_experiment_and_no_params_yaml_is_one_error():
  with pytest.raises(ValueError, match='--experiment is required'):
    params_lib.build_params(None)
  with pytest.raises(ValueError, match="unknown experiment 'nope'"):
    params_lib.build_params('nope')


def test_categories_file_round_trip_and_task_uses_it(tmp_path):
  table = CategoryMap.from_categories([{'id': 7, 'name': 'cat'}, {'id': 3, 'name': 'dog'}])
  model_dir = tmp_path / 'run'
  model_dir.mkdir()
  assert model_dir_lib.categories_file(str(model_dir)) is None
  path = str(model_dir / model_dir_lib.CATEGORIES_FILE)
  model_dir_lib.write_categories(path, model_dir_lib.categories_of(table))
  assert sorted(os.listdir(model_dir)) == [model_dir_lib.CATEGORIES_FILE]  # no temp left
  with open(path, encoding='utf-8') as f:
    assert json.load(f)['categories'] == [{'id': 3, 'name': 'dog'}, {'id': 7, 'name': 'cat'}]
  read = model_dir_lib.read_categories(model_dir_lib.categories_file(str(model_dir)))
  assert list(read.dataset_ids) == [3, 7] and list(read.names) == ['dog', 'cat']
  # The task takes it instead of training annotations that do not exist.
  params = params_lib.build_params(
      EXPERIMENT, params_override=f'task.train_data.annotation_file={tmp_path}/none.json')
  task = loading.build_task(params, str(model_dir))
  assert list(task.category_map.dataset_ids) == [3, 7]
  assert task.build_model().num_real_classes == 2
  # Without categories.json the training annotations are the table: here unreadable.
  with pytest.raises(ValueError, match='none.json: annotation file not found'):
    loading.category_map_of(loading.build_task(params, str(tmp_path)))


def test_categories_beyond_num_classes_are_refused(tmp_path):
  data = str(tmp_path / 'shapes')
  shapes.generate(data, num_train=1, num_val=1, seed=0)
  table = CategoryMap.from_ids(list(range(1, 9)))  # 8 categories, the head has 6 outputs
  model_dir_lib.write_categories(str(tmp_path / model_dir_lib.CATEGORIES_FILE),
                                 model_dir_lib.categories_of(table))
  params = params_lib.build_params(EXPERIMENT)
  with pytest.raises(ValueError, match='num_classes >= 9'):
    loading.build_task(params, str(tmp_path))
