"""Quantization-aware training configs: the `quantization` task field and the
`ssdlite_mnv2_shapes_qat` experiment.

Model Garden's pattern (`official/projects/qat/vision/configs/retinanet.py`): the QAT
task config is the float task config plus `quantization`, MG's own `Quantization`
dataclass (`pretrained_original_checkpoint`: the float model to fine-tune), here with
one more field, `range_init_batches`. Fields MG has but this detector does not support
(another `version`, `change_num_bits`, parts left float) are rejected by the task
with an error naming the field (`tasks/ssdlite_qat.py`).
"""

import dataclasses
import os
from typing import Optional

from official.core import config_definitions as cfg
from official.core import exp_factory
from official.modeling import optimization
from official.projects.qat.vision.configs import common

from mnv2_det.configs import experiments
from mnv2_det.configs import ssdlite

# The QAT experiment; also the config classes of a QAT params.yaml read without one
# (core/params.py).
EXPERIMENT = 'ssdlite_mnv2_shapes_qat'
# Where the README's main job writes the float shapes model.
SHAPES_FLOAT_MODEL_DIR = os.environ.get('MNV2_DET_SHAPES_MODEL_DIR', 'runs/shapes')


@dataclasses.dataclass
class Quantization(common.Quantization):
  """MG's `Quantization` (version 'v2', 8 bits) with every part quantized.

  `pretrained_original_checkpoint`: the float checkpoint (prefix, or a model dir: its
  latest checkpoint) the QAT model starts from. `range_init_batches`: before the first
  step, every activation range starts at the float model's min / max over this many
  training batches (0: tfmot's initial [-6, 6], which its EMA of decay 0.999 leaves
  only after thousands of steps).
  """
  quantize_detection_decoder: bool = True  # the SSD extra layers
  quantize_detection_head: bool = True
  range_init_batches: int = 8


@dataclasses.dataclass
class SSDLiteQATTask(ssdlite.SSDLiteTask):
  """The SSDLite task config plus `quantization` (None: a float model)."""
  quantization: Optional[Quantization] = None


@exp_factory.register_config_factory(EXPERIMENT)
def ssdlite_mnv2_shapes_qat() -> cfg.ExperimentConfig:
  """QAT fine-tune of a trained `ssdlite_mnv2_shapes` model (SHAPES_FLOAT_MODEL_DIR).

  Same model, data and batch; Adam at a constant-then-cosine low learning rate
  (1e-3 decayed over the run, no warmup), as QAT fine-tunes start from trained
  weights; 600 steps (~1/4 of the float run).
  """
  float_config = experiments.ssdlite_mnv2_shapes()
  task = SSDLiteQATTask.from_args(
      quantization=Quantization(pretrained_original_checkpoint=SHAPES_FLOAT_MODEL_DIR),
      **float_config.task.as_dict())
  train_steps = 600
  trainer = float_config.trainer.replace(
      train_steps=train_steps, validation_interval=200, checkpoint_interval=200,
      optimizer_config=optimization.OptimizationConfig({
          'optimizer': {'type': 'adam', 'adam': {}},
          'learning_rate': {'type': 'cosine', 'cosine': {
              'initial_learning_rate': 0.001, 'decay_steps': train_steps}},
      }))
  return cfg.ExperimentConfig(task=task, runtime=float_config.runtime, trainer=trainer,
                              restrictions=float_config.restrictions)
