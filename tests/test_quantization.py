"""int8 / fp16 vs fp32 TFLite detector: graph structure and detection agreement.

(int8 vs fp32 val AP of a TRAINED model is tests/test_e2e_shapes.py.) Here one tiny
detector (128x128, multiplier 0.35) with deterministic
spread-out weights (as tests/test_export.py: He-normal convs, identity BN, class
biases ~ -2, background -6) is exported fp32 and int8 (full-integer body, calibrated on
REPRESENTATIVE_IMAGES training images), and on the val images:
each of the fp32 model's top TOP_K detections per image is matched to the int8
detection of the same class with the highest IoU. Tolerances are set from measured values
with margin. The int8 graph is checked op by op: integer from the input's QUANTIZE to
the two DEQUANTIZEs that feed the float post-process op; the fp16 graph is the fp32
graph with every float constant stored as float16.
"""

import collections
import json

import numpy as np
import pytest

from mnv2_det.data import shapes
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.evaluation import coco
from detector_weights import spread_detector, tiny_overrides
import tflite_graph

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 128
MULTIPLIER = 0.35
NUM_CLASSES = 6  # shapes experiment: background + 5 categories
NUM_VAL = 8
REPRESENTATIVE_IMAGES = 8
TOP_K = 10
MATCH_IOU = 0.5
# The random-weight model's scores sit in a narrow band (sigmoid of ~-2 +- noise), so
# small int8 score errors can reorder detections; the thresholds below allow for that.
MIN_MATCHED_FRACTION = 0.8
MIN_MEDIAN_IOU = 0.85
MAX_MEDIAN_SCORE_DIFF = 0.05


def _iou_xywh(box, boxes):
  """IoU of one COCO [x, y, w, h] box with `[N, 4]` boxes."""
  boxes = np.asarray(boxes, np.float64).reshape([-1, 4])
  x0 = np.maximum(box[0], boxes[:, 0])
  y0 = np.maximum(box[1], boxes[:, 1])
  x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
  y1 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
  inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
  union = box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter
  return inter / np.maximum(union, 1e-12)


def test_iou_xywh_golden():
  # [0,0,2,2] vs [1,1,2,2]: intersection 1, union 4 + 4 - 1 = 7.
  np.testing.assert_allclose(_iou_xywh([0, 0, 2, 2], [[1, 1, 2, 2], [0, 0, 2, 2],
                                                      [5, 5, 1, 1]]), [1 / 7, 1, 0])


@pytest.fixture(scope='module')
def models(tmp_path_factory):
  root = tmp_path_factory.mktemp('quant')
  data = shapes.generate(str(root / 'shapes'), num_train=REPRESENTATIVE_IMAGES,
                         num_val=NUM_VAL, seed=11)
  params, task, model = spread_detector(
      tiny_overrides(str(root / 'shapes'), INPUT, MULTIPLIER), NUM_CLASSES, EXPERIMENT)
  paths = {}
  for quant in ('fp32', 'fp16', 'int8'):
    representative = (tflite_convert.representative_images(
        task, params, REPRESENTATIVE_IMAGES) if quant == 'int8' else None)
    paths[quant] = tflite_convert.export_tflite(
        params, model, task.category_map, str(root / f'{quant}.tflite'), quant,
        representative=representative)
  results = {}
  for quant in ('fp32', 'int8'):
    path = paths[quant]
    detections = str(root / f'{quant}.json')
    coco.evaluate_images(tflite.TFLiteDetector(path), data['val_annotations'],
                             data['val_images'], detections_file=detections)
    with open(detections, encoding='utf-8') as f:
      results[quant] = json.load(f)
  return {'data': data, 'paths': paths, 'results': results, 'root': root, 'model': model}


def _by_image(results):
  by_image = {}
  for r in results:
    by_image.setdefault(r['image_id'], []).append(r)
  return {i: sorted(rs, key=lambda r: -r['score']) for i, rs in by_image.items()}


def test_int8_is_quantized(models):
  assert tflite.TFLiteDetector(models['paths']['int8']).input_dtype == np.uint8


def test_int8_graph_is_integer_up_to_the_postprocess_op(models):
  """Every conv / depthwise / add (and every other op) after the input's QUANTIZE and
  before the two DEQUANTIZEs feeding the post-process op is int8, op counts as the
  Keras model's layers say (tflite_graph.check_int8_graph)."""
  paths = models['paths']
  ops = tflite_graph.check_int8_graph(paths['int8'], paths['fp32'], models['model'])
  counts = collections.Counter(name for name, _, _ in ops)
  print('int8 ops:', dict(counts))
  # This model: 55 convs, 33 depthwise convs, 10 residual adds + the normalization's.
  assert (counts['CONV_2D'], counts['DEPTHWISE_CONV_2D'], counts['ADD']) == (55, 33, 11)


def test_fp16_graph_stores_every_float_constant_as_float16(models):
  """fp16 is the fp32 graph with float16 weights (a DEQUANTIZE per constant), not a
  float32 model under another name; its numbers are checked against fp32 on the
  trained model in tests/test_e2e_shapes.py."""
  tflite_graph.check_fp16_graph(models['paths']['fp16'], models['paths']['fp32'])
  sizes = {q: float(np.size(np.fromfile(p, np.uint8))) for q, p in models['paths'].items()}
  print('file sizes (bytes):', sizes)
  # Weights are nearly all of the file: float16 halves it (+ metadata and graph).
  assert 0.45 < sizes['fp16'] / sizes['fp32'] < 0.55


def test_int8_detections_agree_with_fp32(models):
  fp32, int8 = _by_image(models['results']['fp32']), _by_image(models['results']['int8'])
  assert sorted(fp32) == sorted(int8) and len(fp32) == NUM_VAL
  ious, score_diffs = [], []
  for image_id, rows in fp32.items():
    for r in rows[:TOP_K]:
      same_class = [q for q in int8[image_id] if q['category_id'] == r['category_id']]
      if not same_class:
        ious.append(0.0)
        continue
      overlap = _iou_xywh(r['bbox'], [q['bbox'] for q in same_class])
      best = int(np.argmax(overlap))
      ious.append(float(overlap[best]))
      score_diffs.append(abs(same_class[best]['score'] - r['score']))
  ious = np.array(ious)
  matched = float(np.mean(ious >= MATCH_IOU))
  print(f'int8 vs fp32: matched {matched:.3f}, median IoU {np.median(ious):.3f}, '
        f'median |score diff| {np.median(score_diffs):.4f}')
  assert matched >= MIN_MATCHED_FRACTION
  assert np.median(ious) >= MIN_MEDIAN_IOU
  assert np.median(score_diffs) <= MAX_MEDIAN_SCORE_DIFF
