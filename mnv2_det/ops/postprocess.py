"""SSD post-processing: decode, map to original image pixels, fast class-aware NMS.

Pipeline per image (batched except for the NMS call itself):
  1. Top-k over the flattened `[num_anchors * num_real_classes]` real-class logits
     (channel 0, background, is ignored, and so are tail channels past
     `num_real_classes`, which have no dataset category): `pre_nms_top_k` candidates,
     each an (anchor, class) pair.
  2. Sigmoid scores of the candidates only (sigmoid is monotonic).
  3. Decode the candidates' boxes (Faster R-CNN coder, `box_coder.decode`) and map
     them to original image pixels, clipped to the image (`map_boxes_to_original`);
     boxes left with zero area (entirely outside the image) are dropped.
  4. Class-aware greedy NMS in ONE `tf.image.non_max_suppression` call: each box is
     shifted by `class_id * CLASS_OFFSET_STEP` (coordinates normalized to the
     original image lie in [0, 1]) so boxes of different classes never overlap.
  5. At most `max_per_class` per class (first in score order), then `max_total`.

Steps 4-5 give the same detections as running greedy NMS separately per class over
the candidates, keeping `max_per_class` each and merging by score (OD API
`batch_multiclass_non_max_suppression`), because greedy NMS never lets boxes of
different classes interact. The only approximation is step 1: a pair outside the
global top `pre_nms_top_k` is never considered.

Measured on the 2-core CPU (2034 SSD anchors, 91 classes, batch 1, tf.function, other
jobs running): ~2-3 ms with the defaults (NMS stops after `max_total` picks);
~13 ms when `max_per_class < max_total` (NMS must see all 1000 candidates); batch 8
~10 ms. Model Garden's MultilevelDetectionGenerator on the same inputs: 'batched'
~8 ms, 'v1' ~400 ms, 'v2' ~340 ms.

Defaults follow the OD API ssdlite_mobilenet_v2_coco config
(docs/reference.md, "Post-processing"): score threshold 1e-8, IoU 0.6, 100 per class,
100 total, sigmoid scores.
"""

import dataclasses

import tensorflow as tf

from mnv2_det.ops import box_coder

# The detection dict of the model, the SavedModel and every Detector, in this order.
DETECTION_KEYS = ('detection_boxes', 'detection_scores', 'detection_classes',
                  'num_detections')
SCORE_THRESHOLD = 1e-8
IOU_THRESHOLD = 0.6
MAX_PER_CLASS = 100
MAX_TOTAL = 100
# (anchor, class) candidates kept before NMS: 10x the 100 outputs, headroom for
# suppressed duplicates; as fast as 500 within timing noise (2034 x 90 scores).
PRE_NMS_TOP_K = 1000

# Shift between classes for the coordinate-offset trick. Boxes are normalized to
# the original image and clipped, so each class occupies a [c*2, c*2 + 1] band and
# bands are separated by a gap of 1: no IoU across classes. float32 keeps ~1e-5
# absolute precision at the largest offset (2 * 90), far below any IoU that matters.
CLASS_OFFSET_STEP = 2.0

# image_info rows (Model Garden convention, official/vision/ops/preprocess_ops.py).
_ORIGINAL_SIZE_ROW = 0
_SCALE_ROW = 2
_OFFSET_ROW = 3


def map_boxes_to_original(boxes, image_info, input_size):
  """`[B, K, 4]` normalized yxyx boxes of the network input frame -> float32 yxyx
  original image pixels, clipped to the image.

  Model Garden's `resize_and_crop_image` records `image_info` `[B, 4, 2]` =
  `[[original_h, original_w], [scaled_h, scaled_w], [y_scale, x_scale],
  [y_offset, x_offset]]` and maps an original pixel `p` to `p * scale - offset`
  (offset > 0 only for random crops). `input_size` `(H, W)` (python ints or a `[2]` /
  `[B, 2]` tensor) is the network input BEFORE the backbone pads it, the frame boxes
  and anchors are normalized to (docs/frames.md). Per `(y, x)` pair:
  `original = clip((box * (H, W) + offset) / scale, 0, (original_h, original_w))`.
  """
  boxes = tf.cast(boxes, tf.float32)
  image_info = tf.cast(image_info, tf.float32)
  size_yx = tf.reshape(tf.cast(input_size, tf.float32), [-1, 1, 2])
  original_yx = image_info[:, _ORIGINAL_SIZE_ROW:_ORIGINAL_SIZE_ROW + 1, :]
  scale_yx = image_info[:, _SCALE_ROW:_SCALE_ROW + 1, :]
  offset_yx = image_info[:, _OFFSET_ROW:_OFFSET_ROW + 1, :]
  corners = []
  for start in (0, 2):
    yx = boxes[..., start:start + 2] * size_yx
    yx = (yx + offset_yx) / scale_yx
    corners.append(tf.clip_by_value(yx, 0.0, original_yx))
  return tf.concat(corners, axis=-1)


