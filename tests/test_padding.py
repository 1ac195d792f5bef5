"""pad_to_multiple and the box mapping between the padded and the original frame."""

import numpy as np
import pytest
import tensorflow as tf

from mnv2_det.ops import padding


@pytest.mark.parametrize('size,multiple,expected', [
    (333, 32, 352), (320, 32, 320), (1, 32, 32), (33, 32, 64), (517, 1, 517)])
def test_padded_size(size, multiple, expected):
  assert padding.padded_size(size, multiple) == expected
  assert int(padding.padded_size(tf.constant(size), multiple)) == expected


def test_pads_bottom_right_with_zeros_and_keeps_static_shape():
  images = tf.ones([2, 33, 47, 3])
  padded = padding.pad_to_multiple(images, 32)
  assert padded.shape.as_list() == [2, 64, 64, 3]
  np.testing.assert_array_equal(padded[:, :33, :47].numpy(), 1.0)
  assert float(tf.reduce_sum(padded[:, 33:])) == 0 and float(tf.reduce_sum(padded[:, :, 47:])) == 0


def test_dynamic_shapes_inside_tf_function():
  fn = tf.function(lambda x: padding.pad_to_multiple(x, 32),
                   input_signature=[tf.TensorSpec([1, None, None, 3])])
  assert fn(tf.zeros([1, 100, 65, 3])).shape.as_list() == [1, 128, 96, 3]
  assert padding.pad_to_multiple(tf.zeros([1, 5, 5, 3]), 1).shape.as_list() == [1, 5, 5, 3]


def test_box_mapping_round_trip_and_golden_value():
  # A box covering the whole 333x517 image is [0, 0, 333/352, 517/544] of the padded one.
  padded_box = tf.constant([[0.0, 0.0, 333 / 352, 517 / 544]])
  original = padding.boxes_padded_to_original(padded_box, [333, 517], [352, 544])
  np.testing.assert_allclose(original.numpy(), [[0, 0, 1, 1]], atol=1e-6)
  boxes = tf.random.uniform([3, 5, 4], seed=1)
  there = padding.boxes_original_to_padded(boxes, [[[333., 517.]]] * 3, [[[352., 544.]]] * 3)
  back = padding.boxes_padded_to_original(there, [[[333., 517.]]] * 3, [[[352., 544.]]] * 3)
  np.testing.assert_allclose(back.numpy(), boxes.numpy(), rtol=1e-6)
