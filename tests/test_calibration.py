"""int8 calibration from any image folder: `tools/export.py tflite --quant int8
--calibration_images DIR` (issue #12)."""

import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from mnv2_det.data import shapes
from mnv2_det.export import calibration
from mnv2_det.cli import export as cli
from mnv2_det.export import tflite
from mnv2_det.core import errors
from detector_weights import spread_detector, tiny_overrides

EXPERIMENT = 'ssdlite_mnv2_shapes'
INPUT = 96


def _write_image(path, hw, seed, mode='RGB'):
  rng = np.random.default_rng(seed)
  pixels = rng.integers(0, 256, list(hw) + [3]).astype(np.uint8)
  Image.fromarray(pixels).convert(mode).save(path)


@pytest.fixture
def folder(tmp_path):
  """3 readable images (JPEG, grayscale PNG in a subfolder, an odd size), a corrupt
  JPEG, an empty PNG and a text file."""
  root = tmp_path / 'calib'
  (root / 'sub').mkdir(parents=True)
  _write_image(root / 'a.jpg', (60, 80), 0)
  _write_image(root / 'sub' / 'b.PNG', (120, 50), 1, mode='L')
  _write_image(root / 'c.png', (33, 200), 2)
  (root / 'corrupt.jpg').write_bytes(b'\xff\xd8\xff\xe0 not really a jpeg')
  (root / 'empty.png').write_bytes(b'')
  (root / 'notes.txt').write_text('not an image')
  return str(root)


def test_folder_images_skip_unreadable_files_with_a_warning(folder, caplog):
  images = calibration.folder_images(folder, [INPUT, INPUT + 32], 'keep_aspect', 10)
  assert len(images) == 3
  for image in images:
    assert image.shape == (1, INPUT, INPUT + 32, 3) and image.dtype == np.float32
    assert 0.0 <= image.min() and image.max() <= 255.0
  warned = caplog.text
  assert 'corrupt.jpg' in warned and 'empty.png' in warned and 'notes.txt' not in warned
  # Fewer asked: that many, the same for the same seed.
  two = calibration.folder_images(folder, [INPUT, INPUT], 'fixed', 2)
  again = calibration.folder_images(folder, [INPUT, INPUT], 'fixed', 2)
  assert len(two) == 2
  for x, y in zip(two, again):
    np.testing.assert_array_equal(x, y)


def test_no_readable_image_is_one_error_naming_the_folder(tmp_path):
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'x.jpg').write_bytes(b'garbage')
  (bad / 'y.png').write_bytes(b'')
  with pytest.raises(ValueError, match=f'{bad} holds no readable image'):
    calibration.folder_images(str(bad), [INPUT, INPUT], 'fixed', 5)
  empty = tmp_path / 'empty'
  empty.mkdir()
  (empty / 'readme.txt').write_text('x')
  with pytest.raises(ValueError, match=f'{empty} holds no image files'):
    calibration.folder_images(str(empty), [INPUT, INPUT], 'fixed', 5)
  with pytest.raises(ValueError, match='does not exist'):
    calibration.folder_images(str(tmp_path / 'missing'), [INPUT, INPUT], 'fixed', 5)


def test_export_int8_calibrated_on_a_folder(folder, tmp_path, capsys):
  data_dir = str(tmp_path / 'shapes')
  shapes.generate(data_dir, num_train=2, num_val=1, seed=4)
  override = tiny_overrides(data_dir, INPUT)
  _, _, model = spread_detector(override)
  prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / 'ckpt-1'))
  common = ['tflite', '--experiment', EXPERIMENT, '--checkpoint', prefix,
            '--params_override', override, '--quant', 'int8']
  output = str(tmp_path / 'int8.tflite')
  assert cli.main(common + ['--calibration_images', folder, '--output', output]) == 0
  assert f'calibrating on 3 images of {folder}' in capsys.readouterr().out
  detector = tflite.TFLiteDetector(output)
  assert detector.input_dtype == np.uint8
  assert detector.info['calibration'] == {'source': 'folder', 'num_images': 3}
  out = detector(np.asarray(Image.open(os.path.join(folder, 'a.jpg'))))
  assert out['num_detections'][0] > 0
  # A folder without a readable image: one error line naming it, nothing written.
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'x.jpg').write_bytes(b'garbage')
  output2 = str(tmp_path / 'bad.tflite')
  assert cli.main(common + ['--calibration_images', str(bad), '--output', output2]) == (
      errors.ERROR_EXIT_CODE)
  err = capsys.readouterr().err
  assert f'error: calibration image folder {bad} holds no readable image' in err
  assert not os.path.exists(output2)
  # Only for int8.
  assert cli.main(['tflite', '--experiment', EXPERIMENT, '--checkpoint', prefix,
                   '--calibration_images', folder, '--output', output2]) == (
      errors.ERROR_EXIT_CODE)
  assert '--calibration_images applies to --quant int8' in capsys.readouterr().err
