"""The Python of a separate virtual environment holding MediaPipe (a real TFLite client).

MediaPipe 1.2.3 pins absl-py ~= 2.3, which conflicts with the main environment
(tf-models-official -> tensorflow-model-optimization), so it lives in its own venv and
tests drive it by subprocess (`mediapipe_client.py`).

    python tests/mediapipe_env.py     # creates the venv if needed, prints its python

`.ci/run` does that and exports ENV_VAR; without ENV_VAR, `mediapipe_python()` creates
(or reuses) DEFAULT_VENV itself, so `python -m pytest -q tests` works on its own.
"""

import fcntl
import os
import subprocess
import sys
import tempfile

ENV_VAR = 'MNV2_DET_MEDIAPIPE_PYTHON'
MEDIAPIPE_VERSION = '1.2.3'
DEFAULT_VENV = os.path.join(tempfile.gettempdir(), 'mnv2_det_mediapipe_venv')
_CHECK = ('import importlib.metadata as m, mediapipe.tasks.python.vision; '
          'print(m.version("mediapipe"))')


def _version(python: str):
  """MediaPipe's version importable by `python`, or None."""
  if not os.path.isfile(python):
    return None
  result = subprocess.run([python, '-c', _CHECK], capture_output=True, text=True,
                          check=False)
  return result.stdout.strip() if result.returncode == 0 else None


def _create(venv: str) -> str:
  python = os.path.join(venv, 'bin', 'python')
  os.makedirs(os.path.dirname(venv) or '.', exist_ok=True)
  with open(venv + '.lock', 'w') as lock:  # one creator at a time
    fcntl.flock(lock, fcntl.LOCK_EX)
    if _version(python) == MEDIAPIPE_VERSION:
      return python
    log = ''
    for command in ([sys.executable, '-m', 'venv', '--clear', venv],
                    [python, '-m', 'pip', 'install', '--quiet',
                     '--disable-pip-version-check', f'mediapipe=={MEDIAPIPE_VERSION}']):
      result = subprocess.run(command, capture_output=True, text=True, check=False)
      log += result.stdout + result.stderr
      if result.returncode:
        break
    found = _version(python)
  if found != MEDIAPIPE_VERSION:
    raise RuntimeError(f'{venv}: mediapipe=={MEDIAPIPE_VERSION} did not install '
                       f'(import gives {found}): {log[-2000:]}')
  return python


def mediapipe_python() -> str:
  """ENV_VAR's interpreter (which must import MediaPipe), or DEFAULT_VENV's, created
  on first use.

  Raises:
    RuntimeError: ENV_VAR names a Python without MediaPipe, or the install failed.
  """
  python = os.environ.get(ENV_VAR)
  if python:
    if _version(python) is None:
      raise RuntimeError(f'{ENV_VAR}={python} cannot import mediapipe')
    return python
  return _create(DEFAULT_VENV)


if __name__ == '__main__':
  print(mediapipe_python())
