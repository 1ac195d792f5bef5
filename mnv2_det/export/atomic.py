"""Write an output file or folder all-or-nothing: temp path next to it, rename at the end.

A failed or interrupted export leaves nothing behind at the requested path (nor the
temp path, nor parent folders it had to create).
"""

import contextlib
import os
import shutil
import tempfile
from typing import Iterator

TEMP_MARKER = '.tmp-'


def check_output(path: str, overwrite: bool) -> None:
  """Raises ValueError if `path` exists and `overwrite` is false."""
  if not path:
    raise ValueError('an output path is required')
  if os.path.lexists(path) and not overwrite:
    raise ValueError(f'output {path} already exists (pass --overwrite to replace it)')


_DEFAULT_DIR_MODE = 0o777


def _current_umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


def _make_parents(folder: str) -> list:
  """Creates missing folders up to `folder`; returns those created, deepest first."""
  created = []
  current = os.path.abspath(folder)
  while current and not os.path.isdir(current):
    created.append(current)
    current = os.path.dirname(current)
  for path in reversed(created):
    os.mkdir(path)
  return created


def _remove(path: str) -> None:
  if os.path.isdir(path) and not os.path.islink(path):
    shutil.rmtree(path, ignore_errors=True)
  elif os.path.lexists(path):
    os.remove(path)


@contextlib.contextmanager
def atomic_output(path: str, is_dir: bool, overwrite: bool = False) -> Iterator[str]:
  """Yields a temp path in `path`'s folder; renames it to `path` if the body succeeds.

  Args:
    path: final file or folder.
    is_dir: the temp path is an (empty, existing) folder if true, else a file path
      that does not exist yet.
    overwrite: replace an existing `path` (only once the new output is complete).

  Raises:
    ValueError: `path` exists and `overwrite` is false.
  """
  check_output(path, overwrite)
  path = os.path.abspath(path)
  parent = os.path.dirname(path)
  created = _make_parents(parent)
  prefix = f'.{os.path.basename(path)}{TEMP_MARKER}'
  if is_dir:
    temp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    os.chmod(temp, _DEFAULT_DIR_MODE & ~_current_umask())  # mkdtemp makes it 0o700.
  else:
    handle, temp = tempfile.mkstemp(prefix=prefix, dir=parent)
    os.close(handle)
    os.remove(temp)
  try:
    yield temp
    if not os.path.lexists(temp):
      raise ValueError(f'export wrote nothing to the temporary path {temp}')
    if os.path.lexists(path):
      _remove(path)
    os.replace(temp, path)
  except BaseException:
    _remove(temp)
    for folder in created:  # Deepest first.
      with contextlib.suppress(OSError):
        os.rmdir(folder)  # Only if still empty.
    raise
