"""Two tools/train.py workers (MultiWorkerMirroredStrategy over TF_CONFIG on 127.0.0.1)
at global batch B end where one worker at batch B ends, from the same start.

Why they can agree, and what the test sets up for it:
  - Same start: both runs restore one initial checkpoint (`task.init_checkpoint`,
    `init_checkpoint_modules: all`), written here from a seeded model.
  - Same batches: Model Garden builds the training input with
    `strategy.distribute_datasets_from_function`, so tf.data's auto-shard policy does
    not apply; the input pipeline itself (`data/input_pipeline._assemble`) shards the
    JSON's image records by element, `dataset.shard(2, worker)`, before shuffling.
    With augmentation off and `shuffle_buffer_size: 1` (no shuffle: records in JSON
    order), worker w's step s batch is records 4s + w and 4s + 2 + w, and the one
    worker's step s batch is records 4s..4s+3: the union of the two workers' batches
    is the one worker's batch at every step. The probe (tests/train_probe.py
    --probe_batches) prints every replica's source ids from inside the train step, so
    this is checked, not assumed.
  - Same loss: each replica's loss is divided by its own matched-anchor count (the OD
    API's normalize_loss_by_num_matches, as Model Garden's RetinaNet does per replica),
    then by num_replicas_in_sync, and the gradients are summed. That equals the one
    worker's gradient exactly when the two replicas' batches have equal positives, so
    every image here has the same two boxes (contents and classes differ): every
    replica batch has the same positive count (checked from the probe). The L2 term is
    divided by num_replicas and summed back as well.
  - Same BatchNorm: training-mode BN normalizes with the statistics of the replica's
    own batch (2 images here, 4 for the one worker), so the two setups are different
    computations unless BN is synchronized or frozen. Sync BN over MultiWorkerMirrored
    on CPU costs a gRPC all-reduce per BN layer per pass (76 layers, forward and
    backward): 2 steps took ~9 min here, so BN is frozen instead
    (`freeze_batchnorm: true`, inference-mode BN, gamma/beta fixed), with moving
    statistics first estimated on the training images (precise BN,
    mnv2_det.analysis.bn_audit.recalibrate) so activations are normalized.
  - Plain SGD (no momentum, constant lr), not the experiment's Adam: Adam divides by
    the gradient's running RMS, so a wrongly scaled loss would change nothing it
    computes; SGD's update is proportional to the gradient.

What remains is float rounding (batch-2 vs batch-4 convolutions, all-reduce sums), and
it is why the weights are compared after ONE step. Measured on this model without any
distribution: scaling every weight by (1 + 1e-7 N(0, 1)) moves the gradient by ~1.3% of
its largest entry (ReLU6 inputs at a kink), so a second step starts from weights that
differ by rounding and already takes a visibly different gradient (2 steps: the runs
differ by 11% of the move, 4 steps: 30%; the same at a 10x smaller learning rate, and
an in-process 2-device MirroredStrategy drifts the same way). After one step they
agree to 5e-8, while a wrongly scaled loss would be off by the whole move.
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
import tf_keras
import yaml
from PIL import Image

from official.core import task_factory

from mnv2_det.analysis import bn_audit
from mnv2_det.core import checkpoints
from mnv2_det.core import params as params_lib

pytestmark = pytest.mark.slow  # tools/train.py subprocesses (tests/conftest.py)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, 'tests', 'train_probe.py')
EXPERIMENT = 'ssdlite_mnv2_shapes'
NUM_IMAGES = 4  # one step (module docstring)
GLOBAL_BATCH = 4
STEPS = NUM_IMAGES // GLOBAL_BATCH
IMAGE_SIDE = 96
INPUT = 64
# Early kernels' gradients are ~100-300 at the start (weights ~0.2): the step moves
# them by up to ~0.05, far beyond rounding.
LEARNING_RATE = 2e-4
# Every image holds these two boxes (x, y, w, h pixels): equal positives per image.
BOXES = ((8, 10, 40, 34), (50, 44, 40, 46))
NUM_CATEGORIES = 5
# Max |w_2workers - w_1worker| over every model variable (weights and BN moving
# statistics) after STEPS steps. Measured: see the test's printout (rounding only).
WEIGHTS_ATOL = 1e-6
TIMEOUT_S = 600
_BATCH_LINE = re.compile(r'^probe batch: step (\d+) replica (\d+) source_ids \[([\d ]*)\] '
                         r'positives (\d+)$')


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(('127.0.0.1', 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _write_dataset(folder):
  """NUM_IMAGES PNGs (noise + two filled rectangles at BOXES, colours by class) and
  their COCO JSON; image ids 1..NUM_IMAGES in file order."""
  rng = np.random.default_rng(17)
  os.makedirs(os.path.join(folder, 'images'))
  colours = rng.integers(0, 256, size=(NUM_CATEGORIES, 3))
  images, annotations = [], []
  for image_id in range(1, NUM_IMAGES + 1):
    pixels = rng.integers(60, 190, size=(IMAGE_SIDE, IMAGE_SIDE, 3))
    for x, y, w, h in BOXES:
      category = int(rng.integers(1, NUM_CATEGORIES + 1))
      pixels[y:y + h, x:x + w] = colours[category - 1]
      annotations.append({'id': len(annotations) + 1, 'image_id': image_id,
                          'category_id': category, 'bbox': [x, y, w, h],
                          'area': w * h, 'iscrowd': 0})
    name = f'{image_id:03d}.png'
    Image.fromarray(pixels.astype(np.uint8)).save(os.path.join(folder, 'images', name))
    images.append({'id': image_id, 'file_name': name, 'height': IMAGE_SIDE,
                   'width': IMAGE_SIDE})
  path = os.path.join(folder, 'instances.json')
  with open(path, 'w', encoding='utf-8') as f:
    json.dump({'images': images, 'annotations': annotations,
               'categories': [{'id': i, 'name': f'c{i}'}
                              for i in range(1, NUM_CATEGORIES + 1)]}, f)
  return path, os.path.join(folder, 'images')


def _config(tmp_path):
  annotations, image_dir = _write_dataset(str(tmp_path / 'data'))
  data = {'annotation_file': annotations, 'image_dir': image_dir}
  config = {
      'task': {
          'model': {'input_size': [INPUT, INPUT, 3],
                    'backbone': {'mnv2_det': {'depth_multiplier': 0.35}},
                    'freeze_batchnorm': True},
          # Focal loss: every anchor counts. Hard example mining ranks negatives by
          # loss, and a float-rounding tie flip between the batch-2 and batch-4
          # computations would change which anchors are selected (discretely).
          'losses': {'classification': 'focal'},
          'train_data': dict(data, global_batch_size=GLOBAL_BATCH, shuffle_buffer_size=1,
                             seed=3, parser={'aug_random_flip': False,
                                             'aug_ssd_random_crop': False}),
          'validation_data': dict(data, global_batch_size=GLOBAL_BATCH),
      },
      'trainer': {
          'train_steps': STEPS, 'steps_per_loop': STEPS, 'summary_interval': STEPS,
          'checkpoint_interval': STEPS,
          'optimizer_config': {
              'optimizer': {'type': 'sgd', 'sgd': {'momentum': 0.0}},
              # Constant, as a schedule: a plain constant lr reaches the progress line
              # as a MirroredVariable, which tools/train.py cannot print (float()).
              'learning_rate': {'type': 'stepwise', 'stepwise': {
                  'boundaries': [10 * STEPS], 'values': [LEARNING_RATE] * 2}},
              'warmup': {'type': None}},
      },
  }
  path = str(tmp_path / 'config.yaml')
  with open(path, 'w', encoding='utf-8') as f:
    yaml.safe_dump(config, f)
  return path


def _initial_checkpoint(config, folder):
  """A seeded model of `config` with BN statistics of the training images, written as
  the trainer writes Checkpoint(model=...)."""
  params = params_lib.build_params(EXPERIMENT, config_files=[config])
  tf_keras.utils.set_random_seed(0)
  task = task_factory.get_task(params.task)
  model = task.build_model()
  bn_audit.recalibrate(model, bn_audit.audit_dataset(task, params, 'train'), STEPS,
                       eager=True)
  return tf.train.Checkpoint(model=model).write(os.path.join(folder, 'init'))


def _start(config, model_dir, init, strategy, tf_config=None):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CONFIG'}
  env['TF_CPP_MIN_LOG_LEVEL'] = '2'
  if tf_config:
    env['TF_CONFIG'] = json.dumps(tf_config)
  return subprocess.Popen(
      [sys.executable, PROBE, '--probe_batches', '--experiment', EXPERIMENT,
       '--mode', 'train', '--model_dir', model_dir, '--config_file', config,
       '--params_override',
       f'task.init_checkpoint={init},runtime.distribution_strategy={strategy}'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def _batches(output):
  """{(step, replica): (source ids, positives)} from the probe's lines."""
  found = {}
  for line in output.splitlines():
    match = _BATCH_LINE.match(line.strip())
    if match:
      step, replica, ids, positives = match.groups()
      assert (int(step), int(replica)) not in found, line
      found[int(step), int(replica)] = ([int(i) for i in ids.split()], int(positives))
  return found


