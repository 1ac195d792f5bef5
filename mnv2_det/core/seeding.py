"""One seed for a training run: data order, augmentation and weight initialization.

`task.seed` (configs/ssdlite.py, default None: unseeded) is the one setting:
  * data: it becomes `task.train_data.seed` when that is unset, which seeds the shuffle
    order and, through stateless per-element seeds `[seed, element index]`, every SSD
    random crop and flip (data/input_pipeline.py, data/augment.py); a seeded pipeline
    also keeps its element order (`deterministic` tf.data);
  * initialization and anything else random: `tf_keras.utils.set_random_seed` seeds
    Python's `random`, NumPy, TF's global seed and the seeds Keras draws for unseeded
    initializers, before the model is built.
`task.op_determinism: true` also calls `tf.config.experimental.enable_op_determinism()`
(needs `task.seed`), so two runs of one command on one machine end with the same
weights (`final weights sha256`). An explicit `task.train_data.seed` seeds the data
alone and wins over `task.seed` there.
"""

import tensorflow as tf
import tf_keras

# np.random.seed takes [0, 2**32); tf.data and the stateless ops take int64.
MAX_SEED = 2**31 - 1


def check_seed(seed, name: str = 'task.seed') -> None:
  """ValueError naming `name` unless `seed` is None or an int in [0, MAX_SEED]."""
  if seed is None:
    return
  if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
    raise ValueError(f'{name} must be an integer in [0, {MAX_SEED}] or null, got {seed!r}')


def apply(params):
  """Seeds the process as `params.task` says and returns the params to train with.

  Call once, before the task and model are built. Returns `params` itself when
  `task.seed` is None, else a locked copy whose `task.train_data.seed` is `task.seed`
  if it was unset.

  Raises:
    ValueError: a bad seed, or `task.op_determinism` without `task.seed`.
  """
  task = params.task
  seed = getattr(task, 'seed', None)
  check_seed(seed)
  check_seed(task.train_data.seed, 'task.train_data.seed')
  determinism = bool(getattr(task, 'op_determinism', False))
  if determinism and seed is None:
    raise ValueError('task.op_determinism needs task.seed (an integer): deterministic '
                     'ops with unseeded random initialization still differ run to run')
  if seed is None:
    return params
  tf_keras.utils.set_random_seed(seed)
  if determinism:
    tf.config.experimental.enable_op_determinism()
  if task.train_data.seed is None:
    params = params.replace(task={'train_data': {'seed': seed}})
    params.lock()
  return params
