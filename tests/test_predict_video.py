"""tools/predict.py on videos and on folders mixing images and videos.

The videos are generated here with cv2.VideoWriter (MJPG .avi, mp4v .mp4). The per-frame
JSON Lines are compared with the same detector run in process on frames this test
decodes itself (RGB), so a BGR/RGB mix-up, a wrong frame order or a dropped frame fails.
Streaming is checked with a stand-in detector (no TF model): tracemalloc's peak over a
200-frame video stays within 1 MB of its peak over a 20-frame one.
"""

import contextlib
import io
import json
import os
import tracemalloc

import cv2
import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.analysis import draw
from mnv2_det.cli import predict
from mnv2_det.core import errors
from mnv2_det.data import shapes
from mnv2_det.data import video as video_lib
from mnv2_det.inference import annotate
from mnv2_det.inference import detector as detector_lib
from mnv2_det.inference import video as video_predict
from detector_weights import smooth_image, spread_detector, tiny_overrides

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 96
CLIP = dict(name='clip.avi', frames=10, fps=12.5, size=(120, 90))  # (width, height)
ODD = dict(name='odd.mp4', frames=6, fps=10.0, size=(75, 53))  # the file is 76x54
UNREADABLE = {'broken.mp4': 'not a readable video', 'cut.mp4': 'not a readable video',
              'empty.avi': 'file is empty'}
BOX_ATOL_PX = 1e-3
SCORE_ATOL = 1e-5
# Mean |decoded - written| (0..255) of a smooth frame after an MJPG round trip. Drawn
# frames (thin coloured lines, text) lose more to chroma subsampling, so drawings are
# checked relatively: nearer the expected drawing than to it with red and blue swapped,
# or to the undrawn frame.
CODEC_MEAN_ATOL = 8.0
STREAM_PEAK_GROWTH_BYTES = 1 << 20


def _frames(count, size, seed=0):
  """`count` different smooth RGB frames `[h, w, 3]` uint8 of `size` (width, height)."""
  return [smooth_image(seed + i, hw=(size[1], size[0])) for i in range(count)]


def _write_video(path, frames, fps):
  with video_lib.VideoWriter(str(path), fps, (frames[0].shape[1], frames[0].shape[0])) as out:
    for frame in frames:
      out.write(frame)


def _decode(path):
  """(fps, [RGB frames]) of a video file, read here with OpenCV directly."""
  capture = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG)
  fps, frames = capture.get(cv2.CAP_PROP_FPS), []
  while True:
    ok, frame = capture.read()
    if not ok:
      break
    frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
  capture.release()
  return fps, frames


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('shapes'))
  shapes.generate(data_dir, num_train=4, num_val=2, seed=5)
  override = tiny_overrides(data_dir, INPUT)
  _, _, model = spread_detector(override)
  prefix = tf.train.Checkpoint(model=model).write(
      str(tmp_path_factory.mktemp('ckpt') / 'ckpt-1'))
  folder = tmp_path_factory.mktemp('inputs')
  for spec, seed in ((CLIP, 0), (ODD, 50)):
    _write_video(folder / spec['name'], _frames(spec['frames'], spec['size'], seed),
                 spec['fps'])
  tf.io.write_file(str(folder / 'a.png'), tf.io.encode_png(smooth_image(100)))
  tf.io.write_file(str(folder / 'b.jpg'), tf.io.encode_jpeg(smooth_image(101)))
  (folder / 'broken.mp4').write_text('not a video')
  (folder / 'cut.mp4').write_bytes((folder / ODD['name']).read_bytes()[:500])
  (folder / 'empty.avi').write_bytes(b'')
  (folder / 'notes.txt').write_text('ignored: neither an image nor a video suffix')
  detector = detector_lib.load_detector(prefix, EXPERIMENT, (), override)
  return dict(prefix=prefix, override=override, folder=folder, detector=detector,
              out=tmp_path_factory.mktemp('out'))


def _predict(setup, out, inputs, threshold=0.0):
  return predict.main(['--model', setup['prefix'], '--experiment', EXPERIMENT,
                       '--params_override', setup['override'], '--output', str(out),
                       '--score_threshold', str(threshold)] + [str(i) for i in inputs])


@pytest.fixture(scope='module')
def folder_run(setup):
  """The input folder (videos, images, unreadable files) -> (rc, out, stdout, stderr)."""
  out = setup['out'] / 'folder'
  stdout, stderr = io.StringIO(), io.StringIO()
  with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
    rc = _predict(setup, out, [setup['folder']])
  return rc, out, stdout.getvalue(), stderr.getvalue()


def _load_json(out, name):
  with open(os.path.join(out, name), encoding='utf-8') as f:
    return json.load(f)


