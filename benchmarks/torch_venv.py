"""Where the benchmarks find the python of the torch venv (accuracy/requirements-torch.txt).

torch never enters mnv2_det or CI; only benchmarks/accuracy's scripts run in that venv.
"""

import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_PYTHON = os.path.join(ROOT, '.venv-torch', 'bin', 'python')
ENV_VAR = 'MNV2_DET_TORCH_PYTHON'
HELP = (f'python of the venv of benchmarks/accuracy/requirements-torch.txt (default '
        f'${ENV_VAR}, else .venv-torch/bin/python of the repository)')


def default_python() -> str:
  """$MNV2_DET_TORCH_PYTHON if set, else the repository's .venv-torch python."""
  return os.environ.get(ENV_VAR, DEFAULT_PYTHON)