def _model_values(prefix):
  """{model variable path: value} of a Checkpoint(model=...) checkpoint."""
  reader = tf.train.load_checkpoint(prefix)
  return {path: reader.get_tensor(key)
          for path, key in checkpoints.model_variable_keys(prefix).items()}


def test_two_workers_match_one_worker_at_the_same_global_batch(tmp_path):
  config = _config(tmp_path)
  init = _initial_checkpoint(config, str(tmp_path / 'init'))
  workers = [f'127.0.0.1:{p}' for p in _free_ports(2)]
  procs = {'single': _start(config, str(tmp_path / 'single'), init, 'mirrored')}
  for index in range(2):
    procs[index] = _start(config, str(tmp_path / f'worker{index}'), init,
                          'multi_worker_mirrored',
                          {'cluster': {'worker': workers},
                           'task': {'type': 'worker', 'index': index}})
  outputs = {}
  for name, proc in procs.items():
    try:
      outputs[name] = proc.communicate(timeout=TIMEOUT_S)[0]
    except subprocess.TimeoutExpired:
      for p in procs.values():
        p.kill()
      pytest.fail(f'training did not finish in {TIMEOUT_S} s')
  for name, proc in procs.items():
    assert proc.returncode == 0, (name, outputs[name][-4000:])

  # The strategies, from the trainers' strategy objects (tests/train_probe.py).
  for name, out in outputs.items():
    want = ('probe: strategy MirroredStrategy, multi-worker False, replicas in sync 1'
            if name == 'single' else
            'probe: strategy CollectiveAllReduceStrategy, multi-worker True, replicas in sync 2')
    assert want in out.splitlines(), (name, out[-3000:])

  # What each replica trained on, step by step.
  batches = {name: _batches(out) for name, out in outputs.items()}
  assert sorted(batches['single']) == [(s, 0) for s in range(STEPS)]
  for index in range(2):
    assert sorted(batches[index]) == [(s, index) for s in range(STEPS)]
  read = {name: [i for (_, _), (ids, _) in sorted(found.items()) for i in ids]
          for name, found in batches.items()}
  print('source ids read: ' + '; '.join(f'{n}: {ids}' for n, ids in read.items()))
  assert sorted(read['single']) == list(range(1, NUM_IMAGES + 1))  # each image once
  assert not set(read[0]) & set(read[1])
  assert sorted(read[0] + read[1]) == sorted(read['single'])
  for step in range(STEPS):
    ids = {w: batches[w][step, w][0] for w in range(2)}
    assert len(ids[0]) == len(ids[1]) == GLOBAL_BATCH // 2
    assert sorted(ids[0] + ids[1]) == sorted(batches['single'][step, 0][0]), step
    # Equal positives per replica: the condition for per-replica normalization to
    # equal the global one (module docstring).
    positives = [batches[w][step, w][1] for w in range(2)]
    assert positives[0] == positives[1] == batches['single'][step, 0][1] // 2 > 0

  # Every worker ends with the same weights (synchronous training)...
  prints = [[l for l in outputs[w].splitlines() if l.startswith('final weights sha256: ')]
            for w in range(2)]
  assert len(prints[0]) == len(prints[1]) == 1 and prints[0] == prints[1]
  # ...and they are the one worker's, up to rounding.
  single = tf.train.latest_checkpoint(str(tmp_path / 'single'))
  multi = tf.train.latest_checkpoint(str(tmp_path / 'worker0'))  # the chief's
  for prefix in (single, multi):
    step = tf.train.load_checkpoint(prefix).get_tensor('global_step/.ATTRIBUTES/VARIABLE_VALUE')
    assert int(step) == STEPS
  single, multi, start = _model_values(single), _model_values(multi), _model_values(init)
  assert single.keys() == multi.keys() == start.keys()
  diff = {k: float(np.abs(multi[k] - single[k]).max()) for k in single}
  moved = {k: float(np.abs(single[k] - start[k]).max()) for k in single}
  worst = max(diff, key=diff.get)
  print(f'max |two workers - one worker| {diff[worst]:.3g} ({"/".join(worst)}, which '
        f'moved {moved[worst]:.3g}); largest move {max(moved.values()):.3g}; '
        f'{sum(v > 0 for v in moved.values())} of {len(moved)} variables moved')
  assert max(diff.values()) <= WEIGHTS_ATOL
  # Training moved the weights far beyond the tolerance (not two initial states).
  assert max(moved.values()) > 100 * WEIGHTS_ATOL
  # Every backbone kernel moved (BN is frozen: its statistics, gamma and beta stay).
  kernels = [k for k in moved if k[0] == 'backbone' and k[-1].endswith('kernel')]
  assert len(kernels) == 52
  assert all(moved[k] > 10 * WEIGHTS_ATOL for k in kernels), {
      k: moved[k] for k in kernels if moved[k] <= 10 * WEIGHTS_ATOL}
