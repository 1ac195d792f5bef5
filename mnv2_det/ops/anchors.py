"""SSD anchors with the TF Object Detection API's `ssd_anchor_generator` semantics
(`create_ssd_anchors` + `MultipleGridAnchorGenerator` + `tile_anchors`), written from
their documented behaviour (SSD paper, Liu et al. 2016, Sec. 2.2) and listed in
docs/reference.md, "SSD anchors": scales, box specs, grid, order, no clipping. One box
of (scale, aspect ratio ar) is `scale / sqrt(ar) * base_h` high and `scale * sqrt(ar) *
base_w` wide; on a non-square input `base_anchor_size` is multiplied by
`(min(H, W) / H, min(H, W) / W)` so an aspect-1 anchor is square in pixels. Anchors are
normalized `[ymin, xmin, ymax, xmax]` float32. The OD API configs write the last aspect
ratio as 0.3333, not 1/3; pass that value to reproduce their anchors to the bit.

Model Garden's RetinaNet code wants anchors per level as `{str(level): [H, W, A * 4]}`
(`official.vision.ops.anchor.Anchor.multilevel_boxes`, consumed by `AnchorLabeler`,
`unpack_targets` and `RetinaNetModel`); `split_anchors_by_level` / `flatten_levels`
convert between that layout and the flat OD API tensor.
"""

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mnv2_det.ops import box_coder

# Defaults of the OD API ssd_anchor_generator (docs/reference.md, "SSD anchors").
DEFAULT_NUM_LAYERS = 6
DEFAULT_MIN_SCALE = 0.2
DEFAULT_MAX_SCALE = 0.95
DEFAULT_ASPECT_RATIOS = (1.0, 2.0, 0.5, 3.0, 1.0 / 3)
DEFAULT_INTERPOLATED_SCALE_ASPECT_RATIO = 1.0
DEFAULT_BASE_ANCHOR_SIZE = (1.0, 1.0)
# Scale appended after the last layer; only used to interpolate its extra anchor.
SCALE_AFTER_LAST_LAYER = 1.0
# reduce_boxes_in_lowest_layer: the finest layer gets exactly these box specs, where
# None stands for that layer's own scale s_0.
LOWEST_LAYER_BOX_SPECS = ((0.1, 1.0), (None, 2.0), (None, 0.5))
# Anchor centres sit at (index + 0.5) * stride on each axis.
ANCHOR_OFFSET_IN_STRIDES = 0.5
# Level of the first feature map (layer_15/expansion_output, stride 16 = 2**4); the
# maps are keyed str(FIRST_LEVEL), str(FIRST_LEVEL + 1), ... everywhere.
FIRST_LEVEL = 4

BoxSpec = Tuple[float, float]


def ssd_box_specs(
    num_layers: int = DEFAULT_NUM_LAYERS,
    min_scale: float = DEFAULT_MIN_SCALE,
    max_scale: float = DEFAULT_MAX_SCALE,
    scales: Optional[Sequence[float]] = None,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = DEFAULT_INTERPOLATED_SCALE_ASPECT_RATIO,
    reduce_boxes_in_lowest_layer: bool = True,
) -> List[List[BoxSpec]]:
  """Returns the (scale, aspect_ratio) box specs of each layer, finest first.

  `scales`, when given and non-empty, overrides min/max_scale and must have
  `num_layers` entries.
  """
  if num_layers < 1:
    raise ValueError(f'num_layers must be >= 1, got {num_layers}')
  if scales:
    scales = [float(s) for s in scales]
    if len(scales) != num_layers:
      raise ValueError(
          f'scales has {len(scales)} entries {scales}, expected num_layers={num_layers}')
  else:
    if num_layers == 1:
      raise ValueError(
          'num_layers=1 needs explicit `scales` (min/max_scale interpolation divides '
          'by num_layers - 1)')
    scales = [min_scale + (max_scale - min_scale) * i / (num_layers - 1)
              for i in range(num_layers)]
  scales = scales + [SCALE_AFTER_LAST_LAYER]

  specs = []
  for layer in range(num_layers):
    scale, scale_next = scales[layer], scales[layer + 1]
    if layer == 0 and reduce_boxes_in_lowest_layer:
      layer_specs = [(scale if s is None else s, ar) for s, ar in LOWEST_LAYER_BOX_SPECS]
    else:
      layer_specs = [(scale, float(ar)) for ar in aspect_ratios]
      if interpolated_scale_aspect_ratio > 0.0:
        layer_specs.append((math.sqrt(scale * scale_next),
                            float(interpolated_scale_aspect_ratio)))
    specs.append(layer_specs)
  return specs


