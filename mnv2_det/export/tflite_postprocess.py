"""The SSD post-process as TFLite's `TFLite_Detection_PostProcess` custom op.

Same approach as Model Garden's `nms_version='tflite'`
(official/vision/modeling/layers/detection_generator.py): an empty tf.function
annotated with `experimental_implements` naming the op and its attributes. The TFLite
converter (MLIR, with `allow_custom_ops=True`) replaces each call of it by the custom
op; the TF function itself returns dummies and must never be run for real.

Op contract (tensorflow/lite/kernels/detection_postprocess.cc):
  inputs  box encodings `[1, N, 4]` Faster R-CNN codes (ty, tx, th, tw) with the
          y/x/h/w scale attributes (here 10, 10, 5, 5, docs/reference.md, "Box coder"),
          class scores `[1, N, num_classes + 1]` AFTER the activation (the op applies
          none; we feed sigmoid), column 0 background, and anchors `[N, 4]` CENTER-SIZE
          (ycenter, xcenter, h, w) normalized;
  outputs boxes `[1, K, 4]` normalized `[ymin, xmin, ymax, xmax]` of the frame the
          anchors are normalized to (ours: the network input frame, docs/frames.md),
          classes `[1, K]` float 0-based among the real classes (= contiguous
          index - 1), scores `[1, K]`, num_detections `[1]`.
The `num_classes` attribute excludes background: the op sees one more score column
and skips it (label offset 1).

Differences from `mnv2_det.ops.postprocess` (the Keras/SavedModel path): no
`pre_nms_top_k` cut, no clamp of th/tw before exp, and NMS runs on unclipped boxes
of the network input frame (our TF path clips to the image first); `TFLiteDetector` maps the
boxes to original pixels, clips and drops boxes left with zero area afterwards.
"""

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow as tf

from mnv2_det.ops import box_coder

OP_NAME = 'TFLite_Detection_PostProcess'
# The converter (TF 2.20) does not copy `detections_per_class` into the op's options
# (measured: absent from the flexbuffer), so the kernel's default applies.
KERNEL_DETECTIONS_PER_CLASS = 100
# Regular NMS ignores this; fast NMS keeps the best class of each anchor only.
MAX_CLASSES_PER_DETECTION = 1


@dataclasses.dataclass(frozen=True)
class PostProcessConfig:
  """Attributes of the custom op (see the module docstring).

  Attributes:
    num_classes: real classes, WITHOUT background.
    max_detections: detections per image (output rows).
    detections_per_class: per-class cap of regular NMS; the converted op uses
      KERNEL_DETECTIONS_PER_CLASS whatever this says (`tflite_convert` warns).
    score_threshold: keep scores strictly above this.
    iou_threshold: NMS IoU threshold.
    use_regular_nms: per-class NMS (as the TF path) if true; else the op's "fast"
      class-agnostic NMS over each anchor's best class.
    scale_factors: (y, x, h, w) box-coder scale factors.
  """
  num_classes: int
  max_detections: int
  detections_per_class: int
  score_threshold: float
  iou_threshold: float
  use_regular_nms: bool = True
  scale_factors: Sequence[float] = box_coder.SCALE_FACTORS

  def implements_signature(self) -> str:
    """The `experimental_implements` string (an `NameAttrList` text proto)."""
    y, x, h, w = (float(v) for v in self.scale_factors)
    # repr() keeps small thresholds (1e-8) that '%f' would round to 0.
    attrs = [('max_detections', 'i', int(self.max_detections)),
             ('max_classes_per_detection', 'i', MAX_CLASSES_PER_DETECTION),
             ('detections_per_class', 'i', int(self.detections_per_class)),
             ('use_regular_nms', 'b', 'true' if self.use_regular_nms else 'false'),
             ('nms_score_threshold', 'f', repr(float(self.score_threshold))),
             ('nms_iou_threshold', 'f', repr(float(self.iou_threshold))),
             ('y_scale', 'f', repr(y)), ('x_scale', 'f', repr(x)),
             ('h_scale', 'f', repr(h)), ('w_scale', 'f', repr(w)),
             ('num_classes', 'i', int(self.num_classes))]
    parts = [f'name: "{OP_NAME}"']
    parts += [f'attr {{ key: "{key}" value {{ {kind}: {value} }} }}'
              for key, kind, value in attrs]
    return ' '.join(parts)


def center_size_anchors(anchors: np.ndarray) -> np.ndarray:
  """`[N, 4]` normalized yxyx -> `[N, 4]` float32 (ycenter, xcenter, h, w)."""
  anchors = np.asarray(anchors, np.float32)
  if anchors.ndim != 2 or anchors.shape[1] != 4:
    raise ValueError(f'anchors must be [N, 4], got shape {anchors.shape}')
  ymin, xmin, ymax, xmax = (anchors[:, i] for i in range(4))
  return np.stack([(ymin + ymax) / 2, (xmin + xmax) / 2, ymax - ymin, xmax - xmin],
                  axis=-1).astype(np.float32)


def make_postprocess_fn(config: PostProcessConfig):
  """A tf.function `(box_encodings, class_scores, anchors) -> (boxes, classes, scores,
  num_detections)` that the TFLite converter turns into the custom op.

  The returned values are dummies in TF (scalars 0): convert, never run.
  """

  @tf.function(experimental_implements=config.implements_signature())
  def detection_postprocess(box_encodings, class_scores, anchors):  # pylint: disable=unused-argument
    dummy = lambda name: tf.constant(0.0, tf.float32, name=name)
    return (dummy('detection_boxes'), dummy('detection_classes'),
            dummy('detection_scores'), dummy('num_detections'))

  return detection_postprocess
