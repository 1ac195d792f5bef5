"""Two tools/train.py workers on 127.0.0.1 with TF_CONFIG and MultiWorkerMirroredStrategy
train a few steps on the synthetic set and end with identical weights."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.data import shapes

pytestmark = pytest.mark.slow  # tools/train.py subprocesses (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 4


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def test_two_workers_end_with_identical_weights(tmp_path):
  data = tmp_path / 'data'
  shapes.generate(str(data), num_train=16, num_val=4, seed=11)
  workers = [f'127.0.0.1:{p}' for p in _free_ports(2)]
  overrides = ','.join([
      f'task.train_data.annotation_file={data}/annotations/instances_train.json',
      f'task.train_data.image_dir={data}/train',
      f'task.validation_data.annotation_file={data}/annotations/instances_val.json',
      f'task.validation_data.image_dir={data}/val',
      'task.train_data.global_batch_size=4',
      'task.model.input_size=[96,96,3]',
      'task.model.backbone.mnv2_det.depth_multiplier=0.35',
      f'trainer.train_steps={STEPS}', f'trainer.steps_per_loop={STEPS}',
      f'trainer.summary_interval={STEPS}', f'trainer.checkpoint_interval={STEPS}',
      'runtime.distribution_strategy=multi_worker_mirrored',
  ])
  procs = []
  for index in range(2):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL='2', TF_CONFIG=json.dumps(
        {'cluster': {'worker': workers}, 'task': {'type': 'worker', 'index': index}}))
    procs.append(subprocess.Popen(
        [sys.executable, os.path.join(ROOT, 'tools', 'train.py'), '--experiment',
         'ssdlite_mnv2_shapes', '--mode', 'train', '--model_dir',
         str(tmp_path / f'worker{index}'), '--params_override', overrides],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env))
  outputs = []
  for proc in procs:
    try:
      outputs.append(proc.communicate(timeout=600)[0])
    except subprocess.TimeoutExpired:
      for p in procs:
        p.kill()
      pytest.fail('multi-worker training did not finish in 600 s')
  for proc, out in zip(procs, outputs):
    assert proc.returncode == 0, out[-4000:]
  assert 'MultiWorkerMirroredStrategy' in outputs[0] or 'multi_worker' in outputs[0].lower()
  # Non-chief workers checkpoint to a temporary folder that is removed; every worker
  # prints the sha256 of its final weights.
  prints = [[l for l in out.splitlines() if l.startswith('final weights sha256: ')]
            for out in outputs]
  assert all(len(p) == 1 for p in prints), outputs[1][-3000:]
  assert prints[0][0] == prints[1][0]
  reader = tf.train.load_checkpoint(tf.train.latest_checkpoint(tmp_path / 'worker0'))
  assert int(reader.get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')) == STEPS
  # Training ran (the comparison is not between two initial states): BN moved.
  variances = [n for n in reader.get_variable_to_shape_map()
               if n.endswith('moving_variance/.ATTRIBUTES/VARIABLE_VALUE')]
  assert len(variances) == 76
  assert all(not np.allclose(reader.get_tensor(n), 1.0) for n in variances)
