"""Image files named on a command line: folders, globs, paths -> decoded RGB arrays."""

import glob
import os
import re
from typing import List, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mnv2_det.data import preprocess

# Folder members taken as images (tf.io.decode_image formats).
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.gif', '.bmp', '.webp')
GLOB_CHARACTERS = frozenset('*?[')
# TF op errors start with '{{function_node ...}}' and end with ' [Op:Name] ...'.
_OP_ERROR_NOISE = re.compile(r'\{\{[^}]*\}\}\s*|\s*\[Op:.*$', re.DOTALL)


def expand_inputs(inputs: Sequence[str], extensions: Sequence[str] = IMAGE_EXTENSIONS
                  ) -> Tuple[List[str], List[Tuple[str, str]]]:
  """Paths of INPUTS (module docstring; a folder gives its files with a suffix in
  `extensions`) and `(input, reason)` of those giving none."""
  extensions = tuple(extensions)
  paths, problems, seen = [], [], set()
  for item in inputs:
    if os.path.isdir(item):
      found = sorted(os.path.join(item, name) for name in os.listdir(item)
                     if name.lower().endswith(extensions) and
                     os.path.isfile(os.path.join(item, name)))
      why = f'folder has no {"/".join(extensions)} files'
    elif os.path.lexists(item):
      found, why = [item], ''
    elif GLOB_CHARACTERS & set(item):
      found = sorted(p for p in glob.glob(item, recursive=True) if os.path.isfile(p))
      why = 'pattern matches no file'
    else:
      found, why = [], 'file not found'
    if not found:
      problems.append((item, why))
    for path in found:
      key = os.path.realpath(path)
      if key not in seen:
        seen.add(key)
        paths.append(path)
  return paths, problems


def read_image(path: str) -> np.ndarray:
  """uint8 `[h, w, 3]` RGB of an image file; ValueError with a short reason."""
  try:
    with open(path, 'rb') as f:
      contents = f.read()
  except OSError as e:
    raise ValueError(e.strerror or str(e)) from e
  if not contents:
    raise ValueError('file is empty (0 bytes)')
  try:
    return preprocess.decode_image_rgb(tf.constant(contents)).numpy()
  except tf.errors.OpError as e:
    reason = _OP_ERROR_NOISE.sub('', e.message).strip() or type(e).__name__
    raise ValueError(f'not a readable image ({reason})') from e
