"""One detector interface over every format a model is kept in.

    detector = load_detector('runs/shapes')            # model dir / checkpoint prefix
    detector = load_detector('exported/saved_model')   # SavedModel folder
    detector = load_detector('exported/model.tflite')  # TFLite flatbuffer
    out = detector.detect(image)    # uint8 [h, w, 3] RGB, any size (or [B, h, w, 3],
                                    # or a list of images of different sizes)
    out['detection_boxes']    [B, K, 4] float32 ORIGINAL-image pixels
                              [ymin, xmin, ymax, xmax]
    out['detection_scores']   [B, K] float32, descending
    out['detection_classes']  [B, K] int32 DATASET category ids (-1: padding row)
    out['num_detections']     [B] int32
    detector.names            {dataset id: class name}

The format is found from what is on disk (`model_format`), once for every tool:
  * a folder with `saved_model.pb`: a SavedModel of `tools/export.py saved_model`
    (class names from its `detector.json`);
  * a file with the TFLite identifier: a .tflite of `tools/export.py tflite` (class
    names from its metadata), run by `TFLiteDetector` (host-side resize);
  * a checkpoint prefix (`run/ckpt-500`, or its `.index` file) or a model_dir (latest
    checkpoint, `best_ckpt/` with `best`): params from its params.yaml (+ `experiment`,
    `config_files`, `params_override`), run through the SavedModel's own serving
    function (`saved_model.SSDLiteServingModule`), so both give the same detections.
Every backend resizes with `serving_inputs.prepare_image`, as the eval pipeline does.
"""

import dataclasses
import json
import os
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np
import tensorflow as tf

from mnv2_det.core import checkpoints
from mnv2_det.core import loading
from mnv2_det.core.errors import first_line
from mnv2_det.export import saved_model
from mnv2_det.export import tflite
from mnv2_det.ops import postprocess

FORMAT_CHECKPOINT = 'checkpoint'
FORMAT_SAVED_MODEL = 'saved_model'
FORMAT_TFLITE = 'tflite'
SAVED_MODEL_FILES = ('saved_model.pb', 'saved_model.pbtxt')
CHECKPOINT_STATE_FILE = 'checkpoint'  # A model_dir's "latest checkpoint" index.
CHECKPOINT_INDEX_SUFFIX = '.index'
TFLITE_HEADER_BYTES = 8
DETECTION_KEYS = postprocess.DETECTION_KEYS


@dataclasses.dataclass
class Detector:
  """A loaded detector (module docstring).

  Attributes:
    detect_image: one uint8 `[h, w, 3]` RGB -> numpy dict of DETECTION_KEYS, batch 1.
    names: `{dataset id: class name}`.
    format: FORMAT_CHECKPOINT, FORMAT_SAVED_MODEL or FORMAT_TFLITE.
    description: what was loaded, for logs.
    loaded: the restored `loading.LoadedModel` (checkpoints only, else None).
  """
  detect_image: Callable[[np.ndarray], Dict[str, np.ndarray]]
  names: Dict[int, str]
  format: str
  description: str
  loaded: Optional[loading.LoadedModel] = None

  def detect(self, images) -> Dict[str, np.ndarray]:
    """uint8 `[h, w, 3]`, `[B, h, w, 3]` or a list of `[h_i, w_i, 3]` -> DETECTION_KEYS
    arrays with batch B (1 for a single image)."""
    if isinstance(images, (list, tuple)):
      batch = [np.asarray(i) for i in images]
    else:
      array = np.asarray(images)
      batch = [array] if array.ndim == 3 else list(array)
    if not batch:
      raise ValueError('detect() got no image')
    for image in batch:
      if image.ndim != 3 or image.shape[-1] != 3 or min(image.shape[:2]) < 1:
        raise ValueError(f'expected RGB images [h, w, 3], got shape {image.shape}')
    results = [self.detect_image(image) for image in batch]
    return {k: np.concatenate([r[k] for r in results]) for k in DETECTION_KEYS}

  __call__ = detect