def _lines(path):
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_folder_mixing_images_and_videos(setup, folder_run):
  rc, out, stdout, stderr = folder_run
  assert rc == 0, stderr
  for name, reason in UNREADABLE.items():
    named = [line for line in stderr.splitlines() if name in line]
    assert len(named) == 1 and named[0].startswith('skipped ') and reason in named[0], named
  assert not any(noise in stderr for noise in ('moov atom', '[mov,', 'VIDEOIO', 'mjpeg @'))
  images = _load_json(out, predict.IMAGES_FILE)
  assert [os.path.basename(im['file_name']) for im in images] == ['a.png', 'b.jpg']
  videos = _load_json(out, predict.VIDEOS_FILE)
  assert [(os.path.basename(v['file_name']), v['video'], v['detections_file'], v['frames'],
           v['fps'], v['width'], v['height']) for v in videos] == [
               ('clip.avi', 'clip.avi', 'clip.jsonl', 10, 12.5, 120, 90),
               ('odd.mp4', 'odd.mp4', 'odd.jsonl', 6, 10.0, 76, 54)]
  assert sorted(os.listdir(out)) == sorted([
      predict.CATEGORIES_FILE, predict.DETECTIONS_FILE, predict.IMAGES_FILE,
      predict.VIDEOS_FILE, 'a.png', 'b.png', 'clip.avi', 'clip.jsonl', 'odd.mp4',
      'odd.jsonl'])  # No temporary file left.
  for v in videos:
    assert f'{v["file_name"]}: {v["frames"]} frames ({v["width"]}x{v["height"]} at ' \
           f'{v["fps"]:g} fps), {v["num_detections"]} detections, ' in stdout
    assert v['frames_per_second'] > 0
  total = len(_load_json(out, predict.DETECTIONS_FILE)) + sum(
      v['num_detections'] for v in videos)
  assert stdout.strip().splitlines()[-1] == (
      f'2 images, 2 videos (16 frames), {total} detections, 3 skipped')


def _reference(detector, frame, index):
  boxes, classes, scores = annotate.select(detector.detect_image(frame), 0.0)
  return annotate.coco_results(index, boxes, classes, scores), (boxes, classes, scores)


def test_frame_lines_equal_the_detector_on_each_frame(setup, folder_run):
  out = folder_run[1]
  _, frames = _decode(setup['folder'] / CLIP['name'])
  lines = _lines(os.path.join(out, 'clip.jsonl'))
  assert len(lines) == len(frames) == CLIP['frames']
  for index, (line, frame) in enumerate(zip(lines, frames)):
    assert line['frame_index'] == index
    assert line['timestamp_s'] == pytest.approx(index / CLIP['fps'], abs=1e-6)
    want, _ = _reference(setup['detector'], frame, index)
    got = line['detections']
    assert len(got) == len(want) > 0
    assert [d['category_id'] for d in got] == [d['category_id'] for d in want]
    assert {d['image_id'] for d in got} == {index}
    np.testing.assert_allclose([d['bbox'] for d in got], [d['bbox'] for d in want],
                               atol=BOX_ATOL_PX)
    np.testing.assert_allclose([d['score'] for d in got], [d['score'] for d in want],
                               atol=SCORE_ATOL)


def test_annotated_video_keeps_rate_size_and_shows_the_drawings(setup, folder_run):
  out = folder_run[1]
  fps, annotated = _decode(os.path.join(out, 'clip.avi'))
  _, frames = _decode(setup['folder'] / CLIP['name'])
  assert fps == CLIP['fps'] and len(annotated) == CLIP['frames']
  names = setup['detector'].names
  for index in (0, CLIP['frames'] - 1):
    assert annotated[index].shape == (CLIP['size'][1], CLIP['size'][0], 3)
    _, (boxes, classes, scores) = _reference(setup['detector'], frames[index], index)
    want = np.asarray(draw.draw_detections(frames[index], boxes, classes,
                                           [names[int(c)] for c in classes], scores),
                      np.float64)
    got = annotated[index].astype(np.float64)
    error = np.abs(got - want).mean()
    assert error < 0.7 * np.abs(got - want[..., ::-1]).mean()
    assert error < 0.5 * np.abs(got - frames[index]).mean()  # The boxes are drawn.
  _, odd = _decode(os.path.join(out, 'odd.mp4'))  # mp4v in, mp4v out.
  assert len(odd) == ODD['frames'] and odd[0].shape == (54, 76, 3)


def test_unreadable_videos_only_exit_2_and_write_nothing(setup, capsys):
  out = setup['out'] / 'none'
  rc = _predict(setup, out, [setup['folder'] / name for name in UNREADABLE])
  err = capsys.readouterr().err.strip().splitlines()
  assert rc == errors.ERROR_EXIT_CODE
  assert err[-1].startswith('error: ') and 'could be read' in err[-1]
  for name, reason in UNREADABLE.items():
    assert [line for line in err if name in line] == [
        f'skipped {setup["folder"] / name}: ' + next(
            line.split(': ', 1)[1] for line in err if name in line)]
    assert reason in next(line for line in err if name in line)
  assert not os.path.exists(out)


