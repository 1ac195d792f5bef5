"""A video through a Detector, streamed frame by frame: annotated copy + JSON Lines.

`predict_video` decodes one frame, detects, draws, encodes it and writes its JSON line
before it decodes the next, so memory does not grow with the video's length. Outputs:
  * the annotated video: the input's frame size and rate (`data/video.py` codecs),
    every frame with its kept detections drawn (`analysis/draw.py`);
  * JSON Lines, one line per decoded frame, in order:
    `{"frame_index": i, "timestamp_s": t, "detections": [COCO results]}` where each
    result is `{image_id: i, category_id (dataset id), bbox [x, y, w, h] pixels, score}`
    (`annotate.coco_results`), so the lines' detections together are a COCO results
    list whose image ids are frame indices.
Both appear only complete: written to temporary files and renamed at the end.
"""

import dataclasses
import json
import time
from typing import Callable

import numpy as np

from mnv2_det.data import video as video_lib
from mnv2_det.export import atomic
from mnv2_det.inference import annotate


@dataclasses.dataclass
class VideoResult:
  """What `predict_video` did. `frames_per_second`: frames over the wall time of the
  whole loop (decode, detect, draw, encode, JSON); `frame_count`: frames the container
  declares (0: unknown)."""
  frames: int
  detections: int
  seconds: float
  frames_per_second: float
  fps: float
  width: int
  height: int
  frame_count: int


def predict_video(detector, reader: video_lib.VideoReader, video_path: str,
                  jsonl_path: str, score_threshold: float,
                  clock: Callable[[], float] = time.perf_counter) -> VideoResult:
  """Runs `detector` (a `detector.Detector`) on every frame of `reader`.

  Args:
    detector: has `detect_image(uint8 [h, w, 3] RGB)` and `names`.
    reader: an open `video_lib.VideoReader` (not closed here).
    video_path: annotated video to write (suffix in `video_lib.OUTPUT_CODECS`).
    jsonl_path: JSON Lines file to write.
    score_threshold: detections below it are neither drawn nor written.

  Raises:
    ValueError: the video cannot be written (nothing is left at either path).
  """
  start = clock()
  frames = detections = 0
  with video_lib.VideoWriter(video_path, reader.fps, (reader.width, reader.height)) as out, \
      atomic.atomic_output(jsonl_path, is_dir=False, overwrite=True) as temp, \
      open(temp, 'w', encoding='utf-8') as lines:
    for index, timestamp, frame in reader:
      annotated = annotate.annotate(detector, frame, index, score_threshold)
      out.write(np.asarray(annotated.drawing))
      lines.write(json.dumps({'frame_index': index, 'timestamp_s': round(timestamp, 6),
                              'detections': annotated.results}) + '\n')
      frames += 1
      detections += len(annotated.results)
  seconds = clock() - start
  return VideoResult(frames=frames, detections=detections, seconds=seconds,
                     frames_per_second=frames / seconds if seconds > 0 else 0.0,
                     fps=reader.fps, width=reader.width, height=reader.height,
                     frame_count=reader.frame_count)
