"""tools/predict.py: checkpoint / SavedModel / TFLite -> COCO results + drawings.

One tiny detector (128x128 input, depth multiplier 0.35, deterministic weights with
spread-out class scores, as in tests/test_export.py) saved with
tf.train.Checkpoint(model=...) like the Model Garden trainer. Its detections through
tools/predict.py are compared with the in-process model (eval preprocessing + model
call), so a wrong box order (yxyx vs xywh), a wrong class id (contiguous vs dataset)
or a wrong image scale fails the test.

Both resize modes (`task.validation_data.parser.resize_mode`: 'fixed' stretch and
'keep_aspect' fit + pad) are exported and served: the checkpoint, SavedModel and
TFLite fp32 paths of tools/predict.py give the same top-K detections, all K rows
(`test_all_k_rows_agree_across_checkpoint_saved_model_and_tflite`).
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from pycocotools.coco import COCO

from mnv2_det.data import preprocess
from mnv2_det.data import shapes
from mnv2_det.data.category_map import UNKNOWN
from mnv2_det.export import saved_model
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.core import errors
from mnv2_det.cli import predict
from mnv2_det.data import image_files
from detector_weights import spread_detector, tiny_overrides

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 128
NUM_CLASSES = 6  # shapes experiment: background + 5 categories
SHAPES_IDS = (1, 3, 7, 9, 12)
SHAPES_NAMES = {1: 'circle', 3: 'square', 7: 'triangle', 9: 'cross', 12: 'star'}
BOX_ATOL_PX = 0.05
SCORE_ATOL = 1e-5
UINT16_PER_UINT8 = 257  # 65535 / 255: 16-bit value of an 8-bit grey level.
GOOD_NAMES = ('val_000000.jpg', 'val_000001.jpg', 'gray.png', 'gray_rgb.png',
              'gray16.png', 'rgb.png', 'rgba.png')
BAD_NAMES = ('corrupt.jpg', 'empty.png', 'notes.png')
RESIZE_MODES = ('fixed', 'keep_aspect')
# The TFLite op runs NMS on unclipped boxes and clips afterwards; the TF path does so
# with `clip_before_nms: false` (the default clips first, so the two disagree from the
# first row where clipping changes an IoU test: row 39..76 of 100 on these images).
SAME_NMS_ORDER = 'task.model.detection_generator.clip_before_nms=false'
# One landscape, one near-square and one portrait image (the first, transposed).
TOP_K_NAMES = ('val_000000.jpg', 'val_000001.jpg', 'portrait.png')
MAX_DETECTIONS = 100  # The experiment's max_num_detections: every image fills it.
# TFLite (its own kernels and NMS op) vs TF, through the JSON of tools/predict.py,
# original pixels (images of 191..373 px): measured max |diff| 3.4e-4 px for boxes and
# 3.5e-6 for scores over all rows of both modes; ~6x margin.
TFLITE_BOX_ATOL_PX = 2e-3
TFLITE_SCORE_ATOL = 2e-5


@pytest.fixture(scope='module')
def setup(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('shapes'))
  shapes.generate(data_dir, num_train=4, num_val=2, seed=5)
  override = tiny_overrides(data_dir, INPUT)
  params, task, model = spread_detector(override, NUM_CLASSES, EXPERIMENT)
  prefix = tf.train.Checkpoint(model=model).write(
      str(tmp_path_factory.mktemp('ckpt') / 'ckpt-1'))
  images = tmp_path_factory.mktemp('images')
  rgb = {}  # Pixels as the tool decodes them (TF's JPEG decoder, not Pillow's).
  for name in GOOD_NAMES[:2]:
    with open(os.path.join(data_dir, 'val', name), 'rb') as f:
      contents = f.read()
    (images / name).write_bytes(contents)
    rgb[name] = preprocess.decode_image_rgb(tf.constant(contents)).numpy()
  gray = rgb['val_000000.jpg'].mean(-1).round().astype(np.uint8)
  Image.fromarray(gray).save(images / 'gray.png')
  Image.fromarray(np.dstack([gray] * 3)).save(images / 'gray_rgb.png')
  Image.fromarray(gray.astype(np.uint16) * UINT16_PER_UINT8).save(images / 'gray16.png')
  color = rgb['val_000001.jpg']
  Image.fromarray(color).save(images / 'rgb.png')
  alpha = np.full(color.shape[:2], 90, np.uint8)  # Must be dropped, not blended.
  Image.fromarray(np.dstack([color, alpha]), 'RGBA').save(images / 'rgba.png')
  with open(os.path.join(data_dir, 'val', 'val_000000.jpg'), 'rb') as f:
    (images / 'corrupt.jpg').write_bytes(f.read()[:400])  # Cut-off JPEG.
  (images / 'empty.png').write_bytes(b'')
  (images / 'notes.png').write_text('not an image')
  return dict(params=params, model=model, prefix=prefix, override=override,
              category_map=task.category_map, images=images, rgb=rgb,
              out=tmp_path_factory.mktemp('out'))


def _reference(setup, image, model=None, resize_mode='fixed'):
  """In-process detections: eval preprocessing + model; dataset ids, score order.

  Detections without a dataset id would be dropped, as the tool (and COCO results)
  must; the model detects only the category table's classes, so there are none.
  """
  prepared, info = serving_inputs.prepare_image(tf.constant(image), [INPUT, INPUT],
                                                resize_mode)
  model = setup['model'] if model is None else model
  out = model(prepared[None], image_info=info[None], training=False)
  n = int(out['num_detections'][0])
  classes = setup['category_map'].tf_to_dataset(out['detection_classes']).numpy()[0, :n]
  keep = classes != UNKNOWN
  return (out['detection_boxes'].numpy()[0, :n][keep], classes[keep],
          out['detection_scores'].numpy()[0, :n][keep])


def _run(setup, model, out_name, inputs, extra=()):
  out = str(setup['out'] / out_name)
  rc = predict.main(['--model', model, '--output', out, '--score_threshold', '0'] +
                    list(extra) + [str(i) for i in inputs])
  return rc, out


def _load(out):
  with open(os.path.join(out, predict.IMAGES_FILE), encoding='utf-8') as f:
    images = json.load(f)
  with open(os.path.join(out, predict.DETECTIONS_FILE), encoding='utf-8') as f:
    results = json.load(f)
  with open(os.path.join(out, predict.CATEGORIES_FILE), encoding='utf-8') as f:
    categories = json.load(f)
  return images, results, categories


def _by_file(images, results):
  """{file basename: [results of that image]}."""
  names = {im['id']: os.path.basename(im['file_name']) for im in images}
  grouped = {name: [] for name in names.values()}
  for r in results:
    grouped[names[r['image_id']]].append(r)
  return grouped


@pytest.fixture(scope='module')
def checkpoint_run(setup):
  """Folder input (all good + bad files) through the checkpoint path."""
  rc, out = _run(setup, setup['prefix'], 'ckpt', [setup['images']],
                 ['--experiment', EXPERIMENT, '--params_override', setup['override']])
  return rc, out


def test_checkpoint_results_load_in_pycocotools(setup, checkpoint_run):
  rc, out = checkpoint_run
  assert rc == 0
  images, results, categories = _load(out)
  assert [os.path.basename(im['file_name']) for im in images] == sorted(GOOD_NAMES)
  assert [im['id'] for im in images] == list(range(1, len(GOOD_NAMES) + 1))
  assert {c['id']: c['name'] for c in categories} == SHAPES_NAMES
  groundtruth = COCO()
  groundtruth.dataset = {'images': images, 'categories': categories, 'annotations': []}
  groundtruth.createIndex()
  loaded = groundtruth.loadRes(results)  # Asserts every image_id is known.
  assert len(loaded.getAnnIds()) == len(results) > 0
  assert {r['category_id'] for r in results} <= set(SHAPES_IDS)  # Dataset ids.
  for im in images:
    drawing = Image.open(os.path.join(out, im['drawing']))
    assert drawing.format == 'PNG' and drawing.size == (im['width'], im['height'])
    assert im['drawing'] == os.path.splitext(os.path.basename(im['file_name']))[0] + '.png'


def test_checkpoint_detections_equal_in_process_model(setup, checkpoint_run):
  images, results, _ = _load(checkpoint_run[1])
  grouped = _by_file(images, results)
  for name, image in setup['rgb'].items():
    boxes, classes, scores = _reference(setup, image)
    got = grouped[name]
    assert len(got) == len(scores) > 0  # Threshold 0 keeps every valid detection.
    want_xywh = np.stack([boxes[:, 1], boxes[:, 0], boxes[:, 3] - boxes[:, 1],
                          boxes[:, 2] - boxes[:, 0]], -1)
    np.testing.assert_allclose([r['bbox'] for r in got], want_xywh, atol=BOX_ATOL_PX)
    np.testing.assert_allclose([r['score'] for r in got], scores, atol=SCORE_ATOL)
    np.testing.assert_array_equal([r['category_id'] for r in got], classes)
    # Original pixels: some box reaches past the 128-pixel network input.
    assert max(x + w for x, _, w, _ in want_xywh) > INPUT


def test_gray_rgba_and_16_bit_inputs(checkpoint_run):
  """gray / 16-bit gray / gray tiled to RGB decode to the same pixels -> same boxes;
  RGBA drops alpha -> same boxes as the RGB PNG of the same pixels."""
  grouped = _by_file(*_load(checkpoint_run[1])[:2])
  same = [('gray.png', 'gray_rgb.png'), ('gray16.png', 'gray_rgb.png'),
          ('rgba.png', 'rgb.png')]
  for a, b in same:
    assert len(grouped[a]) == len(grouped[b]) > 0, (a, b)
    np.testing.assert_allclose([r['bbox'] for r in grouped[a]],
                               [r['bbox'] for r in grouped[b]], atol=1e-3)


def test_bad_images_skipped_and_score_threshold(setup, checkpoint_run, capsys):
  """Unreadable / missing inputs are named on stderr and skipped; the rest is
  processed with --score_threshold applied to the JSON."""
  images, all_results, _ = _load(checkpoint_run[1])
  want = _by_file(images, all_results)['val_000000.jpg']
  threshold = float(np.median([r['score'] for r in want]))
  rc, out = _run(setup, setup['prefix'], 'mixed',
                 [setup['images'] / 'val_000000.jpg', setup['images'] / 'corrupt.jpg',
                  setup['images'] / 'empty.png', setup['images'] / 'notes.png',
                  setup['images'] / 'missing.jpg'],
                 ['--experiment', EXPERIMENT, '--params_override', setup['override'],
                  '--score_threshold', str(threshold)])
  captured = capsys.readouterr()
  assert rc == 0
  for name in BAD_NAMES + ('missing.jpg',):
    assert f'{name}: ' in captured.err, name
  assert 'file is empty' in captured.err
  images, results, _ = _load(out)
  assert [os.path.basename(im['file_name']) for im in images] == ['val_000000.jpg']
  assert sorted(os.listdir(out)) == sorted(
      [predict.CATEGORIES_FILE, predict.DETECTIONS_FILE, predict.IMAGES_FILE,
       'val_000000.png'])
  kept = [dict(r, image_id=1) for r in want if r['score'] >= threshold]
  assert len(kept) < len(want)
  assert len(results) == len(kept)
  for got, ref in zip(results, kept):
    assert got['category_id'] == ref['category_id'] and got['image_id'] == 1
    np.testing.assert_allclose(got['bbox'], ref['bbox'], atol=1e-3)
  last = captured.out.strip().splitlines()[-1]
  assert last == f'1 images, {len(results)} detections, 4 skipped'


def _error(capsys):
  err = capsys.readouterr().err.strip().splitlines()
  assert err and err[-1].startswith('error: ')
  return err[-1]


def test_unknown_model_format_exit_2(setup, tmp_path, capsys):
  junk = tmp_path / 'model.bin'
  junk.write_bytes(b'\x00' * 64)
  rc, _ = _run(setup, str(junk), 'junk', [setup['images']])
  assert rc == errors.ERROR_EXIT_CODE
  line = _error(capsys)
  assert str(junk) in line and 'unknown model format' in line
  folder = tmp_path / 'empty_dir'
  folder.mkdir()
  assert _run(setup, str(folder), 'junk', [setup['images']])[0] == 2
  assert str(folder) in _error(capsys)
  assert _run(setup, str(tmp_path / 'nope'), 'junk', [setup['images']])[0] == 2
  assert 'does not exist' in _error(capsys)
  # A checkpoint needs --experiment.
  assert _run(setup, setup['prefix'], 'junk', [setup['images']])[0] == 2
  assert '--experiment' in _error(capsys)


def test_no_readable_image_exit_2(setup, capsys):
  rc, _ = _run(setup, setup['prefix'], 'none',
               [setup['images'] / 'corrupt.jpg', setup['images'] / 'empty.png'],
               ['--experiment', EXPERIMENT, '--params_override', setup['override']])
  assert rc == 2
  assert 'could be read' in _error(capsys)


def test_saved_model_and_tflite_match_checkpoint(setup, checkpoint_run):
  """The SavedModel runs the same serving function: the same results, bit for bit,
  every row. TFLite (its own NMS op, on unclipped boxes) agrees on the top detection
  with the config's default clip-before-NMS; with the op's order, on every row
  (test_all_k_rows_agree_across_checkpoint_saved_model_and_tflite)."""
  s = setup
  sm_dir = saved_model.export_saved_model(s['params'], s['model'], s['category_map'],
                                          str(s['out'] / 'sm'))
  rc, out = _run(s, sm_dir, 'sm_out', [s['images'] / n for n in sorted(GOOD_NAMES)])
  assert rc == 0
  want_images, want, _ = _load(checkpoint_run[1])
  got_images, got, categories = _load(out)
  assert got_images == want_images
  assert {c['id']: c['name'] for c in categories} == SHAPES_NAMES  # detector.json
  assert len(got) == len(want) == len(GOOD_NAMES) * MAX_DETECTIONS
  assert got == want  # image ids, dataset ids, boxes and scores: equal floats.

  path = tflite_convert.export_tflite(s['params'], s['model'], s['category_map'],
                                      str(s['out'] / 'm.tflite'), 'fp32')
  rc, out = _run(s, path, 'tfl_out', [s['images'] / 'val_000000.jpg'])
  assert rc == 0
  _, got, categories = _load(out)
  assert {c['id']: c['name'] for c in categories} == SHAPES_NAMES  # metadata
  top = _by_file(want_images, want)['val_000000.jpg'][0]
  assert got[0]['category_id'] == top['category_id']
  np.testing.assert_allclose(got[0]['bbox'], top['bbox'], atol=0.5)
  np.testing.assert_allclose(got[0]['score'], top['score'], atol=1e-3)


def _assert_same_rows(got, want, box_atol, score_atol, what):
  """One image's COCO results from two paths: as many rows; row by row the same class,
  boxes and scores within the tolerances. Rows whose scores tie (consecutive scores
  within `score_atol`) may come in either order: such a run is compared sorted."""
  assert len(got) == len(want), (what, len(got), len(want))
  key = lambda r: (r['category_id'], r['bbox'])
  i = 0
  while i < len(want):
    j = i + 1
    while j < len(want) and want[j - 1]['score'] - want[j]['score'] <= score_atol:
      j += 1
    g, w = sorted(got[i:j], key=key), sorted(want[i:j], key=key)
    assert [r['category_id'] for r in g] == [r['category_id'] for r in w], (what, i)
    np.testing.assert_allclose([r['bbox'] for r in g], [r['bbox'] for r in w],
                               atol=box_atol, rtol=0, err_msg=f'{what} rows {i}..{j}')
    np.testing.assert_allclose([r['score'] for r in g], [r['score'] for r in w],
                               atol=score_atol, rtol=0, err_msg=f'{what} rows {i}..{j}')
    i = j


def _op_rows_outside_content(tflite_path, image, resize_mode):
  """How many of the TFLite op's detections lie wholly outside the image content
  (zero area once clipped to it, e.g. in keep_aspect's padding): `TFLiteDetector`
  drops them, so they are rows the TFLite path has less than the TF path."""
  runner = tflite.TFLiteDetector(tflite_path)
  prepared, info = serving_inputs.prepare_image(tf.constant(image), [INPUT, INPUT],
                                                resize_mode)
  raw = runner.run_network(serving_inputs.normalized_to_pixels(prepared).numpy())
  boxes = raw['detection_boxes'][0, :int(raw['num_detections'][0])]
  content = info.numpy()[1] / INPUT  # (scaled_h, scaled_w), normalized.
  y = np.clip(boxes[:, 0::2], 0.0, content[0])
  x = np.clip(boxes[:, 1::2], 0.0, content[1])
  return int(np.sum((y[:, 1] <= y[:, 0]) | (x[:, 1] <= x[:, 0])))


@pytest.fixture(scope='module')
def top_k_runs(setup, tmp_path_factory):
  """{resize mode: {'outputs': {format: {file name: COCO results}}, ...}}: the same
  weights with `resize_mode` (train and validation parser) and the op's NMS order,
  through tools/predict.py as checkpoint (setup's, --params_override), SavedModel and
  TFLite fp32 exported from that config."""
  s = setup
  inputs = tmp_path_factory.mktemp('top_k_images')
  for name in TOP_K_NAMES[:2]:
    (inputs / name).write_bytes((s['images'] / name).read_bytes())
  portrait = np.ascontiguousarray(s['rgb']['val_000000.jpg'].transpose(1, 0, 2))
  Image.fromarray(portrait).save(inputs / 'portrait.png')
  rgb = {**s['rgb'], 'portrait.png': portrait}
  runs = {}
  for mode in RESIZE_MODES:
    override = ','.join([s['override'], SAME_NMS_ORDER,
                         f'task.train_data.parser.resize_mode={mode}',
                         f'task.validation_data.parser.resize_mode={mode}'])
    params, task, model = spread_detector(override, NUM_CLASSES, EXPERIMENT)
    sm_dir = saved_model.export_saved_model(params, model, task.category_map,
                                            str(s['out'] / f'sm_{mode}'))
    tfl = tflite_convert.export_tflite(params, model, task.category_map,
                                       str(s['out'] / f'{mode}.tflite'), 'fp32')
    outputs = {}
    for fmt, path, extra in (
        ('checkpoint', s['prefix'], ['--experiment', EXPERIMENT, '--params_override',
                                     override]),
        ('saved_model', sm_dir, []), ('tflite', tfl, [])):
      rc, out = _run(s, path, f'top_k_{mode}_{fmt}', [inputs / n for n in TOP_K_NAMES],
                     extra)
      assert rc == 0, (mode, fmt)
      outputs[fmt] = _by_file(*_load(out)[:2])
    runs[mode] = dict(outputs=outputs, model=model, saved_model=sm_dir, tflite=tfl,
                      rgb=rgb)
  return runs


@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_resize_mode_is_exported(top_k_runs, resize_mode):
  run = top_k_runs[resize_mode]
  with open(os.path.join(run['saved_model'], saved_model.DETECTOR_INFO_FILE),
            encoding='utf-8') as f:
    assert json.load(f)['resize_mode'] == resize_mode
  assert tflite.TFLiteDetector(run['tflite']).info['resize_mode'] == resize_mode


@pytest.mark.parametrize('resize_mode', RESIZE_MODES)
def test_all_k_rows_agree_across_checkpoint_saved_model_and_tflite(
    setup, top_k_runs, resize_mode):
  """All K rows, not the top 1: the checkpoint path equals the in-process model with
  the same resize mode; the SavedModel equals the checkpoint bit for bit; TFLite fp32
  equals it to float tolerance, classes and order exact (ties excepted). The TFLite op
  cannot tell padding from image, so in keep_aspect it spends rows on boxes wholly in
  the padding, which `TFLiteDetector` drops: its rows are the checkpoint's first rows,
  short by exactly those."""
  run = top_k_runs[resize_mode]
  outputs = run['outputs']
  shortfall = {}
  for name in TOP_K_NAMES:
    want = outputs['checkpoint'][name]
    assert len(want) == MAX_DETECTIONS, (name, len(want))
    boxes, classes, scores = _reference(setup, run['rgb'][name], run['model'],
                                        resize_mode)
    reference = predict.coco_results(want[0]['image_id'], boxes, classes, scores)
    _assert_same_rows(want, reference, BOX_ATOL_PX, SCORE_ATOL, f'{name} in-process')
    assert outputs['saved_model'][name] == want, name
    got = outputs['tflite'][name]
    missing = _op_rows_outside_content(run['tflite'], run['rgb'][name], resize_mode)
    assert len(got) == len(want) - missing, (name, len(got), missing)
    _assert_same_rows(got, want[:len(got)], TFLITE_BOX_ATOL_PX, TFLITE_SCORE_ATOL,
                      f'{name} TFLite')
    shortfall[name] = missing
  print(f'{resize_mode}: TFLite rows short of {MAX_DETECTIONS} (op rows wholly outside '
        f'the image): {shortfall}')
  if resize_mode == 'fixed':  # Every anchor lies on the image: nothing to drop.
    assert set(shortfall.values()) == {0}


def test_keep_aspect_is_served_by_every_path(top_k_runs):
  """Each path really resizes as its config says: the top detections of the
  non-square images differ between keep_aspect and the stretch."""
  top = 10
  for fmt in ('checkpoint', 'saved_model', 'tflite'):
    fixed = top_k_runs['fixed']['outputs'][fmt]
    keep = top_k_runs['keep_aspect']['outputs'][fmt]
    for name in ('val_000000.jpg', 'portrait.png'):
      assert not np.allclose([r['bbox'] for r in fixed[name][:top]],
                             [r['bbox'] for r in keep[name][:top]], atol=1.0), (fmt, name)


def test_expand_inputs(tmp_path):
  (tmp_path / 'a.JPG').write_bytes(b'x')
  (tmp_path / 'b.png').write_bytes(b'x')
  (tmp_path / 'readme.txt').write_text('x')
  (tmp_path / 'sub').mkdir()
  (tmp_path / 'sub' / 'c.jpg').write_bytes(b'x')
  paths, problems = image_files.expand_inputs(
      [str(tmp_path), str(tmp_path / 'b.png'), str(tmp_path / '**' / '*.jpg'),
       str(tmp_path / 'readme.txt'), str(tmp_path / '*.gif'), str(tmp_path / 'no.jpg')])
  # Folder: image suffixes only, not recursive; duplicates dropped; an explicit file
  # is taken whatever its suffix (it is reported later if unreadable).
  assert [os.path.relpath(p, tmp_path) for p in paths] == [
      'a.JPG', 'b.png', os.path.join('sub', 'c.jpg'), 'readme.txt']
  assert [(os.path.basename(i), r) for i, r in problems] == [
      ('*.gif', 'pattern matches no file'), ('no.jpg', 'file not found')]


def test_drawing_names_and_coco_boxes():
  used = set()
  assert [predict._drawing_name(p, used) for p in  # pylint: disable=protected-access
          ('a/x.jpg', 'b/x.png', 'c/X.bmp', 'y.jpeg')] == [
              'x.png', 'x_1.png', 'X_2.png', 'y.png']
  # yxyx [10, 20, 40, 80] -> xywh [20, 10, 60, 30].
  assert predict.coco_results(3, [[10, 20, 40, 80]], [7], [0.5]) == [
      {'image_id': 3, 'category_id': 7, 'bbox': [20.0, 10.0, 60.0, 30.0], 'score': 0.5}]