def _static_or_dynamic(tensor, axis):
  """The static size of `tensor.shape[axis]` if known, else a scalar tensor."""
  static = tensor.shape[axis]
  return int(static) if static is not None else tf.shape(tensor)[axis]


def _minimum(a, b):
  """min() for python ints, tf.minimum() once either is a tensor."""
  if isinstance(a, int) and isinstance(b, int):
    return min(a, b)
  return tf.minimum(a, b)


@dataclasses.dataclass(frozen=True)
class NmsSettings:
  """The NMS limits, one object for the model, the SavedModel and the TFLite exporter
  (built from `task.model.detection_generator` by `modeling.factory.nms_settings`).

  Attributes: `postprocess`'s arguments of the same names (module docstring).
  """
  score_threshold: float = SCORE_THRESHOLD
  iou_threshold: float = IOU_THRESHOLD
  max_per_class: int = MAX_PER_CLASS
  max_total: int = MAX_TOTAL
  pre_nms_top_k: int = PRE_NMS_TOP_K
  clip_before_nms: bool = True


def postprocess(cls_logits,
                box_preds,
                anchors,
                image_info,
                input_size,
                score_threshold=SCORE_THRESHOLD,
                iou_threshold=IOU_THRESHOLD,
                max_per_class=MAX_PER_CLASS,
                max_total=MAX_TOTAL,
                pre_nms_top_k=PRE_NMS_TOP_K,
                clip_before_nms=True,
                num_real_classes=None):
  """Decodes SSD outputs and runs class-aware NMS (module docstring).

  `cls_logits` `[B, N, C]` (channel 0: background, ignored), `box_preds` `[B, N, 4]`
  encoded, `anchors` `[N, 4]` normalized yxyx of the network input frame, `image_info`
  and `input_size` as in `map_boxes_to_original`. A candidate needs a score strictly
  above `score_threshold`; NMS at `iou_threshold` within a class; at most
  `max_per_class` per class and `max_total` per image from the `pre_nms_top_k`
  (anchor, class) candidates. `clip_before_nms=False` runs NMS on the unclipped boxes
  and clips and drops afterwards (the OD API v2.8 order), from up to 2 * max_total
  picks, so the two orders agree unless more than max_total picks fall wholly outside
  the image. `num_real_classes` (default C - 1): only channels 1..num_real_classes
  have a dataset category; the tail channels are never detected.

  Returns dict (zeros past `num_detections`): detection_boxes `[B, max_total, 4]`
  float32 yxyx original pixels; detection_scores `[B, max_total]` float32 sigmoid,
  descending; detection_classes `[B, max_total]` int32 contiguous ids;
  num_detections `[B]` int32. ValueError on inconsistent static shapes or limits < 1.
  """
  if cls_logits.shape.rank != 3 or box_preds.shape.rank != 3:
    raise ValueError(f'cls_logits and box_preds must be [B, N, C] and [B, N, 4], got '
                     f'{cls_logits.shape} and {box_preds.shape}.')
  num_classes = cls_logits.shape[-1]
  if num_classes is not None and num_classes < 2:
    raise ValueError(f'cls_logits has {num_classes} channels; need background + at '
                     f'least one class.')
  if num_real_classes is not None and (num_real_classes < 1 or (
      num_classes is not None and num_real_classes > num_classes - 1)):
    raise ValueError(f'num_real_classes={num_real_classes} must be in 1..'
                     f'{num_classes - 1} (cls_logits has {num_classes} channels, '
                     f'background included).')
  for name, value in (('max_per_class', max_per_class), ('max_total', max_total),
                      ('pre_nms_top_k', pre_nms_top_k)):
    if value < 1:
      raise ValueError(f'{name}={value} must be >= 1.')

  with tf.name_scope('ssd_postprocess'):
    # Top-k on logits (sigmoid is monotonic), sigmoid only on the K survivors.
    last = None if num_real_classes is None else int(num_real_classes) + 1
    fg_logits = tf.cast(cls_logits[:, :, 1:last], tf.float32)  # [B, N, num_real]
    batch_size = tf.shape(fg_logits)[0]
    num_fg = _static_or_dynamic(fg_logits, 2)
    num_pairs = _static_or_dynamic(fg_logits, 1) * num_fg
    k = _minimum(pre_nms_top_k, num_pairs)
    top_logits, top_index = tf.math.top_k(
        tf.reshape(fg_logits, [batch_size, -1]), k=k, sorted=True)  # [B, K]
    top_scores = tf.sigmoid(top_logits)
    anchor_index = top_index // num_fg
    top_classes = top_index % num_fg + 1  # Contiguous 1..num_real.

    decoded = box_coder.decode(tf.cast(box_preds, tf.float32),
                               tf.cast(anchors, tf.float32))  # [B, N, 4]
    top_boxes = tf.gather(decoded, anchor_index, batch_dims=1)  # [B, K, 4]
    pixel_boxes = map_boxes_to_original(top_boxes, image_info, input_size)
    original_yx = tf.maximum(
        tf.cast(image_info, tf.float32)[:, _ORIGINAL_SIZE_ROW:_ORIGINAL_SIZE_ROW + 1, :],
        1.0)
    unit_boxes = pixel_boxes / tf.concat([original_yx, original_yx], axis=-1)
    # Boxes clipped to zero area lie outside the image: never selected (the OD API
    # drops them too, clip_to_window with filter_nonoverlapping).
    inside = tf.logical_and(unit_boxes[..., 2] > unit_boxes[..., 0],
                            unit_boxes[..., 3] > unit_boxes[..., 1])
    nms_scores = tf.where(inside, top_scores, -float('inf'))

    num_class_channels = num_fg + 1
    # Greedy NMS may stop after max_total picks unless a per-class cap can still
    # drop some of them afterwards (then it must see all K candidates). NMS on
    # unclipped boxes prunes outside boxes afterwards: room for as many again.
    cap_per_class = max_per_class < max_total
    nms_max_output = k if cap_per_class else _minimum(
        max_total if clip_before_nms else 2 * max_total, k)
    if clip_before_nms:
      nms_boxes, nms_input_scores = unit_boxes, nms_scores
    else:  # OD API v2.8 order: NMS, then clip to the image and drop zero-area boxes.
      nms_boxes, nms_input_scores = top_boxes, top_scores

    def _nms_one_image(args):
      boxes, image_scores, classes, keep_mask = args
      # Unclipped boxes may leave [0, 1]: bands wide enough for this image's extent.
      step = (CLASS_OFFSET_STEP if clip_before_nms else
              2.0 * tf.reduce_max(tf.abs(boxes)) + 1.0)
      shifted = boxes + step * tf.cast(classes, tf.float32)[:, tf.newaxis]
      selected = tf.image.non_max_suppression(
          shifted, image_scores, max_output_size=nms_max_output,
          iou_threshold=iou_threshold,
          score_threshold=score_threshold)  # Descending score.
      if cap_per_class:
        one_hot = tf.one_hot(tf.gather(classes, selected), num_class_channels,
                             dtype=tf.int32)
        rank_in_class = tf.reduce_sum(tf.cumsum(one_hot, axis=0) * one_hot, axis=1) - 1
        selected = tf.boolean_mask(selected, rank_in_class < max_per_class)
      if not clip_before_nms:
        selected = tf.boolean_mask(selected, tf.gather(keep_mask, selected))
      selected = selected[:max_total]
      num = tf.size(selected, out_type=tf.int32)
      padded = tf.pad(selected, [[0, max_total - num]])
      return padded, num

    keep, num_detections = tf.map_fn(
        _nms_one_image, (nms_boxes, nms_input_scores, top_classes, inside),
        fn_output_signature=(tf.TensorSpec([max_total], tf.int32),
                             tf.TensorSpec([], tf.int32)))
    valid = tf.range(max_total)[tf.newaxis, :] < num_detections[:, tf.newaxis]
    valid_f = tf.cast(valid, tf.float32)
    boxes = tf.gather(pixel_boxes, keep, batch_dims=1) * valid_f[..., tf.newaxis]
    out_scores = tf.gather(top_scores, keep, batch_dims=1) * valid_f
    classes = tf.gather(top_classes, keep, batch_dims=1) * tf.cast(valid, tf.int32)
    return {
        'detection_boxes': boxes,
        'detection_scores': out_scores,
        'detection_classes': tf.cast(classes, tf.int32),
        'num_detections': num_detections,
    }
