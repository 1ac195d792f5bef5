"""SSDLite detector: size against the paper, feature-map shapes, configs, round trips."""

import numpy as np
import pytest
import tensorflow as tf

import mnv2_det  # registers everything
from mnv2_det.configs import ssdlite as ssdlite_cfg
from mnv2_det.modeling import factory
from mnv2_det.modeling.feature_maps import SSDFeatureMaps
from mnv2_det.modeling.head import SSDLiteHead
from mnv2_det.analysis import model_stats


@pytest.fixture(scope='module')
def paper_model():
  return factory.build_ssdlite_model(ssdlite_cfg.SSDLite(num_classes=81))


def test_size_matches_paper_table_6(paper_model):
  stats = model_stats.detector_stats(paper_model, [320, 320])
  # Paper Table 6: 4.3M params, 0.8B MAdds; Table 5: SSDLite part 2.1M.
  assert stats['params'] == 4_387_765
  assert 4.30e6 <= stats['params'] <= 4.45e6
  assert stats['backbone_params'] == 2_257_984
  assert 2.0e6 <= stats['ssdlite_params'] <= 2.2e6
  assert abs(stats['madds'] - 0.8e9) <= 0.08e9
  assert stats['madds'] == 788_830_144


def test_91_class_size():
  model = factory.build_ssdlite_model(ssdlite_cfg.SSDLite(num_classes=91))
  assert model.count_params() == 4_551_295


def test_anchor_and_output_layout_at_320(paper_model):
  assert paper_model.anchor_boxes.shape == (2034, 4)
  out = paper_model(tf.zeros([1, 320, 320, 3]), training=True)
  sizes = {'4': 20, '5': 10, '6': 5, '7': 3, '8': 2, '9': 1}
  anchors = {'4': 3, '5': 6, '6': 6, '7': 6, '8': 6, '9': 6}
  total = 0
  for level, size in sizes.items():
    assert out['cls_outputs'][level].shape.as_list() == [1, size, size, anchors[level] * 81]
    assert out['box_outputs'][level].shape.as_list() == [1, size, size, anchors[level] * 4]
    total += size * size * anchors[level]
  assert total == 2034


def test_non_square_padded_input_works():
  config = ssdlite_cfg.SSDLite(num_classes=4, input_size=[333, 517, 3])
  config.backbone.mnv2_det.depth_multiplier = 0.35
  model = factory.build_ssdlite_model(config)
  out = model(tf.random.uniform([2, 333, 517, 3], -1, 1), training=False)
  # Padded to 352x544 -> 22x34, 11x17, 6x9, 3x5, 2x3, 1x2 cells.
  shapes = [out['box_outputs'][str(l)].shape.as_list()[1:3] for l in range(4, 10)]
  assert shapes == [[22, 34], [11, 17], [6, 9], [3, 5], [2, 3], [1, 2]]
  cells = [h * w for h, w in shapes]
  assert model.anchor_boxes.shape[0] == 3 * cells[0] + 6 * sum(cells[1:])
  assert out['detection_boxes'].shape.as_list() == [2, 100, 4]
  # Without image_info, boxes are in the 333x517 input frame.
  boxes = out['detection_boxes'].numpy()
  assert boxes[..., 2].max() <= 333 + 1e-3 and boxes[..., 3].max() <= 517 + 1e-3


def test_feature_maps_follow_depth_multiplier_with_min_depth():
  layer = SSDFeatureMaps(depth_multiplier=0.05)  # 512*0.05=25, 128*0.05=6 -> 16
  endpoints = {'layer_15/expansion_output': tf.zeros([1, 4, 4, 8]),
               'layer_19': tf.zeros([1, 2, 2, 8])}
  out = layer(endpoints)
  assert [out[str(l)].shape[-1] for l in range(6, 10)] == [25, 16, 16, 16]


def test_feature_maps_missing_endpoint_is_named():
  with pytest.raises(ValueError, match='layer_19'):
    SSDFeatureMaps()({'layer_15/expansion_output': tf.zeros([1, 4, 4, 8])})


def test_layer_config_round_trips():
  fm = SSDFeatureMaps(layer_depths=[64, 32], depth_multiplier=0.5, use_depthwise=False)
  assert SSDFeatureMaps.from_config(fm.get_config()).get_config() == fm.get_config()
  head = SSDLiteHead(levels=['4', '5'], num_anchors_per_location=[3, 6], num_classes=7,
                     init_stddev=0.02, weight_decay=1e-5, class_prior_prob=0.05)
  config = head.get_config()
  assert SSDLiteHead.from_config(config).get_config() == config
  assert config['init_stddev'] == 0.02 and config['class_prior_prob'] == 0.05


def test_head_class_bias_prior_and_regularization():
  head = SSDLiteHead(levels=['4'], num_anchors_per_location=[3], num_classes=5)
  head({'4': tf.zeros([1, 2, 2, 8])})
  predictor = [l for l in head._branches['4'][0] if 'predictor' in l.name][0]
  np.testing.assert_allclose(predictor.bias.numpy(), -np.log(99.0), rtol=1e-6)
  # L2 on the two 1x1 predictors, not on the depthwise convs.
  assert len(head.losses) == 2


@pytest.mark.parametrize('kwargs,message', [
    (dict(levels=['4'], num_anchors_per_location=[3, 6], num_classes=5), 'differ in length'),
    (dict(levels=['4'], num_anchors_per_location=[3], num_classes=1), 'got 1'),
    (dict(levels=['4'], num_anchors_per_location=[3], num_classes=5, class_prior_prob=1.0),
     'got 1.0'),
])
def test_head_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    SSDLiteHead(**kwargs)


def test_factory_equals_direct_build():
  config = ssdlite_cfg.SSDLite(num_classes=5, input_size=[128, 128, 3])
  model = factory.build_ssdlite_model(config)
  direct = SSDLiteHead(levels=[str(l) for l in range(4, 10)],
                       num_anchors_per_location=[3, 6, 6, 6, 6, 6], num_classes=5,
                       name='ssdlite_head')
  assert model.head.get_config() == direct.get_config()
  assert model.feature_maps.get_config() == SSDFeatureMaps(name='ssd_feature_maps').get_config()


def test_freeze_batchnorm_keeps_statistics():
  config = ssdlite_cfg.SSDLite(num_classes=3, input_size=[64, 64, 3], freeze_batchnorm=True)
  config.backbone.mnv2_det.depth_multiplier = 0.35
  model = factory.build_ssdlite_model(config)
  bn = model.backbone.get_layer('block_13_expand_BN')
  before = bn.moving_variance.numpy().copy()
  model(tf.random.uniform([2, 64, 64, 3], -1, 1), training=True)
  np.testing.assert_array_equal(bn.moving_variance.numpy(), before)
