"""Video files frame by frame with OpenCV's FFmpeg backend: RGB frames in, RGB frames out.

    with VideoReader('clip.mp4') as video:         # ValueError (a short reason) if unreadable
      for index, timestamp_s, frame in video:      # frame: uint8 [h, w, 3] RGB
        ...
    with VideoWriter('out.mp4', video.fps, (video.width, video.height)) as out:
      out.write(frame)                             # committed (renamed into place) on exit

Only one frame is held at a time. A reader's `timestamp_s` is the frame's presentation time
as the decoder reports it (`CAP_PROP_POS_MSEC`), or `index / fps` when it reports none.
A writer writes to a hidden temporary file beside its path (same extension, since FFmpeg
picks the container from it) and renames it into place only when the `with` body
succeeds; on an error nothing is left. Written codecs (OUTPUT_CODECS): MJPG in .avi,
MPEG-4 Part 2 (`mp4v`) in .mp4; both encode without extra libraries. OpenCV encodes
even sizes only (it would crop an odd width or height silently), so a frame with an odd
side is padded by one replicated pixel row / column at the bottom / right, keeping every
input pixel where it was. FFmpeg's and OpenCV's own log lines are silenced: a file it
cannot read is one ValueError instead.
"""

import contextlib
import math
import os
import uuid
from typing import Iterator, Tuple

import numpy as np

# Must be set before OpenCV's FFmpeg backend first opens a file (AV_LOG_QUIET).
os.environ.setdefault('OPENCV_FFMPEG_LOGLEVEL', '-8')
import cv2  # pylint: disable=g-import-not-at-top,wrong-import-position

# Files taken as videos (by suffix, case-insensitive) in a folder or on a command line.
VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov', '.mkv', '.m4v', '.webm', '.mpg', '.mpeg',
                    '.wmv')
# Output container suffix -> FourCC; other inputs are written as DEFAULT_OUTPUT_SUFFIX.
OUTPUT_CODECS = {'.avi': 'MJPG', '.mp4': 'mp4v'}
DEFAULT_OUTPUT_SUFFIX = '.mp4'
# Containers that report no usable rate (<= 0, NaN, absurd) are written at this rate.
FALLBACK_FPS = 30.0
MAX_FPS = 1000.0
TEMP_MARKER = '.partial-'


def is_video(path: str) -> bool:
  """True if `path` has a VIDEO_EXTENSIONS suffix."""
  return path.lower().endswith(VIDEO_EXTENSIONS)


def output_suffix(path: str) -> str:
  """Suffix of the annotated copy of `path`: its own if writable, else the default."""
  suffix = os.path.splitext(path)[1].lower()
  return suffix if suffix in OUTPUT_CODECS else DEFAULT_OUTPUT_SUFFIX


@contextlib.contextmanager
def _quiet_opencv():
  logging = cv2.utils.logging
  level = logging.getLogLevel()
  logging.setLogLevel(logging.LOG_LEVEL_ERROR)
  try:
    yield
  finally:
    logging.setLogLevel(level)


