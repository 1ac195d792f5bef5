"""Float vs post-training int8 (PTQ) vs quantization-aware trained int8 (QAT): val AP.

    python benchmarks/qat_table.py --float_model runs/shapes --qat_model runs/shapes_qat \
        [--work_dir /tmp/qat_table] [--few_images 4] [--max_images N]

`--float_model` is a trained `ssdlite_mnv2_shapes` model dir (the README's main job);
`--qat_model` its QAT fine-tune (`tools/train.py --experiment ssdlite_mnv2_shapes_qat
--params_override task.quantization.pretrained_original_checkpoint=runs/shapes`). Rows,
each scored with pycocotools on the float model's val split through the same
`Detector` as tools/eval.py:
  * the float checkpoint (TF);
  * PTQ int8 calibrated on the default number of training images, and on only
    `--few_images` (a PTQ that calibration hurts more);
  * QAT int8 (ranges from training, no calibration) and the QAT checkpoint itself (TF,
    fake quant), so the export's own cost shows apart from QAT's.
Prints the CPU model with the table; the figures are APs, not timings.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.core import loading  # pylint: disable=g-import-not-at-top
from mnv2_det.evaluation import coco
from mnv2_det.export import tflite
from mnv2_det.export import tflite_convert
from mnv2_det.inference import detector as detector_lib

from frames_288 import _cpu_model

STATS = ('AP', 'AP50', 'AP75', 'APs', 'APm', 'APl')


def _score(detector, val, max_images):
  report = coco.evaluate_images(detector, val.annotation_file, val.image_dir,
                                max_images=max_images)
  return report['stats']


def _int8(loaded, path, representative):
  return tflite_convert.export_tflite(loaded.params, loaded.model, loaded.category_map,
                                      path, 'int8', representative=representative,
                                      overwrite=True)


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--float_model', required=True)
  parser.add_argument('--qat_model', required=True)
  parser.add_argument('--work_dir', default='/tmp/qat_table')
  parser.add_argument('--few_images', type=int, default=4)
  parser.add_argument('--max_images', type=int, help='val images scored (None: all)')
  args = parser.parse_args(argv)
  os.makedirs(args.work_dir, exist_ok=True)
  float_loaded = loading.load_model(args.float_model)
  qat_loaded = loading.load_model(args.qat_model)
  val = float_loaded.params.task.validation_data
  rows = {}
  rows['float checkpoint (TF)'] = _score(detector_lib.from_loaded(float_loaded), val,
                                         args.max_images)
  for count in (tflite_convert.DEFAULT_REPRESENTATIVE_IMAGES, args.few_images):
    path = _int8(float_loaded, os.path.join(args.work_dir, f'ptq_{count}.tflite'),
                 tflite_convert.representative_images(float_loaded.task,
                                                      float_loaded.params, count))
    rows[f'PTQ int8, {count} calibration images'] = _score(
        tflite.TFLiteDetector(path), val, args.max_images)
  rows['QAT checkpoint (TF, fake quant)'] = _score(detector_lib.from_loaded(qat_loaded),
                                                   val, args.max_images)
  path = _int8(qat_loaded, os.path.join(args.work_dir, 'qat.tflite'), None)
  rows['QAT int8'] = _score(tflite.TFLiteDetector(path), val, args.max_images)
  print(f'\nval split {val.annotation_file}; CPU {_cpu_model()}')
  print('| model | ' + ' | '.join(STATS) + ' |')
  print('|---|' + '---|' * len(STATS))
  for name, stats in rows.items():
    print(f'| {name} | ' + ' | '.join(f'{stats[s]:.3f}' for s in STATS) + ' |')


if __name__ == '__main__':
  main()
