"""SSDLite model, data, loss and task configs (Model Garden hyperparams)."""

import dataclasses
from typing import List, Optional

from official.core import config_definitions as cfg
from official.modeling import hyperparams
from official.vision.configs import common

from mnv2_det.configs import backbones


def _detector_backbone():
  # The OD API SSDLite feature extractor taps these two endpoints
  # (docs/reference.md, "SSD feature maps").
  return backbones.Backbone(
      type='mnv2_det',
      mnv2_det=backbones.MobileNetV2Det(endpoints=['layer_15/expansion_output', 'layer_19']))


@dataclasses.dataclass
class FeatureMaps(hyperparams.Config):
  """SSD extra layers (OD API `layer_depth = [-1, -1, 512, 256, 256, 128]`)."""
  layer_depths: List[int] = dataclasses.field(default_factory=lambda: [512, 256, 256, 128])
  min_depth: int = 16
  use_depthwise: bool = True


@dataclasses.dataclass
class Anchor(hyperparams.Config):
  """OD API `ssd_anchor_generator` (docs/reference.md, "SSD anchors")."""
  num_layers: int = 6
  min_scale: float = 0.2
  max_scale: float = 0.95
  aspect_ratios: List[float] = dataclasses.field(
      default_factory=lambda: [1.0, 2.0, 0.5, 3.0, 1.0 / 3])
  interpolated_scale_aspect_ratio: float = 1.0
  reduce_boxes_in_lowest_layer: bool = True


@dataclasses.dataclass
class Head(hyperparams.Config):
  """SSDLite box predictor: kernel 3, truncated normal 0.03, L2 4e-5."""
  kernel_size: int = 3
  init_stddev: float = 0.03
  weight_decay: float = 4e-5
  class_prior_prob: float = 0.01


@dataclasses.dataclass
class DetectionGenerator(hyperparams.Config):
  """Post-processing (OD API: score 1e-8, IoU 0.6, 100 per class, 100 total)."""
  score_threshold: float = 1e-8
  iou_threshold: float = 0.6
  max_detections_per_class: int = 100
  max_num_detections: int = 100
  pre_nms_top_k: int = 1000
  # False: NMS on unclipped boxes, then clip (OD API order; set by OD API imports).
  clip_before_nms: bool = True


@dataclasses.dataclass
class SSDLite(hyperparams.Config):
  """The detector.

  `num_classes` counts background (index 0), as Model Garden's RetinaNet: 91 for COCO's
  ids 1..90, 81 for the paper's 80 classes + background.
  `norm_activation`: `norm_momentum`/`norm_epsilon` apply to the extra layers and the
  head (OD API 0.9997 / 1e-3); the backbone takes its own from its preset unless set
  there. `use_sync_bn` applies to all three. `activation` must be 'relu6': ReLU6 is part
  of the MobileNetV2 / SSDLite architecture and of the OD API checkpoints, so the
  builder rejects any other value (ValueError) rather than ignore it.
  """
  num_classes: int = 91
  input_size: List[int] = dataclasses.field(default_factory=lambda: [320, 320, 3])
  backbone: backbones.Backbone = dataclasses.field(default_factory=_detector_backbone)
  feature_maps: FeatureMaps = dataclasses.field(default_factory=FeatureMaps)
  anchor: Anchor = dataclasses.field(default_factory=Anchor)
  head: Head = dataclasses.field(default_factory=Head)
  detection_generator: DetectionGenerator = dataclasses.field(
      default_factory=DetectionGenerator)
  norm_activation: common.NormActivation = dataclasses.field(
      default_factory=lambda: common.NormActivation(
          activation='relu6', norm_momentum=0.9997, norm_epsilon=1e-3, use_sync_bn=False))
  feature_map_weight_decay: float = 4e-5
  feature_map_init_stddev: float = 0.03
  freeze_batchnorm: bool = False


@dataclasses.dataclass
class Parser(hyperparams.Config):
  """Augmentation and resizing (OD API: random flip + ssd_random_crop, fixed resize)."""
  resize_mode: str = 'fixed'  # 'fixed' (stretch, OD API) or 'keep_aspect' (pad bottom/right)
  aug_random_flip: bool = True
  aug_ssd_random_crop: bool = True
  max_num_instances: int = 100
  match_threshold: float = 0.5
  unmatched_threshold: float = 0.5


