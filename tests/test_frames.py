"""One frame rule (docs/frames.md) at input sizes that are not multiples of 32.

Boxes, anchors and training targets are normalized to the network INPUT frame
(`input_size`, before the backbone pads it); the feature-map grid covers the padded
frame, so anchors are laid out there and re-expressed in the input frame. The tests
compute the expected geometry independently, in pixels of the padded frame (where
image content keeps its pixel coordinates), and check:
  * the training targets of a ground-truth box equal to an anchor are zero and match
    that anchor (through the real input pipeline);
  * a model whose weights make one anchor type of one level fire gives exactly the
    boxes of those anchors, in original-image pixels, through the checkpoint model,
    the SavedModel and the TFLite fp32 and int8 exports.
"""

import json
import math
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_det.export import saved_model
from mnv2_det.export import serving_inputs
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.ops import anchors as anchor_ops
from mnv2_det.core import params as params_lib
from official.core import task_factory
from detector_weights import SHAPES_EXPERIMENT, tiny_overrides

PAD = 32
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)
BOX_ATOL_PX = 1.0


def _padded(hw):
  return tuple(-(-int(s) // PAD) * PAD for s in hw)


def _pixel_anchor(padded_hw, level_index, row, col, spec_index, num_layers=6):
  """Anchor `[ymin, xmin, ymax, xmax]` in pixels, from the SSD rules (cell centres at
  (i + 0.5) * stride of the padded frame, sides scale * min(padded side) / sqrt(ar))."""
  specs = anchor_ops.ssd_box_specs(num_layers=num_layers)[level_index]
  scale, ratio = specs[spec_index]
  fm_h, fm_w = anchor_ops.ssd_feature_map_shapes(padded_hw, num_layers=num_layers)[
      level_index]
  side = min(padded_hw)
  h, w = scale / math.sqrt(ratio) * side, scale * math.sqrt(ratio) * side
  yc, xc = (row + 0.5) * padded_hw[0] / fm_h, (col + 0.5) * padded_hw[1] / fm_w
  return np.array([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]), (fm_h, fm_w), len(specs)


def _params(data_dir, input_hw, extra=''):
  override = tiny_overrides(data_dir)
  override += f',task.model.input_size=[{input_hw[0]},{input_hw[1]},3]' + extra
  return params_lib.build_params(SHAPES_EXPERIMENT, params_override=override)


@pytest.fixture(scope='module')
def shapes_dir(shapes_data):
  return shapes_data(num_train=4, num_val=2, seed=3)['dir']


# ------------------------------------------------------------------ training targets
@pytest.mark.parametrize('input_hw', [(300, 300), (300, 420)])
def test_anchor_equal_box_gets_zero_targets(tmp_path, shapes_dir, input_hw):
  padded = _padded(input_hw)
  fm = anchor_ops.ssd_feature_map_shapes(padded)[0]
  # Finest level, its 0.1-scale square anchor, in a cell near the bottom-right
  # corner of the image, where a padded/input frame mix-up moves boxes the most.
  row = int((input_hw[0] - 24) // (padded[0] / fm[0]))
  col = int((input_hw[1] - 24) // (padded[1] / fm[1]))
  box, (fm_h, fm_w), per_loc = _pixel_anchor(padded, 0, row, col, 0)
  assert box[2] <= input_hw[0] and box[3] <= input_hw[1] and box.min() >= 0
  index = (row * fm_w + col) * per_loc

  # One image of exactly the input size (resize is the identity) with that box.
  image_dir = tmp_path / 'images'
  image_dir.mkdir()
  Image.fromarray(np.full(list(input_hw) + [3], 128, np.uint8)).save(image_dir / 'a.png')
  y0, x0, y1, x1 = (float(v) for v in box)
  coco = {'images': [{'id': 1, 'file_name': 'a.png', 'height': input_hw[0],
                      'width': input_hw[1]}],
          'annotations': [{'id': 1, 'image_id': 1, 'category_id': 4, 'iscrowd': 0,
                           'bbox': [x0, y0, x1 - x0, y1 - y0],
                           'area': (x1 - x0) * (y1 - y0)}],
          'categories': [{'id': 4, 'name': 'thing'}]}
  annotation = tmp_path / 'a.json'
  annotation.write_text(json.dumps(coco))
  params = _params(shapes_dir, input_hw, ','.join([
      '', f'task.train_data.annotation_file={annotation}',
      f'task.train_data.image_dir={image_dir}',
      f'task.validation_data.annotation_file={annotation}',
      f'task.validation_data.image_dir={image_dir}',
      'task.validation_data.global_batch_size=1']))
  task = task_factory.get_task(params.task)
  # The anchors themselves follow the rule: pixels / input size.
  np.testing.assert_allclose(task._anchors[index] * np.tile(input_hw, 2), box, atol=1e-3)  # pylint: disable=protected-access
  _, labels = next(iter(task.build_inputs(params.task.validation_data)))
  positive = np.flatnonzero(labels['positive_mask'][0].numpy())
  assert index in positive
  assert int(labels['cls_targets'][0, index]) == 1
  np.testing.assert_allclose(labels['box_targets'][0, index].numpy(), 0.0, atol=1e-4)


# ------------------------------------------------------------------ detections
# Per size: the level and anchor type that fire, and the original image size.
CASES = {
    '300': dict(input_hw=(300, 300), original_hw=(450, 375)),
    '333x517': dict(input_hw=(333, 517), original_hw=(333, 517)),
    '320': dict(input_hw=(320, 320), original_hw=(240, 400)),
}
FIRING_LEVEL_INDEX = 2  # stride-64 level: 5x5 cells at 320, 6x9 at 333x517
FIRING_SPEC = 1  # aspect ratio 2.0
FIRING_CLASS = 2  # contiguous index
BOX_CODES = (1.5, -2.0, -2.5, -2.0)  # (ty, tx, th, tw), the same for every anchor
HIGH_LOGIT, LOW_LOGIT = 10.0, -10.0
MIN_SCORE = 0.5


def _one_anchor_type_fires(model, num_classes):
  """Zero predictor kernels; class biases LOW except FIRING_CLASS of FIRING_SPEC on
  the firing level; box biases BOX_CODES at every anchor."""
  levels = sorted(model.head.get_config()['levels'], key=int)
  firing = levels[FIRING_LEVEL_INDEX]
  for v in model.head.variables:
    name = v.name
    if 'predictor' not in name:
      continue
    if name.endswith('kernel:0'):
      v.assign(tf.zeros_like(v))
      continue
    if '/class_' in name or name.startswith('class_'):
      value = np.full(v.shape, LOW_LOGIT, np.float32)
      if f'class_{firing}_' in name:
        value[FIRING_SPEC * num_classes + FIRING_CLASS] = HIGH_LOGIT
    else:
      value = np.tile(np.array(BOX_CODES, np.float32), v.shape[0] // 4)
    v.assign(value)


def _expected_boxes(input_hw, original_hw, clip=True):
  """Decoded boxes of every firing anchor, original pixels, clipped, sorted."""
  padded = _padded(input_hw)
  _, (fm_h, fm_w), _ = _pixel_anchor(padded, FIRING_LEVEL_INDEX, 0, 0, FIRING_SPEC)
  ty, tx, th, tw = (c / s for c, s in zip(BOX_CODES, SCALE_FACTORS))
  ratio = np.array(original_hw, np.float64) / np.array(input_hw, np.float64)
  boxes = []
  for row in range(fm_h):
    for col in range(fm_w):
      a, _, _ = _pixel_anchor(padded, FIRING_LEVEL_INDEX, row, col, FIRING_SPEC)
      ha, wa = a[2] - a[0], a[3] - a[1]
      yc, xc = (a[0] + a[2]) / 2 + ty * ha, (a[1] + a[3]) / 2 + tx * wa
      h, w = ha * math.exp(th), wa * math.exp(tw)
      box = np.array([yc - h / 2, xc - w / 2, yc + h / 2, xc + w / 2]) * np.tile(ratio, 2)
      if clip:
        box = np.clip(box, 0, np.tile(original_hw, 2))
      if box[2] > box[0] and box[3] > box[1]:
        boxes.append(box)
  return _sorted(np.array(boxes))


def _sorted(boxes):
  boxes = np.asarray(boxes, np.float64).reshape([-1, 4])
  return boxes[np.lexsort((boxes[:, 1], boxes[:, 0]))] if len(boxes) else boxes


def _firing(out):
  """Boxes of detections with a high score, checking their class."""
  n = int(np.asarray(out['num_detections']).reshape(-1)[0])
  scores = np.asarray(out['detection_scores'])[0, :n]
  keep = scores > MIN_SCORE
  return _sorted(np.asarray(out['detection_boxes'])[0, :n][keep]), np.asarray(
      out['detection_classes'])[0, :n][keep]


@pytest.fixture(scope='module', params=sorted(CASES))
def fired(request, shapes_dir, tmp_path_factory):
  case = CASES[request.param]
  params = _params(shapes_dir, case['input_hw'])
  task = task_factory.get_task(params.task)
  model = task.build_model()
  num_classes = params.task.model.num_classes
  _one_anchor_type_fires(model, num_classes)
  rng = np.random.default_rng(0)
  image = rng.integers(0, 256, list(case['original_hw']) + [3]).astype(np.uint8)
  return dict(case, params=params, task=task, model=model, image=image,
              expected=_expected_boxes(case['input_hw'], case['original_hw']),
              dataset_id=task.category_map.dataset_ids[FIRING_CLASS - 1],
              out=tmp_path_factory.mktemp('export'))


def _check(fired, out, contiguous=False):
  boxes, classes = _firing(out)
  expected = fired['expected']
  assert boxes.shape == expected.shape, (boxes.shape, expected.shape)
  np.testing.assert_allclose(boxes, expected, atol=BOX_ATOL_PX)
  assert set(classes.tolist()) == {FIRING_CLASS if contiguous else fired['dataset_id']}


def test_checkpoint_model_boxes(fired):
  prepared, info = serving_inputs.prepare_image(
      tf.constant(fired['image']), fired['input_hw'], 'fixed')
  out = fired['model'](prepared[tf.newaxis], image_info=info[tf.newaxis], training=False)
  assert len(fired['expected']) >= 4  # several cells, the bottom/right ones included
  _check(fired, {k: v.numpy() for k, v in out.items() if k.startswith(('detection', 'num'))},
         contiguous=True)


def test_saved_model_boxes(fired):
  path = saved_model.export_saved_model(
      fired['params'], fired['model'], fired['task'].category_map,
      str(fired['out'] / 'saved_model'))
  serve = tf.saved_model.load(path).signatures[saved_model.DEFAULT_SIGNATURE]
  out = serve(images=tf.constant(fired['image'][np.newaxis]))
  _check(fired, {k: v.numpy() for k, v in out.items()})


@pytest.mark.parametrize('quant', ['fp32', 'int8'])
def test_tflite_boxes(fired, quant):
  rng = np.random.default_rng(1)
  representative = [rng.uniform(0, 255, [1] + list(fired['input_hw']) + [3]).astype(
      np.float32) for _ in range(4)] if quant == 'int8' else None
  path = tflite_convert.export_tflite(
      fired['params'], fired['model'], fired['task'].category_map,
      str(fired['out'] / f'{quant}.tflite'), quant, representative=representative)
  detector = tflite.TFLiteDetector(path)
  assert detector.info['box_frame'] == 'input'
  _check(fired, detector(fired['image']))
  # What an on-device client computes: the op's normalized boxes times the size of
  # the image it fed (the input size), without any knowledge of the padding.
  prepared, _ = serving_inputs.prepare_image(
      tf.constant(fired['image']), fired['input_hw'], 'fixed')
  raw = detector.run_network(serving_inputs.normalized_to_pixels(prepared).numpy())
  n = int(raw['num_detections'][0])
  keep = raw['detection_scores'][0, :n] > MIN_SCORE
  client = _sorted(raw['detection_boxes'][0, :n][keep] * np.tile(fired['input_hw'], 2))
  np.testing.assert_allclose(
      client, _expected_boxes(fired['input_hw'], fired['input_hw'], clip=False),
      atol=BOX_ATOL_PX)
