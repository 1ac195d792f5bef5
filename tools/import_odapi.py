"""Import an OD API SSDLite / SSD-MobileNetV2 model as an mnv2_det model dir.

  python tools/import_odapi.py --pipeline_config ssdlite_mobilenet_v2_coco_2018_05_09/pipeline.config \
      --checkpoint ssdlite_mobilenet_v2_coco_2018_05_09/model.ckpt --model_dir runs/odapi_ssdlite \
      [--label_map mscoco_label_map.pbtxt] [--no_ema]

The model dir then works with every tool (`--experiment ssdlite_mnv2_coco --checkpoint
MODEL_DIR`) and as `task.init_checkpoint` for fine-tuning. See docs/odapi.md.
"""

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from mnv2_det.odapi import importer  # pylint: disable=g-import-not-at-top
from mnv2_det.cli import flags


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--pipeline_config', required=True, help='OD API pipeline.config')
  parser.add_argument('--checkpoint', help='TF1 checkpoint prefix, e.g. .../model.ckpt')
  parser.add_argument('--model_dir', help='mnv2_det model dir to create')
  parser.add_argument('--print_config', action='store_true',
                      help='only print the translated experiment as YAML')
  parser.add_argument('--label_map', default=None,
                      help='label_map.pbtxt (default: COCO names for 90 classes)')
  parser.add_argument('--no_ema', action='store_true',
                      help='take the raw weights, not the ExponentialMovingAverage shadows')
  parser.add_argument('--overwrite', action='store_true')
  args = parser.parse_args(argv)

  def run():
    if args.print_config:
      params, _ = importer.read_pipeline(args.pipeline_config)
      print(importer.experiment_yaml(params, args.pipeline_config), end='')
      return
    if not args.checkpoint or not args.model_dir:
      raise ValueError('--checkpoint and --model_dir are required (or --print_config)')
    report = importer.import_model(args.pipeline_config, args.checkpoint, args.model_dir,
                                   label_map=args.label_map,
                                   use_ema=False if args.no_ema else None,
                                   overwrite=args.overwrite)
    print(f'imported {report["num_variables"]} variables (EMA: {report["ema"]}), '
          f'{report["num_anchors"]} anchors at {report["input_size"]} into '
          f'{os.path.abspath(args.model_dir)}')
    if report['fields_not_used']:
      print('pipeline.config fields not used (data paths, eval settings): ' +
            ', '.join(report['fields_not_used']))

  return flags.run_cli(run)


if __name__ == '__main__':
  sys.exit(main())