def model_format(path: str) -> Tuple[str, str]:
  """(FORMAT_*, path to load) of `path`; ValueError naming it if unrecognized."""
  if os.path.isdir(path):
    if any(os.path.isfile(os.path.join(path, f)) for f in SAVED_MODEL_FILES):
      return FORMAT_SAVED_MODEL, path
    if (os.path.isfile(os.path.join(path, CHECKPOINT_STATE_FILE)) or
        os.path.isdir(os.path.join(path, checkpoints.BEST_CKPT_SUBDIR))):
      return FORMAT_CHECKPOINT, path
    raise ValueError(f'--model {path}: unknown model format (a folder with neither '
                     f'{SAVED_MODEL_FILES[0]} nor a "{CHECKPOINT_STATE_FILE}" file)')
  if os.path.isfile(path + CHECKPOINT_INDEX_SUFFIX):
    return FORMAT_CHECKPOINT, path
  if path.endswith(CHECKPOINT_INDEX_SUFFIX) and os.path.isfile(path):
    return FORMAT_CHECKPOINT, path[:-len(CHECKPOINT_INDEX_SUFFIX)]
  if not os.path.isfile(path):
    raise ValueError(f'--model {path} does not exist')
  with open(path, 'rb') as f:
    header = f.read(TFLITE_HEADER_BYTES)
  if header[4:TFLITE_HEADER_BYTES] == tflite.TFLITE_FILE_IDENTIFIER:
    return FORMAT_TFLITE, path
  raise ValueError(f'--model {path}: unknown model format (not a SavedModel folder, '
                   f'a .tflite flatbuffer, a checkpoint prefix or a model_dir)')


def _names(dataset_ids, class_names=None) -> Dict[int, str]:
  ids = [int(i) for i in dataset_ids]
  names = list(class_names) if class_names else [str(i) for i in ids]
  return dict(zip(ids, names))


def _serving_fn(signature) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
  def detect(image):
    outputs = signature(images=tf.constant(image[np.newaxis], tf.uint8))
    return {k: np.asarray(outputs[k]) for k in DETECTION_KEYS}
  return detect


def from_loaded(loaded: loading.LoadedModel) -> Detector:
  """The Detector of an already restored model (its serving function)."""
  module = saved_model.SSDLiteServingModule(loaded.params, loaded.model,
                                            loaded.category_map)
  signature = module.get_inference_signatures(
      {saved_model.IMAGE_TENSOR_KEY: saved_model.DEFAULT_SIGNATURE})
  return Detector(_serving_fn(signature[saved_model.DEFAULT_SIGNATURE]),
                  loaded.category_map.label_map(), FORMAT_CHECKPOINT,
                  f'checkpoint {loaded.checkpoint}', loaded)


def _load_saved_model(path: str) -> Detector:
  try:
    model = tf.saved_model.load(path)
  except Exception as e:  # pylint: disable=broad-except  # Damaged files: many types.
    raise ValueError(f'--model {path}: the SavedModel cannot be loaded: '
                     f'{first_line(e)}') from e
  signature = model.signatures.get(saved_model.DEFAULT_SIGNATURE)
  outputs = set(signature.structured_outputs) if signature is not None else set()
  if not outputs >= set(DETECTION_KEYS):
    raise ValueError(f'--model {path}: not an mnv2_det SavedModel (no '
                     f'{saved_model.DEFAULT_SIGNATURE!r} signature with outputs '
                     f'{list(DETECTION_KEYS)})')
  info_file = os.path.join(path, saved_model.DETECTOR_INFO_FILE)
  if not os.path.isfile(info_file):
    raise ValueError(f'--model {path}: no {saved_model.DETECTOR_INFO_FILE} (class ids and '
                     'names); export it with tools/export.py saved_model')
  with open(info_file, 'r', encoding='utf-8') as f:
    info = json.load(f)
  detect = _serving_fn(signature)
  detect.model = model  # Keeps the loaded variables alive with the function.
  return Detector(detect, _names(info['dataset_ids'], info.get('class_names')),
                  FORMAT_SAVED_MODEL, f'SavedModel {path}')


def _load_tflite(path: str, num_threads: int) -> Detector:
  runner = tflite.TFLiteDetector(path, num_threads=num_threads)
  return Detector(runner, _names(runner.info['dataset_ids'], runner.info.get('class_names')),
                  FORMAT_TFLITE, f'TFLite {path} ({runner.num_threads} thread(s))')


def load_detector(path: str, experiment: Optional[str] = None,
                  config_files: Sequence[str] = (), params_override: str = '',
                  best: bool = False, num_threads: int = tflite.DEFAULT_NUM_THREADS
                  ) -> Detector:
  """The Detector `path` holds (module docstring). `experiment`, `config_files`,
  `params_override` and `best` apply to checkpoints only; `num_threads` to .tflite.

  Raises:
    ValueError: one line naming `path` (unknown format, damaged files, a checkpoint
      without params.yaml and without `experiment`, ...).
  """
  fmt, target = model_format(path)
  if fmt == FORMAT_CHECKPOINT:
    return from_loaded(loading.load_model(target, experiment, config_files,
                                          params_override, best))
  if fmt == FORMAT_SAVED_MODEL:
    return _load_saved_model(target)
  return _load_tflite(target, num_threads)