@dataclasses.dataclass
class DataConfig(cfg.DataConfig):
  """Input: a COCO JSON + image folder (`annotation_file`, `image_dir`), or Model Garden
  TFRecords in `input_path`.

  `is_training` turns on augmentation, shuffling and repetition (groundtruths for the
  evaluator otherwise). `shuffle_buffer_size` is the shuffle buffer when training, in
  images (>= the image count: a full shuffle; a COCO JSON source holds paths and
  annotations, TFRecords hold encoded images). `drop_remainder` drops a last short
  batch (static batch size); evaluation data wants False, so every image is scored.
  `dtype` is the dtype of the images the pipeline returns: 'float32', 'bfloat16' or
  'float16' (Model Garden's parsers; e.g. 'bfloat16' with runtime.mixed_precision_dtype
  'bfloat16'); labels keep theirs.
  """
  annotation_file: str = ''
  image_dir: str = ''
  global_batch_size: int = 8
  is_training: bool = True
  dtype: str = 'float32'
  shuffle_buffer_size: int = 1000
  parser: Parser = dataclasses.field(default_factory=Parser)


@dataclasses.dataclass
class Losses(hyperparams.Config):
  """`classification`: 'sigmoid_hem' (OD API default) or 'focal' (alpha 0.25, gamma 2).

  Weight decay lives with the layers and reaches the loss through `model.losses`
  (`regularization_loss`): L2 on conv kernels, none on depthwise kernels (slim), set
  per part by `model.backbone.mnv2_det` (preset / weight_decay),
  `model.feature_map_weight_decay` and `model.head.weight_decay`.
  `l2_weight_decay` is Model Garden's one knob for all of them: 0 (default) keeps the
  per-part values; > 0 REPLACES them: every conv kernel w of backbone, extra layers and
  head then adds `l2_weight_decay * tf.nn.l2_loss(w)` (depthwise kernels only with
  `regularize_depthwise`), as MG's RetinaNet passes `l2(l2_weight_decay / 2)` to its
  builders (and as the mnv2_det backbone builder treats it in MG's own tasks).
  """
  classification: str = 'sigmoid_hem'
  classification_weight: float = 1.0
  localization_weight: float = 1.0
  num_hard_examples: int = 3000
  mining_iou_threshold: float = 0.99
  max_negatives_per_positive: int = 3
  min_negatives_per_image: int = 3
  focal_alpha: float = 0.25
  focal_gamma: float = 2.0
  l2_weight_decay: float = 0.0


@dataclasses.dataclass
class SSDLiteTask(cfg.TaskConfig):
  model: SSDLite = dataclasses.field(default_factory=SSDLite)
  train_data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(is_training=True))
  validation_data: DataConfig = dataclasses.field(
      default_factory=lambda: DataConfig(is_training=False, drop_remainder=False))
  losses: Losses = dataclasses.field(default_factory=Losses)
  annotation_file: Optional[str] = None  # COCO JSON for COCOEvaluator; default: validation's
  per_category_metrics: bool = False
  # What `init_checkpoint` initializes: 'all' (layers whose shapes changed, e.g. the class
  # predictor for a new class count, start fresh) or 'backbone'.
  init_checkpoint_modules: str = 'all'
  # One seed for data order, augmentation and weight initialization (core/seeding.py);
  # None: unseeded. `op_determinism` (needs `seed`) also makes TF ops deterministic,
  # so one command run twice on one machine gives the same weights.
  seed: Optional[int] = None
  op_determinism: bool = False


@dataclasses.dataclass
class EarlyStopping(hyperparams.Config):
  """Stops `train_and_eval` once the validation `metric` has not improved for
  `patience` evaluations in a row (cli/early_stopping.py).

  `metric` is a key of the eval logs (e.g. 'AP', 'AP50'); `metric_comp` 'higher' or
  'lower' says which way is better; an evaluation improves when it beats the best so far
  by more than `min_delta`. `patience` 0 (default) turns it off. The best checkpoint
  (`trainer.best_checkpoint_export_subdir`) is left as it is; the run ends with a
  checkpoint of the step it stopped at. The count restarts when a run resumes.
  """
  patience: int = 0
  metric: str = 'AP'
  metric_comp: str = 'higher'
  min_delta: float = 0.0


@dataclasses.dataclass
class EvalPlots(hyperparams.Config):
  """Plots after every training-time evaluation (evaluation/train_plots.py): PR curves,
  confusion matrix and F1 curve into MODEL_DIR/plots/step_N/ and the eval TensorBoard
  logs. `confusion_score_threshold` None: the best-F1 threshold of that evaluation."""
  enabled: bool = True
  confusion_score_threshold: Optional[float] = None


@dataclasses.dataclass
class Trainer(cfg.TrainerConfig):
  """Model Garden's trainer config plus early stopping and evaluation plots."""
  early_stopping: EarlyStopping = dataclasses.field(default_factory=EarlyStopping)
  eval_plots: EvalPlots = dataclasses.field(default_factory=EvalPlots)
