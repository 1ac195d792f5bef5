"""Checkpoint -> (params, task, model, category table): the one way every tool loads a
trained model (eval, predict, export, bn_audit, benchmarks).

    loaded = load_model('runs/shapes')                 # a model dir: its params.yaml
    loaded = load_model('runs/shapes/ckpt-600', experiment='ssdlite_mnv2_shapes',
                        params_override='task.model.detection_generator.iou_threshold=0.5')

The category table comes from the model dir's categories.json when it has one
(`model_dir`), else from the training annotations params.yaml names.
"""

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from official.core import config_definitions as cfg
from official.core import task_factory

from mnv2_det.core import checkpoints
from mnv2_det.core import model_dir as model_dir_lib
from mnv2_det.core import params as params_lib
from mnv2_det.core.errors import first_line
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.modeling import factory


@dataclasses.dataclass
class LoadedModel:
  """A restored detector and what it was built from.

  Attributes:
    params: the experiment config the model was built from.
    task: the SSDLite task (data pipelines, category table).
    model: SSDLiteModel with the checkpoint's weights.
    category_map: contiguous index <-> dataset category id table.
    checkpoint: the checkpoint prefix that was read.
    model_dir: the folder of the checkpoint (of `best_ckpt/`'s parent).
  """
  params: cfg.ExperimentConfig
  task: object
  model: object
  category_map: CategoryMap
  checkpoint: str
  model_dir: str


def build_task(params, model_dir: Optional[str] = None):
  """The task of `params`; its category table is `model_dir`'s categories.json when
  that exists."""
  task = task_factory.get_task(params.task)
  categories = model_dir_lib.categories_file(model_dir)
  if categories:
    task.use_category_map(model_dir_lib.read_categories(categories))
  return task


def load_task_and_model(params, prefix: str):
  """Builds the task and its model from `params` (category table: the prefix's model
  dir's categories.json if any) and restores `prefix` into it."""
  task = build_task(params, checkpoints.model_dir_of(prefix))
  model = task.build_model()
  checkpoints.restore_model(model, prefix)
  return task, model


def load_model(checkpoint: str, experiment: Optional[str] = None,
               config_files: Sequence[str] = (), params_override: str = '',
               best: bool = False) -> LoadedModel:
  """Builds params (`experiment` <- the model dir's params.yaml <- `config_files` <-
  `params_override`) and the model, and restores `checkpoint`: a prefix
  (`run/ckpt-600`) or a model_dir (its latest checkpoint, `best_ckpt/`'s with `best`).
  `experiment` is optional when params.yaml is there. ValueError for an unknown
  experiment, a bad override, a missing / corrupt checkpoint or one of another
  architecture, or no category table.
  """
  prefix, params_file = checkpoints.resolve_checkpoint(checkpoint, best)
  params = params_lib.build_params(experiment, params_file, config_files, params_override)
  model_dir = checkpoints.model_dir_of(prefix)
  task, model = load_task_and_model(params, prefix)
  return LoadedModel(params=params, task=task, model=model,
                     category_map=category_map_of(task), checkpoint=prefix,
                     model_dir=model_dir)


def category_map_of(task) -> CategoryMap:
  """The task's category table, or a ValueError saying which file it needs."""
  try:
    return task.category_map
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f'cannot read the category table: the model dir has no '
                     f'{model_dir_lib.CATEGORIES_FILE} and the training annotations '
                     f'(task.train_data.annotation_file) cannot be read: '
                     f'{first_line(e)}') from e


def detection_settings(params: cfg.ExperimentConfig) -> dict:
  """Input and post-processing settings shared by the exporters."""
  model = params.task.model
  nms = factory.nms_settings(model)
  return {
      'input_size': [int(s) for s in model.input_size[:2]],
      'resize_mode': params.task.validation_data.parser.resize_mode,
      'num_classes': int(model.num_classes),
      'score_threshold': nms.score_threshold,
      'iou_threshold': nms.iou_threshold,
      'max_detections_per_class': nms.max_per_class,
      'max_num_detections': nms.max_total,
  }


def num_real_classes(params: cfg.ExperimentConfig, category_map: CategoryMap) -> int:
  """K, the categories of `category_map`: the classes an exported detector outputs
  (contiguous 1..K). Head outputs past K (num_classes > K + 1) are never exported.

  Raises:
    ValueError: the model has no output for some category (num_classes < K + 1).
  """
  k = len(category_map.dataset_ids)
  num_classes = int(params.task.model.num_classes)
  if k < 1:
    raise ValueError('the category table is empty: nothing to detect')
  if k >= num_classes:
    raise ValueError(f'{k} categories need task.model.num_classes >= {k + 1} ({k} + '
                     f'background at index 0), got {num_classes}')
  return k
