"""Export presets of the TFLite detector: the config's desktop settings or on-device ones.

  default: the experiment's post-processing as configured (regular per-class NMS, OD
    API score threshold 1e-8, 100 detections): what evaluation needs (COCO AP counts
    low-score detections).
  mobile: what an app on a phone or board wants:
    * fast NMS (`use_regular_nms: false`, the op's class-agnostic NMS over each
      anchor's best class): cheaper, one class per box, and single-threaded inside
      LiteRT, so tensorflow/tensorflow#56058 (regular NMS with 1 < threads < classes
      never detects one class, see `tflite.py`) cannot happen at any thread count;
    * at most MOBILE_MAX_DETECTIONS detections (output rows);
    * score threshold MOBILE_SCORE_THRESHOLD (the op keeps scores strictly above it);
    * interpreter threads: any; MOBILE_NUM_THREADS recorded as the recommendation.
  `max_detections` / `score_threshold` given explicitly override either preset.

The JSON metadata records `preset` and `num_threads` (the interpreter threads that are
safe and recommended); the standard metadata's description repeats them.
"""

import copy
import dataclasses
from typing import Any, Dict, Optional, Tuple

DEFAULT, MOBILE = 'default', 'mobile'
MOBILE_MAX_DETECTIONS = 10
MOBILE_SCORE_THRESHOLD = 0.3
MOBILE_NUM_THREADS = 4
# Regular NMS with 1 < T < real classes threads loses a class (#56058).
REGULAR_NMS_SAFE_THREADS = 1
DEFAULT_FAST_NMS_THREADS = 2


@dataclasses.dataclass(frozen=True)
class Preset:
  """Post-processing settings; None keeps the experiment config's value."""
  name: str
  use_regular_nms: bool
  max_detections: Optional[int] = None
  score_threshold: Optional[float] = None
  num_threads: Optional[int] = None


PRESETS = {
    DEFAULT: Preset(DEFAULT, use_regular_nms=True),
    MOBILE: Preset(MOBILE, use_regular_nms=False, max_detections=MOBILE_MAX_DETECTIONS,
                   score_threshold=MOBILE_SCORE_THRESHOLD, num_threads=MOBILE_NUM_THREADS),
}


def get(name: str) -> Preset:
  if name not in PRESETS:
    raise ValueError(f'unknown TFLite preset {name!r}; one of {sorted(PRESETS)}')
  return PRESETS[name]


def validate(max_detections: Optional[int], score_threshold: Optional[float]) -> None:
  """ValueError unless max_detections >= 1 and score_threshold in [0, 1) (None: ok)."""
  if max_detections is not None and int(max_detections) < 1:
    raise ValueError(f'max_detections must be >= 1, got {max_detections}')
  if score_threshold is not None and not 0.0 <= float(score_threshold) < 1.0:
    raise ValueError(f'score_threshold must be in [0, 1), got {score_threshold}')


def apply(params, name: str = DEFAULT, max_detections: Optional[int] = None,
          score_threshold: Optional[float] = None, fast_nms: bool = False
          ) -> Tuple[Any, bool, Dict[str, Any]]:
  """The preset (then explicit values) applied to a COPY of `params`.

  `name` is a PRESETS key; `max_detections` (>= 1) and `score_threshold` (in [0, 1))
  override the preset and the config; `fast_nms` forces fast NMS (the old --fast_nms).
  Returns (params copy, use_regular_nms, extra JSON metadata {preset, num_threads}).
  ValueError for an unknown preset or an out-of-range value.
  """
  preset = get(name)
  params = copy.deepcopy(params)
  generator = params.task.model.detection_generator
  if max_detections is None:
    max_detections = preset.max_detections
  if score_threshold is None:
    score_threshold = preset.score_threshold
  validate(max_detections, score_threshold)
  if max_detections is not None:
    generator.max_num_detections = int(max_detections)
  if score_threshold is not None:
    generator.score_threshold = float(score_threshold)
  use_regular_nms = preset.use_regular_nms and not fast_nms
  num_real = int(params.task.model.num_classes) - 1
  if use_regular_nms and num_real > 1:
    threads = REGULAR_NMS_SAFE_THREADS
  else:
    threads = preset.num_threads or DEFAULT_FAST_NMS_THREADS
  return params, use_regular_nms, {'preset': preset.name, 'num_threads': threads}
