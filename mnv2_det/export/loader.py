"""Config + trained model for export, with every user mistake as one ValueError."""

import dataclasses
from typing import Optional, Sequence

import tensorflow as tf

from official.core import config_definitions as cfg

import mnv2_det  # pylint: disable=unused-import  # registers backbone, task, experiments
from mnv2_det.data.category_map import CategoryMap
from mnv2_det.tools_lib import checkpoints


@dataclasses.dataclass
class LoadedDetector:
  """What an exporter needs.

  Attributes:
    params: the experiment config the model was built from.
    task: the SSDLite task (data pipelines, category table).
    model: SSDLiteModel with the checkpoint's weights.
    category_map: contiguous index <-> dataset category id table.
    checkpoint: the checkpoint prefix that was read.
  """
  params: cfg.ExperimentConfig
  task: object
  model: object
  category_map: CategoryMap
  checkpoint: str


def load_detector(experiment: str, checkpoint: str, config_files: Sequence[str] = (),
                  params_override: str = '', best: bool = False) -> LoadedDetector:
  """Builds params (experiment <- model_dir/params.yaml <- files <- override) and the
  model, and restores the checkpoint.

  Args:
    experiment: registered experiment name, e.g. 'ssdlite_mnv2_shapes'.
    checkpoint: a checkpoint prefix (`run/ckpt-600`) or a model_dir (latest
      checkpoint, or `best_ckpt/` with `best`; its params.yaml is read when present).
    config_files: YAML overrides applied after params.yaml.
    params_override: `k=v,...` applied last.
    best: with a model_dir, take `best_ckpt/`.

  Raises:
    ValueError: unknown experiment, bad override, missing / corrupt checkpoint, a
      checkpoint of another architecture, or no category table (train annotations).
  """
  prefix, params_file = checkpoints.resolve_checkpoint(checkpoint, best)
  params = checkpoints.build_params(experiment, params_file, config_files, params_override)
  task, model = checkpoints.load_task_and_model(params, prefix)
  return LoadedDetector(params=params, task=task, model=model,
                        category_map=category_map_of(task), checkpoint=prefix)


def category_map_of(task) -> CategoryMap:
  """The task's category table, or a ValueError saying which file it needs."""
  try:
    return task.category_map
  except (tf.errors.OpError, OSError) as e:
    raise ValueError(f'cannot read the category table from the training annotations '
                     f'(task.train_data.annotation_file): '
                     f'{checkpoints.first_line(e)}') from e


def detection_settings(params: cfg.ExperimentConfig) -> dict:
  """Input and post-processing settings shared by the exporters."""
  model = params.task.model
  return {
      'input_size': [int(s) for s in model.input_size[:2]],
      'resize_mode': params.task.validation_data.parser.resize_mode,
      'num_classes': int(model.num_classes),
      'score_threshold': float(model.detection_generator.score_threshold),
      'iou_threshold': float(model.detection_generator.iou_threshold),
      'max_detections_per_class': int(model.detection_generator.max_detections_per_class),
      'max_num_detections': int(model.detection_generator.max_num_detections),
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


def optional_int(value: Optional[int], name: str, minimum: int = 1) -> Optional[int]:
  """Validates an optional positive integer flag."""
  if value is not None and value < minimum:
    raise ValueError(f'{name} must be >= {minimum}, got {value}')
  return value
