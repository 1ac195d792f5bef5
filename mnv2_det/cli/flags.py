"""The flags every checkpoint tool shares, declared once, and the error convention.

    --experiment  --config_file (repeatable)  --params_override  --checkpoint  --best

A ValueError from the libraries becomes one `error: ...` line on stderr and exit code
2 (`run_cli`), never a traceback.
"""

import argparse
import sys
from typing import Any, Callable

from mnv2_det.core import checkpoints
from mnv2_det.core.errors import ERROR_EXIT_CODE


def add_config_flags(parser: argparse.ArgumentParser, experiment_required: bool = False,
                     experiment_help: str = 'registered experiment name (optional when '
                     'the model dir has a params.yaml)') -> None:
  """--experiment, --config_file, --params_override, --best."""
  parser.add_argument('--experiment', required=experiment_required, help=experiment_help)
  parser.add_argument('--config_file', action='append', default=[],
                      help='YAML override (repeatable), applied after params.yaml')
  parser.add_argument('--params_override', default='', help='k=v,... applied last')
  parser.add_argument('--best', action='store_true',
                      help=f'with a model_dir: use {checkpoints.BEST_CKPT_SUBDIR}/ instead '
                      'of the latest')


def argument_parser(description: str,
                    checkpoint_required: bool = True) -> argparse.ArgumentParser:
  """A parser with the shared flags and --checkpoint (optional with
  `checkpoint_required=False`, e.g. tools/eval.py takes --model instead)."""
  parser = argparse.ArgumentParser(
      description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
  add_config_flags(parser)
  parser.add_argument('--checkpoint', required=checkpoint_required,
                      help='checkpoint prefix, or a model_dir (latest ckpt + params.yaml)')
  return parser


def run_cli(fn: Callable[[], Any]) -> int:
  """Runs `fn`; a ValueError becomes one `error: ...` line on stderr, exit code 2."""
  try:
    fn()
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return ERROR_EXIT_CODE
  return 0
