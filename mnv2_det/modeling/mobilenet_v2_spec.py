"""MobileNetV2 architecture table and depth rules (slim `V2_DEF`, paper Table 2).

Facts from docs/reference.md, "MobileNetV2 block table": 19 ops; expansion 6 except the
first block; depths follow `_make_divisible`; the 1280 conv keeps full width for
multipliers below 1.
"""

import dataclasses
from typing import List, Optional


def make_divisible(value: float, divisor: int = 8, min_value: Optional[int] = None) -> int:
  """Slim's `_make_divisible`: nearest multiple of `divisor`, never 10% below `value`.

  `max(min_value, int(value + divisor / 2) // divisor * divisor)`, plus `divisor` when
  that rounded down by more than 10%. `min_value` defaults to `divisor`.
  """
  if min_value is None:
    min_value = divisor
  new_value = max(min_value, int(value + divisor / 2) // divisor * divisor)
  if new_value < 0.9 * value:
    new_value += divisor
  return new_value


@dataclasses.dataclass(frozen=True)
class LayerSpec:
  """One slim op. `index` is N of the endpoint `layer_N` (1-based)."""
  index: int
  kind: str          # 'conv' or 'expanded_conv'
  stride: int
  depth: int         # output channels at depth_multiplier 1.0
  expansion: int = 1  # expansion factor of an expanded_conv (1 = no expand conv)
  kernel: int = 3


# slim V2_DEF: conv 3x3 s2 -> 32; expanded_conv (t=1) -> 16; then (t=6) blocks; conv 1x1 -> 1280.
_BLOCKS = [  # (stride, depth, repeats)
    (2, 24, 2), (2, 32, 3), (2, 64, 4), (1, 96, 3), (2, 160, 3), (1, 320, 1)]


def v2_layers() -> List[LayerSpec]:
  """The 19 slim ops, `layer_1` .. `layer_19`."""
  layers = [LayerSpec(1, 'conv', 2, 32, kernel=3),
            LayerSpec(2, 'expanded_conv', 1, 16, expansion=1)]
  for stride, depth, repeats in _BLOCKS:
    for r in range(repeats):
      layers.append(LayerSpec(len(layers) + 1, 'expanded_conv',
                              stride if r == 0 else 1, depth, expansion=6))
  layers.append(LayerSpec(len(layers) + 1, 'conv', 1, 1280, kernel=1))
  assert len(layers) == 19
  return layers


NUM_LAYERS = 19
FINAL_CONV_DEPTH = 1280

# Model Garden level keys -> the slim endpoint MG's MobileNetV2 exposes for that level: the
# last block output at strides 4, 8, 16, 32 (24/32/96/320 channels,
# docs/reference.md, "Model Garden level keys").
LEVEL_ENDPOINTS = {'2': 'layer_4', '3': 'layer_7', '4': 'layer_14', '5': 'layer_18'}


def scaled_depth(spec: LayerSpec, depth_multiplier: float, min_depth: int,
                 divisible_by: int, full_depth_final_conv: bool = True) -> int:
  """Output channels of `spec` under slim's depth rules. With `full_depth_final_conv`
  (slim's finegrain_classification_mode) the 1280 conv keeps 1280 below multiplier 1;
  without it (the OD API's ssd_mobilenet_v2 extractor) it is scaled like the rest."""
  if spec.index == NUM_LAYERS and depth_multiplier < 1.0 and full_depth_final_conv:
    return spec.depth
  return make_divisible(spec.depth * depth_multiplier, divisible_by, min_depth)


def all_endpoint_names() -> List[str]:
  """Every endpoint name the backbone can return, in network order."""
  names = []
  for spec in v2_layers():
    if spec.kind == 'expanded_conv':
      if spec.expansion > 1:
        names.append(f'layer_{spec.index}/expansion_output')
      names.append(f'layer_{spec.index}/depthwise_output')
    names.append(f'layer_{spec.index}')
  return names + sorted(LEVEL_ENDPOINTS)