def anchors_per_location(
    num_layers: int = DEFAULT_NUM_LAYERS,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = DEFAULT_INTERPOLATED_SCALE_ASPECT_RATIO,
    reduce_boxes_in_lowest_layer: bool = True,
) -> List[int]:
  """Number of anchors at each location of each layer ([3, 6, 6, 6, 6, 6] by default)."""
  # The counts do not depend on the scale values; pass dummy distinct scales so that
  # num_layers=1 is accepted.
  dummy_scales = [float(i + 1) for i in range(num_layers)] if num_layers >= 1 else None
  specs = ssd_box_specs(
      num_layers=num_layers, scales=dummy_scales, aspect_ratios=aspect_ratios,
      interpolated_scale_aspect_ratio=interpolated_scale_aspect_ratio,
      reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)
  return [len(layer_specs) for layer_specs in specs]


def ssd_feature_map_shapes(
    image_shape: Tuple[int, int],
    min_level: int = FIRST_LEVEL,
    num_layers: int = DEFAULT_NUM_LAYERS,
) -> List[Tuple[int, int]]:
  """Feature map sizes (H, W) of levels min_level.. for an input of `image_shape`.

  Assumes every level halves the previous one with SAME padding, i.e. level l has
  ceil(size / 2**l) cells (ceil of repeated halving equals ceil of one division).
  For 320x320: [(20, 20), (10, 10), (5, 5), (3, 3), (2, 2), (1, 1)].
  """
  height, width = (int(v) for v in image_shape)
  if height < 1 or width < 1:
    raise ValueError(f'image_shape must be positive, got {image_shape}')
  return [(-(-height // 2**level), -(-width // 2**level))
          for level in range(min_level, min_level + num_layers)]


def _tile_layer(grid_shape: Tuple[int, int], layer_specs: List[BoxSpec],
                base_size: Tuple[float, float]) -> np.ndarray:
  """Anchors of one layer as float64 [grid_h * grid_w * len(layer_specs), 4] yxyx."""
  grid_h, grid_w = grid_shape
  spec_scales = np.array([s for s, _ in layer_specs], np.float64)
  ratio_sqrts = np.sqrt(np.array([ar for _, ar in layer_specs], np.float64))
  heights = spec_scales / ratio_sqrts * base_size[0]  # [A]
  widths = spec_scales * ratio_sqrts * base_size[1]  # [A]
  y_centers = (np.arange(grid_h, dtype=np.float64) + ANCHOR_OFFSET_IN_STRIDES) / grid_h
  x_centers = (np.arange(grid_w, dtype=np.float64) + ANCHOR_OFFSET_IN_STRIDES) / grid_w
  # [H, W, A] each; the spec index varies fastest, then x, then y.
  yc = np.broadcast_to(y_centers[:, None, None], (grid_h, grid_w, len(layer_specs)))
  xc = np.broadcast_to(x_centers[None, :, None], (grid_h, grid_w, len(layer_specs)))
  half_h = np.broadcast_to(heights / 2.0, yc.shape)
  half_w = np.broadcast_to(widths / 2.0, xc.shape)
  boxes = np.stack([yc - half_h, xc - half_w, yc + half_h, xc + half_w], axis=-1)
  return boxes.reshape(-1, box_coder.CODE_SIZE)


def generate_ssd_anchors(
    feature_map_shapes: Sequence[Tuple[int, int]],
    num_layers: int = DEFAULT_NUM_LAYERS,
    min_scale: float = DEFAULT_MIN_SCALE,
    max_scale: float = DEFAULT_MAX_SCALE,
    scales: Optional[Sequence[float]] = None,
    aspect_ratios: Sequence[float] = DEFAULT_ASPECT_RATIOS,
    interpolated_scale_aspect_ratio: float = DEFAULT_INTERPOLATED_SCALE_ASPECT_RATIO,
    reduce_boxes_in_lowest_layer: bool = True,
    base_anchor_size: Tuple[float, float] = DEFAULT_BASE_ANCHOR_SIZE,
    image_shape: Optional[Tuple[int, int]] = None,
) -> np.ndarray:
  """The flat OD API SSD anchor set: float32 numpy `[num_anchors, 4]` normalized yxyx
  in the module docstring's order, unclipped, for `num_layers` feature maps
  `(H, W)`, finest first. The other arguments are the OD API's; `image_shape`
  `(H, W)` of the network input (None: square) adjusts `base_anchor_size`.
  """
  shapes = [tuple(int(v) for v in shape) for shape in feature_map_shapes]
  if len(shapes) != num_layers:
    raise ValueError(
        f'feature_map_shapes has {len(shapes)} entries {shapes}, expected '
        f'num_layers={num_layers}')
  for shape in shapes:
    if len(shape) != 2 or min(shape) < 1:
      raise ValueError(f'feature map shape must be a positive (H, W) pair, got {shape}')
  specs = ssd_box_specs(
      num_layers=num_layers, min_scale=min_scale, max_scale=max_scale, scales=scales,
      aspect_ratios=aspect_ratios,
      interpolated_scale_aspect_ratio=interpolated_scale_aspect_ratio,
      reduce_boxes_in_lowest_layer=reduce_boxes_in_lowest_layer)

  base_h, base_w = (float(v) for v in base_anchor_size)
  if image_shape is not None:
    im_h, im_w = (float(v) for v in image_shape)
    if im_h <= 0 or im_w <= 0:
      raise ValueError(f'image_shape must be positive, got {image_shape}')
    min_side = min(im_h, im_w)
    base_h *= min_side / im_h
    base_w *= min_side / im_w

  layers = [_tile_layer(shape, layer_specs, (base_h, base_w))
            for shape, layer_specs in zip(shapes, specs)]
  return np.concatenate(layers, axis=0).astype(np.float32)


def _num_anchors_per_level(feature_map_shapes, anchors_per_loc) -> List[int]:
  if len(feature_map_shapes) != len(anchors_per_loc):
    raise ValueError(
        f'feature_map_shapes {list(feature_map_shapes)} and anchors_per_loc '
        f'{list(anchors_per_loc)} must have the same length')
  return [int(h) * int(w) * int(a)
          for (h, w), a in zip(feature_map_shapes, anchors_per_loc)]


def split_anchors_by_level(
    anchors,
    feature_map_shapes: Sequence[Tuple[int, int]],
    anchors_per_loc: Sequence[int],
    min_level: int = FIRST_LEVEL,
) -> Dict[str, object]:
  """Flat `[num_anchors, 4]` anchors (numpy or tf, `generate_ssd_anchors` order) ->
  `{str(level): [H, W, A * 4]}` from `min_level` up (numpy in, numpy out), where
  `[i, j, 4a:4a+4]` is anchor a of cell (i, j): Model Garden's
  `Anchor.multilevel_boxes` layout. `anchors_per_loc` is A of each level.
  """
  counts = _num_anchors_per_level(feature_map_shapes, anchors_per_loc)
  is_numpy = isinstance(anchors, np.ndarray)
  num_anchors = anchors.shape[0]
  if num_anchors is not None and int(num_anchors) != sum(counts):
    raise ValueError(
        f'anchors has {int(num_anchors)} rows but feature_map_shapes '
        f'{list(feature_map_shapes)} x anchors_per_loc {list(anchors_per_loc)} give '
        f'{sum(counts)}')
  result = {}
  start = 0
  for index, ((h, w), a, count) in enumerate(
      zip(feature_map_shapes, anchors_per_loc, counts)):
    chunk = anchors[start:start + count]
    shape = [int(h), int(w), int(a) * box_coder.CODE_SIZE]
    result[str(min_level + index)] = (
        chunk.reshape(shape) if is_numpy else tf.reshape(chunk, shape))
    start += count
  return result


def flatten_levels(multilevel: Dict[str, object], last_dim: int = box_coder.CODE_SIZE):
  """Inverse of `split_anchors_by_level`, also for batched outputs: `{str(level):
  [..., H, W, A * last_dim]}` -> `[..., sum(H * W * A), last_dim]`, levels in numeric
  order (numpy if every input is numpy, else tf); `last_dim` 4 for boxes, C for logits.
  """
  if not multilevel:
    raise ValueError('multilevel dict is empty')
  levels = sorted(multilevel, key=int)
  values = [multilevel[level] for level in levels]
  if all(isinstance(v, np.ndarray) for v in values):
    flat = [v.reshape(v.shape[:-3] + (-1, last_dim)) for v in values]
    return np.concatenate(flat, axis=-2)
  flat = []
  for value in values:
    value = tf.convert_to_tensor(value)
    leading = tf.shape(value)[:-3]
    flat.append(tf.reshape(value, tf.concat([leading, [-1, last_dim]], axis=0)))
  return tf.concat(flat, axis=-2)
