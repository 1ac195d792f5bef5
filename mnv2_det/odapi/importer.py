"""OD API model (pipeline.config + TF1 checkpoint [+ label map]) -> an mnv2_det model dir.

The model dir holds what the tools read from a trained one:
  params.yaml      the translated experiment (`ssdlite_mnv2_coco` + overrides);
  categories.json  the category table (COCO JSON without images), ids 1..num_classes,
                   referenced by `task.train_data.annotation_file`;
  ckpt-0.*, checkpoint
                   `tf.train.Checkpoint(model=...)`, as the Model Garden trainer writes;
  odapi_import.json
                   what was imported: sources, EMA, fields not used.
Everything is written to a temporary folder first and renamed at the end.
"""

import json
import os
from typing import Dict, Optional

import tensorflow as tf
import yaml

from official.core import train_utils

from mnv2_det.core import model_dir as model_dir_lib
from mnv2_det.export import atomic
from mnv2_det.modeling import factory
from mnv2_det.odapi import checkpoint as odapi_checkpoint
from mnv2_det.odapi import label_map as label_map_lib
from mnv2_det.odapi import translate

CATEGORIES_FILE = model_dir_lib.CATEGORIES_FILE
REPORT_FILE = 'odapi_import.json'
CHECKPOINT_NAME = 'ckpt'
YAML_SECTIONS = ('task', 'trainer', 'runtime')


def read_pipeline(path: str):
  """(params, not_used) of a pipeline.config file; ValueError naming the file."""
  if not os.path.isfile(path):
    raise ValueError(f'pipeline config {path} does not exist')
  with open(path, encoding='utf-8') as f:
    return translate.build_params(f.read(), path)


def experiment_yaml(params, source: str) -> str:
  """The translated experiment as YAML (configs/odapi/*.yaml are made with this)."""
  body = {k: v for k, v in params.as_dict().items() if k in YAML_SECTIONS}
  header = (f'# {os.path.basename(source)} translated by tools/import_odapi.py --print_config\n'
            f'# python tools/train.py --experiment {translate.BASE_EXPERIMENT} '
            '--config_file THIS_FILE ...\n')
  return header + yaml.safe_dump(body, sort_keys=True, default_flow_style=False)


def import_model(pipeline_config: str, checkpoint: str, model_dir: str,
                 label_map: Optional[str] = None, use_ema: Optional[bool] = None,
                 overwrite: bool = False) -> Dict[str, object]:
  """Writes the model dir (module docstring); returns the import report."""
  atomic.check_output(model_dir, overwrite)
  params, not_used = read_pipeline(pipeline_config)
  categories = label_map_lib.category_table(params.task.model.num_classes - 1, label_map)
  final_dir = os.path.abspath(model_dir)
  params.task.train_data.annotation_file = os.path.join(final_dir, CATEGORIES_FILE)
  params.task.train_data.image_dir = ''
  params.task.validation_data.annotation_file = ''
  params.task.validation_data.image_dir = ''
  model = factory.build_ssdlite_model(params.task.model,
                                      num_real_classes=len(categories))
  loaded = odapi_checkpoint.load_odapi_checkpoint(model, checkpoint, use_ema)
  report = {'pipeline_config': os.path.abspath(pipeline_config),
            'checkpoint': os.path.abspath(checkpoint),
            'label_map': os.path.abspath(label_map) if label_map else None,
            'num_variables': loaded['num_variables'], 'ema': loaded['ema'],
            'num_anchors': int(model.anchor_boxes.shape[0]),
            'input_size': list(params.task.model.input_size[:2]),
            'fields_not_used': not_used}
  with atomic.atomic_output(model_dir, is_dir=True, overwrite=overwrite) as temp:
    model_dir_lib.write_categories(os.path.join(temp, CATEGORIES_FILE), categories)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), temp,
                                         max_to_keep=1, checkpoint_name=CHECKPOINT_NAME)
    manager.save(checkpoint_number=0)
    train_utils.serialize_config(params, temp)
    with open(os.path.join(temp, REPORT_FILE), 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=2)
  return report
