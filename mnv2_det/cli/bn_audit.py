"""tools/bn_audit.py: audit a checkpoint's BatchNorm moving statistics against data,
and optionally write a recalibrated copy (analysis/bn_audit.py says how).

    python tools/bn_audit.py --checkpoint runs/shapes [--experiment ssdlite_mnv2_shapes] \
        [--data train|validation] [--num_batches 20] [--report bn.json] \
        [--recalibrate --output_dir runs/shapes_recal]
"""

import dataclasses
import json
from typing import Any, Dict, Optional, Sequence

from mnv2_det.analysis import bn_audit
from mnv2_det.analysis.bn_audit import (DEFAULT_NUM_BATCHES, STALE_ABS_LOG_VAR_RATIO,
                                        STALE_MEAN_SHIFT)
from mnv2_det.cli import flags
from mnv2_det.core import checkpoints
from mnv2_det.core import loading
from mnv2_det.core import params as params_lib


def run(args) -> Dict[str, Any]:
  """The CLI: audit, optionally recalibrate + audit again + write; returns the report."""
  if args.num_batches < 1:
    raise ValueError(f'--num_batches must be >= 1, got {args.num_batches}')
  if args.recalibrate and not args.output_dir:
    raise ValueError('--recalibrate needs --output_dir (the input is never overwritten)')
  prefix, params_file = checkpoints.resolve_checkpoint(args.checkpoint, args.best)
  if args.recalibrate:
    bn_audit.check_output_dir(args.output_dir, prefix)  # before the slow part
  params = params_lib.build_params(args.experiment, params_file, args.config_file,
                                 args.params_override)
  task, model = loading.load_task_and_model(params, prefix)

  def dataset():
    # A new pipeline per pass: a seeded training pipeline reshuffles on every
    # iteration of one dataset, so only a fresh one gives each pass the same first N
    # batches, the ones tools/export.py --recalibrate_bn N uses.
    return bn_audit.audit_dataset(task, params, args.data)

  rows = bn_audit.audit(model, dataset(), args.num_batches, eager=args.eager)
  print(bn_audit.format_table(rows))
  report = {'checkpoint': prefix, 'data': args.data, 'num_batches': args.num_batches,
            'thresholds': {'mean_shift': STALE_MEAN_SHIFT,
                           'abs_log_var_ratio': STALE_ABS_LOG_VAR_RATIO},
            'layers': [dataclasses.asdict(r) for r in rows],
            'num_flagged': len(bn_audit.flagged(rows))}
  if args.recalibrate:
    bn_audit.recalibrate(model, dataset(), args.num_batches, eager=args.eager)
    after = bn_audit.audit(model, dataset(), args.num_batches, eager=args.eager)
    report['recalibrated_checkpoint'] = bn_audit.write_checkpoint(model, prefix, args.output_dir,
                                                         params_file)
    report['after_recalibration'] = [dataclasses.asdict(r) for r in after]
    report['num_flagged_after'] = len(bn_audit.flagged(after))
    print('\nafter recalibration:\n' + bn_audit.format_table(after))
    print(f'wrote {report["recalibrated_checkpoint"]}')
  if args.report:
    with open(args.report, 'w', encoding='utf-8') as f:
      json.dump(report, f, indent=2)
  return report


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = flags.argument_parser(__doc__)
  parser.add_argument('--data', default='train', choices=('train', 'validation'),
                      help='train: training pipeline without augmentation')
  parser.add_argument('--num_batches', type=int, default=DEFAULT_NUM_BATCHES)
  parser.add_argument('--report', help='write the JSON report here')
  parser.add_argument('--recalibrate', action='store_true',
                      help='re-estimate moving statistics and write a new checkpoint')
  parser.add_argument('--output_dir', help='folder for the recalibrated checkpoint')
  parser.add_argument('--eager', action='store_true',
                      help='run eagerly instead of tracing (faster for 1-3 batches)')
  args = parser.parse_args(argv)
  return flags.run_cli(lambda: run(args))
