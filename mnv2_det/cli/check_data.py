"""tools/check_data.py: check a COCO JSON + image folder before training.

    python tools/check_data.py --annotation_file A --image_dir D [--experiment E] \
        [--config_file x.yaml] [--params_override k=v,...] [--check_images verify] \
        [--input_sizes 320,480,640x480] [--min_scales 0.1,0.2] \
        [--output DIR [--overwrite]]

Prints what the training reader repairs (clipped boxes, filled area / iscrowd), drops
(degenerate boxes) and skips (unreadable images), with file names; the class, size
and aspect-ratio statistics; and the anchor coverage of the experiment's model
(analysis/anchor_coverage.py) with a table of alternative input sizes and anchor
min_scales. Without --experiment the geometry is ssdlite_mnv2_coco's and num_classes
is not checked. With --output DIR it writes DIR/report.json and the PNG plots of
analysis/data_plots.py, all or nothing. A file that training would refuse is one
`error: ...` line and exit code 2.
"""

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

from mnv2_det.analysis import data_check
from mnv2_det.analysis import data_plots
from mnv2_det.cli import flags
from mnv2_det.core import params as params_lib
from mnv2_det.data import image_check
from mnv2_det.export import atomic

REPORT_FILE = 'report.json'


def parse_sizes(text: str) -> Optional[List[Tuple[int, int]]]:
  """'320,640x480' -> [(320, 320), (480, 640)] (HxW is height x width); '' -> None."""
  if not text:
    return None
  sizes = []
  for item in text.split(','):
    parts = item.strip().lower().split('x')
    try:
      values = [int(p) for p in parts]
    except ValueError:
      values = []
    if len(values) not in (1, 2) or min(values) < 1:
      raise ValueError(f'--input_sizes: {item!r} is not N or HxW with positive integers')
    sizes.append((values[0], values[-1]))
  return sizes


def parse_scales(text: str) -> Optional[List[float]]:
  """'0.1,0.2' -> [0.1, 0.2]; '' -> None."""
  if not text:
    return None
  try:
    scales = [float(v) for v in text.split(',')]
  except ValueError:
    raise ValueError(f'--min_scales: {text!r} is not a comma-separated list of '
                     'numbers') from None
  if any(not 0 < s < 1 for s in scales):
    raise ValueError(f'--min_scales: every value must be in (0, 1), got {scales}')
  return scales


def run(args) -> Dict[str, Any]:
  """The CLI; returns the report."""
  sizes, scales = parse_sizes(args.input_sizes), parse_scales(args.min_scales)
  if args.output:
    atomic.check_output(args.output, args.overwrite)  # before the slow part
  params = params_lib.build_params(args.experiment or params_lib.BASE_EXPERIMENT, None,
                                   args.config_file, args.params_override)
  report, _ = data_check.check_dataset(
      args.annotation_file, args.image_dir, params, check_images=args.check_images,
      check_experiment=bool(args.experiment), input_sizes=sizes, min_scales=scales)
  report['experiment'] = args.experiment or f'{params_lib.BASE_EXPERIMENT} (geometry only)'
  print(data_check.format_summary(report))
  if args.output:
    with atomic.atomic_output(args.output, is_dir=True, overwrite=args.overwrite) as tmp:
      report['plots'] = [os.path.basename(p) for p in data_plots.write_plots(report, tmp)]
      with open(os.path.join(tmp, REPORT_FILE), 'w', encoding='utf-8') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {os.path.join(args.output, REPORT_FILE)} and '
          f'{", ".join(report["plots"])}')
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--annotation_file', required=True, help='COCO instances JSON')
  parser.add_argument('--image_dir', required=True,
                      help='folder the JSON file_names are relative to')
  parser.add_argument('--experiment', help='registered experiment whose model and data '
                      'settings to check against (default: ssdlite_mnv2_coco geometry)')
  parser.add_argument('--config_file', action='append', default=[],
                      help='YAML override (repeatable)')
  parser.add_argument('--params_override', default='', help='k=v,... applied last')
  parser.add_argument('--check_images', default=image_check.DEFAULT_CHECK_LEVEL,
                      choices=image_check.CHECK_LEVELS,
                      help='image check level (training uses the default; decode also '
                      'finds corrupt pixel data)')
  parser.add_argument('--input_sizes', default='',
                      help='alternatives table: N or HxW, comma-separated (default: '
                      'the input size x1, x1.5, x2)')
  parser.add_argument('--min_scales', default='',
                      help='alternatives table: anchor min_scales (default: min_scale '
                      'x0.5, x0.75, x1, x1.5)')
  parser.add_argument('--output', help='folder for report.json and the PNG plots')
  parser.add_argument('--overwrite', action='store_true', help='replace --output')
  args = parser.parse_args(argv)
  return flags.run_cli(lambda: run(args))
