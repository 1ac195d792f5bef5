"""In-process checks of the train CLI's guards (the subprocess runs are in
test_train_tool.py), and the parsing `benchmarks/benchmark.py train_cli` relies on."""

import json
import os
import sys

import numpy as np
import pytest
import tensorflow as tf

import mnv2_det  # pylint: disable=unused-import
from mnv2_det.data import input_pipeline
from mnv2_det.data import shapes
from mnv2_det.data import tfrecord_reader
from mnv2_det.cli import train as train_cli
from official.core import exp_factory
from official.core import train_utils

# benchmarks/ is a folder of scripts (not installed): its modules import each other by
# file name.
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                'benchmarks'))
import train_speed  # pylint: disable=g-import-not-at-top,wrong-import-position


def _model_dir_with(tmp_path, params):
  train_utils.serialize_config(params, str(tmp_path))
  tf.train.Checkpoint(v=tf.Variable(1.0)).save(str(tmp_path / 'ckpt'))
  return str(tmp_path)


def test_model_dir_check_allows_thresholds_but_not_architecture(tmp_path):
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  model_dir = _model_dir_with(tmp_path, params)
  params.task.model.detection_generator.score_threshold = 0.3
  params.task.model.freeze_batchnorm = True
  params.trainer.train_steps = 99
  train_cli.check_model_dir(params, model_dir)  # resumable changes pass
  params.task.model.feature_maps.layer_depths = [512, 256, 256, 64]
  with pytest.raises(ValueError, match=r'task.model.feature_maps.layer_depths was '
                                       r'\[512, 256, 256, 128\], now \[512, 256, 256, 64\]'):
    train_cli.check_model_dir(params, model_dir)


def test_empty_model_dir_passes(tmp_path):
  train_cli.check_model_dir(exp_factory.get_exp_config('ssdlite_mnv2_shapes'), str(tmp_path))


class _Trainer:
  def __init__(self, step):
    self.global_step = tf.Variable(step)


@pytest.mark.parametrize('loss', [np.nan, np.inf, 2e6])
def test_divergence_guard_names_the_steps(loss):
  guard = train_cli.DivergenceGuard(_Trainer(40), steps_per_loop=10, model_dir=None,
                                    loss_upper_bound=1e6)
  guard({'total_loss': np.float32(1.0), 'cls_loss': np.float32(0.5)})  # fine
  with pytest.raises(train_cli.TrainingDiverged, match='in steps 31..40'):
    guard({'total_loss': np.float32(loss)})


def test_progress_line(capsys, monkeypatch):
  params = exp_factory.get_exp_config('ssdlite_mnv2_shapes')
  batch = params.task.train_data.global_batch_size
  clock = iter([100.0, 110.0])  # the action's start, then 10 s later at step 50
  monkeypatch.setattr(train_cli.time, 'perf_counter', lambda: next(clock))
  trainer = _Trainer(0)
  action = train_cli.ProgressAction(trainer, params, model_dir=None)
  trainer.global_step.assign(50)
  action({'total_loss': 1.5, 'cls_loss': 1.0, 'box_loss': 0.5, 'learning_rate': 0.01})
  line = capsys.readouterr().out.strip()
  # 50 steps of `batch` images in 10 s; (2600 - 50) steps left at 0.2 s each = 8m30s.
  rate = batch * 50 / 10.0
  assert line == (f'step 50/2600 | loss 1.5000 (cls_loss 1.0000, box_loss 0.5000) | '
                  f'lr 0.01 | {rate:.1f} img/s | ETA 8m30s')
  # benchmarks/benchmark.py train_cli reads images/s back from this line.
  assert float(train_speed.IMAGES_PER_SECOND.findall(line + '\n')[0]) == rate


def test_benchmark_tfrecord_matches_the_coco_json(tmp_path):
  data = shapes.generate(str(tmp_path / 'shapes'), 5, 0, seed=4)
  records = str(tmp_path / 'train.tfrecord')
  assert train_speed.write_tfrecord(data['train_annotations'], data['train_images'],
                                    records, max_images=4) == 4
  cmap = input_pipeline.load_category_map(data['train_annotations'])
  with open(data['train_annotations'], encoding='utf-8') as f:
    coco = json.load(f)
  examples = list(tfrecord_reader.read_tfrecords(records, cmap))
  assert [int(e['source_id']) for e in examples] == [im['id'] for im in coco['images'][:4]]
  for example, image in zip(examples, coco['images']):
    count = sum(a['image_id'] == image['id'] for a in coco['annotations'])
    assert example['boxes'].shape == (count, 4)
    assert example['image'].shape == (image['height'], image['width'], 3)