class VideoReader:
  """Decodes a video file one frame at a time (module docstring).

  Attributes:
    path: the file.
    fps: frames per second the container declares (FALLBACK_FPS if it declares none).
    fps_declared: False when `fps` is FALLBACK_FPS for want of a declared rate.
    width, height: frame size in pixels (of the first frame).
    frame_count: frames the container declares (0 if unknown; may be approximate).
    frames_read: frames decoded so far.
  """

  def __init__(self, path: str):
    self.path = path
    if not os.path.isfile(path):
      raise ValueError('file not found')
    if os.path.getsize(path) == 0:
      raise ValueError('file is empty (0 bytes)')
    with _quiet_opencv():
      self._capture = cv2.VideoCapture(path, cv2.CAP_FFMPEG)
    if not self._capture.isOpened():
      raise ValueError('not a readable video (FFmpeg cannot open it: corrupt, '
                       'truncated or not a video)')
    get = self._capture.get
    fps = get(cv2.CAP_PROP_FPS)
    self.fps_declared = bool(math.isfinite(fps) and 0 < fps <= MAX_FPS)
    self.fps = float(fps) if self.fps_declared else FALLBACK_FPS
    count = get(cv2.CAP_PROP_FRAME_COUNT)
    self.frame_count = int(count) if math.isfinite(count) and count > 0 else 0
    self.frames_read = 0
    self._first = self._read()
    if self._first is None:
      self.close()
      raise ValueError('not a readable video (no frame could be decoded)')
    self.height, self.width = self._first[2].shape[:2]

  def _read(self):
    with _quiet_opencv():
      ok, frame = self._capture.read()
    if not ok or frame is None:
      return None
    msec = self._capture.get(cv2.CAP_PROP_POS_MSEC)
    index = self.frames_read
    self.frames_read += 1
    timestamp = msec / 1000.0 if math.isfinite(msec) and msec >= 0 else index / self.fps
    return index, timestamp, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)

  def __iter__(self) -> Iterator[Tuple[int, float, np.ndarray]]:
    """Yields `(index, timestamp_s, uint8 [h, w, 3] RGB)` until the stream ends."""
    item, self._first = self._first, None
    while item is not None:
      yield item
      item = self._read()

  def close(self) -> None:
    self._capture.release()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


class VideoWriter:
  """Encodes RGB frames of one size into `path`, renamed into place on success.

  Args:
    path: output file; its suffix must be a key of OUTPUT_CODECS.
    fps: frames per second (> 0).
    size: `(width, height)` of every frame; the file's is `encoded_size`, rounded up to
      even numbers (module docstring).
  """

  def __init__(self, path: str, fps: float, size: Tuple[int, int]):
    suffix = os.path.splitext(path)[1].lower()
    if suffix not in OUTPUT_CODECS:
      raise ValueError(f'{path}: video output must end with one of {sorted(OUTPUT_CODECS)}')
    self.path = path
    self.size = (int(size[0]), int(size[1]))
    self.encoded_size = (self.size[0] + self.size[0] % 2, self.size[1] + self.size[1] % 2)
    folder, name = os.path.split(os.path.abspath(path))
    self._temp = os.path.join(folder, f'.{name}{TEMP_MARKER}{uuid.uuid4().hex[:8]}{suffix}')
    with _quiet_opencv():
      self._writer = cv2.VideoWriter(self._temp, cv2.CAP_FFMPEG,
                                     cv2.VideoWriter_fourcc(*OUTPUT_CODECS[suffix]),
                                     float(fps), self.encoded_size)
    if not self._writer.isOpened():
      self._remove_temp()
      raise ValueError(f'{path}: cannot write a {OUTPUT_CODECS[suffix]} video here '
                       f'(FFmpeg refused {self.size[0]}x{self.size[1]} at {fps:g} fps)')
    self.frames_written = 0

  def write(self, frame: np.ndarray) -> None:
    """Appends one uint8 `[height, width, 3]` RGB frame."""
    frame = np.asarray(frame)
    if frame.dtype != np.uint8 or frame.shape != (self.size[1], self.size[0], 3):
      raise ValueError(f'{self.path}: frame {self.frames_written} is {frame.dtype} '
                       f'{list(frame.shape)}, expected uint8 [{self.size[1]}, '
                       f'{self.size[0]}, 3]')
    pad = ((0, self.encoded_size[1] - self.size[1]), (0, self.encoded_size[0] - self.size[0]),
           (0, 0))
    if any(p[1] for p in pad):
      frame = np.pad(frame, pad, mode='edge')
    self._writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    self.frames_written += 1

  def commit(self) -> None:
    """Finishes the file and renames it to `path`."""
    self._writer.release()
    os.replace(self._temp, self.path)

  def abort(self) -> None:
    """Drops the partial file."""
    self._writer.release()
    self._remove_temp()

  def _remove_temp(self) -> None:
    with contextlib.suppress(OSError):
      os.remove(self._temp)

  def __enter__(self):
    return self

  def __exit__(self, exc_type, *exc):
    if exc_type is None:
      self.commit()
    else:
      self.abort()