def test_outputs_never_overwrite_inputs(setup, tmp_path):
  folder = tmp_path / 'both'
  folder.mkdir()
  clip = folder / CLIP['name']
  clip.write_bytes((setup['folder'] / CLIP['name']).read_bytes())
  before = clip.read_bytes()
  assert _predict(setup, folder, [clip], threshold=0.5) == 0
  assert clip.read_bytes() == before
  videos = _load_json(folder, predict.VIDEOS_FILE)
  assert (videos[0]['video'], videos[0]['detections_file']) == ('clip_1.avi', 'clip_1.jsonl')
  assert len(_lines(folder / 'clip_1.jsonl')) == CLIP['frames']


# ------------------------------------------------------------- without a TF model
def _stand_in(num_boxes=3, fail_at=None):
  """A Detector returning `num_boxes` fixed boxes per frame (ValueError at frame
  `fail_at`)."""
  calls = []

  def detect_image(image):
    if fail_at is not None and len(calls) == fail_at:
      raise ValueError('stand-in failure')
    calls.append(1)
    h, w = image.shape[:2]
    box = np.array([0.1 * h, 0.2 * w, 0.6 * h, 0.7 * w], np.float32)
    return {'detection_boxes': np.tile(box, [1, num_boxes, 1]),
            'detection_scores': np.linspace(0.9, 0.5, num_boxes, dtype=np.float32)[None],
            'detection_classes': np.full([1, num_boxes], 3, np.int32),
            'num_detections': np.array([num_boxes], np.int32)}

  return detector_lib.Detector(detect_image=detect_image, names={3: 'square'},
                               format='stand-in', description='stand-in')


def _run_video(path, out_dir, detector, clock=None):
  kwargs = {'clock': clock} if clock else {}
  with video_lib.VideoReader(str(path)) as reader:
    return video_predict.predict_video(detector, reader, str(out_dir / 'out.avi'),
                                       str(out_dir / 'out.jsonl'), 0.0, **kwargs)


def test_memory_stays_flat_on_a_long_video(tmp_path):
  size = (96, 64)  # A frame is 18 KB: holding the long video's frames would add 3.3 MB.
  short, long = tmp_path / 'short.avi', tmp_path / 'long.avi'
  _write_video(short, _frames(20, size), 25.0)
  with video_lib.VideoWriter(str(long), 25.0, size) as out:  # Streamed here too.
    for i in range(200):
      out.write(np.roll(_frames(1, size)[0], i, axis=1))
  detector = _stand_in()
  _run_video(short, tmp_path, detector)  # Warm-up: imports, fonts, codec setup.
  tracemalloc.start()
  try:
    assert _run_video(short, tmp_path, detector).frames == 20
    short_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    assert _run_video(long, tmp_path, detector).frames == 200
    long_peak = tracemalloc.get_traced_memory()[1]
  finally:
    tracemalloc.stop()
  assert long_peak - short_peak < STREAM_PEAK_GROWTH_BYTES, (short_peak, long_peak)
  assert len(_lines(tmp_path / 'out.jsonl')) == 200


def test_frames_per_second_is_frames_over_the_loop_time(tmp_path):
  path = tmp_path / 'v.avi'
  _write_video(path, _frames(8, (64, 48)), 8.0)
  times = iter([100.0, 102.0])
  result = _run_video(path, tmp_path, _stand_in(), clock=lambda: next(times))
  assert (result.frames, result.seconds, result.frames_per_second) == (8, 2.0, 4.0)
  assert (result.fps, result.width, result.height, result.detections) == (8.0, 64, 48, 24)


def test_failure_midway_leaves_no_output(tmp_path):
  path = tmp_path / 'in' / 'v.avi'
  path.parent.mkdir()
  _write_video(path, _frames(8, (64, 48)), 8.0)
  out = tmp_path / 'out'
  out.mkdir()
  with pytest.raises(ValueError, match='stand-in failure'):
    _run_video(path, out, _stand_in(fail_at=3))
  assert os.listdir(out) == []


def test_writer_pads_odd_sizes_and_refuses_other_suffixes(tmp_path):
  frame = _frames(1, (75, 53))[0]
  path = tmp_path / 'odd.avi'
  _write_video(path, [frame] * 3, 5.0)
  _, frames = _decode(path)
  assert len(frames) == 3 and frames[0].shape == (54, 76, 3)
  decoded = frames[0].astype(np.float64)
  assert np.abs(decoded[:53, :75] - frame).mean() < CODEC_MEAN_ATOL  # Where it was.
  assert np.abs(decoded[:, 75] - decoded[:, 74]).mean() < CODEC_MEAN_ATOL  # Replicated.
  assert np.abs(decoded[53] - decoded[52]).mean() < CODEC_MEAN_ATOL
  with pytest.raises(ValueError, match='must end with one of'):
    video_lib.VideoWriter(str(tmp_path / 'x.mkv'), 5.0, (8, 8))
  with video_lib.VideoReader(str(path)) as reader:
    assert (reader.width, reader.height, reader.fps, reader.frame_count) == (76, 54, 5.0, 3)
