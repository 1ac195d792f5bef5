"""MobileNetV2 backbone: parameter counts, endpoints, presets, BN updates, errors."""

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import mnv2_det  # registers the backbone builder
from mnv2_det.configs import backbones as backbone_cfg
from mnv2_det.modeling import mobilenet_v2_spec as spec_lib
from mnv2_det.modeling.backbone import MobileNetV2Backbone
from official.vision.configs import common
from official.vision.modeling.backbones import factory


@pytest.mark.parametrize('multiplier', [1.0, 0.35, 0.5, 0.75, 1.3, 1.4])
def test_parameter_count_equals_keras_applications(multiplier):
  ours = MobileNetV2Backbone(depth_multiplier=multiplier, endpoints=['layer_19'])
  keras_model = tf_keras.applications.MobileNetV2(
      input_shape=(224, 224, 3), alpha=multiplier, include_top=False, weights=None)
  assert ours.count_params() == keras_model.count_params()
  if multiplier == 1.0:
    # docs/reference.md, "MobileNetV2 parameter counts and MAdds": the features alone have
    # 2,257,984 params.
    assert ours.count_params() == 2_257_984


def test_make_divisible_slim_rules():
  assert spec_lib.make_divisible(32 * 0.35, 8) == 16   # int(11.2 + 4) // 8 * 8 = 8 < 0.9*11.2 -> 16
  assert spec_lib.make_divisible(16 * 0.35, 8) == 8    # never below min_value = divisor
  assert spec_lib.make_divisible(24 * 0.75, 8) == 24   # 16 < 0.9 * 18 -> 16 + 8
  assert spec_lib.make_divisible(64 * 1.3, 8) == 80
  assert spec_lib.make_divisible(4, 8, min_value=16) == 16


def test_final_conv_keeps_1280_below_one():
  for multiplier, expected in [(0.35, 1280), (1.0, 1280), (1.4, 1792)]:
    model = MobileNetV2Backbone(depth_multiplier=multiplier, endpoints=['layer_19'],
                                input_specs=[None, 64, 64, 3])
    assert model.output_specs['layer_19'][-1] == expected


def _expected_320():
  # (channels, stride) of the endpoints the SSD feature maps and MG decoders use.
  return {
      'layer_1': (32, 2), 'layer_2': (16, 2), 'layer_4': (24, 4), 'layer_7': (32, 8),
      'layer_14': (96, 16), 'layer_15/expansion_output': (576, 16),
      'layer_15/depthwise_output': (576, 32), 'layer_15': (160, 32),
      'layer_18': (320, 32), 'layer_19': (1280, 32),
      '2': (24, 4), '3': (32, 8), '4': (96, 16), '5': (320, 32)}


@pytest.fixture(scope='module')
def full_backbone():
  return MobileNetV2Backbone(endpoints=spec_lib.all_endpoint_names())


def test_all_endpoint_names_present(full_backbone):
  names = set(full_backbone.output_specs)
  assert {f'layer_{i}' for i in range(1, 20)} <= names
  # Every block but the first (expansion 1) expands; every block has a depthwise.
  assert {f'layer_{i}/expansion_output' for i in range(3, 19)} <= names
  assert 'layer_2/expansion_output' not in names
  assert {f'layer_{i}/depthwise_output' for i in range(2, 19)} <= names
  assert {'2', '3', '4', '5'} <= names


@pytest.mark.parametrize('height,width', [(320, 320), (333, 517)])
def test_endpoint_shapes_and_strides(full_backbone, height, width):
  out = full_backbone(tf.zeros([1, height, width, 3]), training=False)
  pad_h, pad_w = -(-height // 32) * 32, -(-width // 32) * 32
  for name, (channels, stride) in _expected_320().items():
    assert full_backbone.endpoint_strides[name] == stride, name
    assert out[name].shape.as_list() == [1, pad_h // stride, pad_w // stride, channels], name


def test_odd_size_equals_padded_size(full_backbone):
  rng = np.random.default_rng(0)
  image = rng.uniform(-1, 1, [1, 333, 517, 3]).astype(np.float32)
  padded = np.zeros([1, 352, 544, 3], np.float32)
  padded[:, :333, :517] = image
  a = full_backbone(image, training=False)
  b = full_backbone(padded, training=False)
  for name in ['layer_15/expansion_output', 'layer_19', '2']:
    np.testing.assert_allclose(a[name].numpy(), b[name].numpy(), atol=1e-5)


def test_static_shapes_kept_where_known():
  model = MobileNetV2Backbone(input_specs=[2, 333, 517, 3],
                              endpoints=['layer_15/expansion_output', 'layer_19'])
  assert model.output_specs['layer_19'].as_list() == [2, 11, 17, 1280]
  dynamic = MobileNetV2Backbone(input_specs=[None, None, None, 3], endpoints=['layer_19'])
  assert dynamic.output_specs['layer_19'].as_list() == [None, None, None, 1280]


def test_pad_multiple_one_disables_padding():
  model = MobileNetV2Backbone(pad_to_multiple=1, endpoints=['layer_1'])
  assert model(tf.zeros([1, 33, 47, 3])).get('layer_1').shape.as_list() == [1, 17, 24, 32]


def test_output_stride_16_uses_atrous():
  model = MobileNetV2Backbone(output_stride=16, endpoints=['layer_15', 'layer_19', '5'])
  out = model(tf.zeros([1, 320, 320, 3]))
  assert out['layer_19'].shape.as_list() == [1, 20, 20, 1280]
  assert model.endpoint_strides['layer_19'] == 16
  dilations = {l.name: l.dilation_rate for l in model.layers
               if isinstance(l, tf_keras.layers.DepthwiseConv2D)}
  # layer_15 (block_13) would stride to 32: it keeps rate 1 and stride 1; later blocks
  # use rate 2 (slim's conv_defs semantics).
  assert dilations['block_13_depthwise'] == (1, 1)
  assert dilations['block_14_depthwise'] == (2, 2)
  assert dilations['block_16_depthwise'] == (2, 2)
  # The parameter count does not depend on the stride.
  assert model.count_params() == MobileNetV2Backbone(endpoints=['layer_19']).count_params()


def test_output_stride_8():
  model = MobileNetV2Backbone(output_stride=8, endpoints=['layer_19'])
  assert model(tf.zeros([1, 64, 64, 3]))['layer_19'].shape.as_list() == [1, 8, 8, 1280]


def test_truncated_graph_carries_no_waste():
  small = MobileNetV2Backbone(endpoints=['layer_7'])
  assert not any(l.name.startswith('block_7') for l in small.layers)
  assert small.count_params() < 100_000


def test_get_config_round_trip():
  model = MobileNetV2Backbone(depth_multiplier=0.5, output_stride=16,
                              endpoints=['layer_15/expansion_output', 'layer_19'],
                              weight_decay=1e-4, activity_l2=1e-6)
  config = model.get_config()
  clone = MobileNetV2Backbone.from_config(config)
  assert clone.get_config() == config
  assert clone.count_params() == model.count_params()
  assert clone.output_specs == model.output_specs
  assert tf_keras.utils.get_registered_object('mnv2_det>MobileNetV2Backbone') \
      is MobileNetV2Backbone


def _factory_build(**fields):
  cfg = backbone_cfg.Backbone(type='mnv2_det',
                              mnv2_det=backbone_cfg.MobileNetV2Det(**fields))
  return factory.build_backbone(
      input_specs=tf_keras.layers.InputSpec(shape=[None, None, None, 3]),
      backbone_config=cfg,
      norm_activation_config=common.NormActivation(use_sync_bn=False))


def test_factory_equals_direct_build():
  built = _factory_build(depth_multiplier=0.75, endpoints=['layer_19', '4'])
  direct = MobileNetV2Backbone(depth_multiplier=0.75, endpoints=['layer_19', '4'])
  assert built.get_config() == direct.get_config()
  assert built.count_params() == direct.count_params()


def test_factory_from_yaml_style_dict():
  cfg = backbone_cfg.Backbone()
  cfg.override({'type': 'mnv2_det', 'mnv2_det': {'preset': 'keras', 'output_stride': 16}},
               is_strict=True)
  model = factory.build_backbone(tf_keras.layers.InputSpec(shape=[None, 320, 320, 3]), cfg,
                                 common.NormActivation())
  assert model.get_config()['bn_momentum'] == 0.999
  assert model.get_config()['weight_decay'] == 0.0
  assert not model.losses


def _conv_layers(model):
  convs = [l for l in model.layers if type(l) is tf_keras.layers.Conv2D]
  depthwise = [l for l in model.layers if isinstance(l, tf_keras.layers.DepthwiseConv2D)]
  return convs, depthwise


def test_slim_preset_regularizes_exactly_non_depthwise_convs():
  model = _factory_build(endpoints=['layer_19'])
  convs, depthwise = _conv_layers(model)
  # Conv1 + 16 expand convs + 17 project convs + Conv_1 = 35 regular convs, 17 depthwise.
  assert len(convs) == 35 and len(depthwise) == 17
  assert all(l.kernel_regularizer is not None for l in convs)
  assert all(l.depthwise_regularizer is None for l in depthwise)
  assert len(model.losses) == 35
  # slim's l2_regularizer(4e-5) is 4e-5 * sum(w^2) / 2.
  kernel = convs[0].kernel
  expected = 4e-5 * float(tf.reduce_sum(kernel ** 2)) / 2
  assert convs[0].kernel_regularizer(kernel).numpy() == pytest.approx(expected, rel=1e-5)


def test_regularize_depthwise_switch():
  model = _factory_build(endpoints=['layer_19'], regularize_depthwise=True)
  assert len(model.losses) == 35 + 17


def test_keras_preset_and_model_garden_l2_override():
  keras_model = _factory_build(endpoints=['layer_19'], preset='keras')
  assert not keras_model.losses
  cfg = backbone_cfg.Backbone(type='mnv2_det',
                              mnv2_det=backbone_cfg.MobileNetV2Det(endpoints=['layer_19']))
  model = factory.build_backbone(tf_keras.layers.InputSpec(shape=[None, None, None, 3]), cfg,
                                 common.NormActivation(), tf_keras.regularizers.L2(5e-5))
  assert model.get_config()['weight_decay'] == pytest.approx(1e-4)


def test_slim_init_is_truncated_normal_009():
  model = MobileNetV2Backbone(endpoints=['layer_19'])
  kernel = model.get_layer('block_13_expand').kernel.numpy()
  assert np.abs(kernel).max() <= 2 * 0.09 + 1e-6  # truncated at 2 stddev
  assert kernel.std() == pytest.approx(0.09 * 0.88, rel=0.05)  # truncation shrinks std
  other = model.get_layer('block_14_expand').kernel.numpy()
  assert not np.allclose(kernel[:, :, :10, :10], other[:, :, :10, :10])


def test_activity_regularizer_is_one_explicit_layer():
  model = _factory_build(endpoints=['layer_19'], preset='keras',
                         activity_regularizer={'l1': 0.0, 'l2': 1e-3})
  layers = [l for l in model.layers if isinstance(l, tf_keras.layers.ActivityRegularization)]
  assert len(layers) == 1
  out = model(tf.ones([1, 64, 64, 3]), training=True)['layer_19']
  # The same penalty as activity_regularizer=L2(1e-3) on the producing layer (mean over batch).
  assert float(tf.add_n(model.losses)) == pytest.approx(
      1e-3 * float(tf.reduce_sum(out ** 2)), rel=1e-4)


def _bn_layers(model):
  return [l for l in model.layers if isinstance(l, tf_keras.layers.BatchNormalization)]


def test_training_call_updates_every_bn_and_inference_call_none():
  model = MobileNetV2Backbone(endpoints=['layer_19'], input_specs=[None, 64, 64, 3])
  bns = _bn_layers(model)
  assert len(bns) == 52  # 35 regular convs + 17 depthwise, each followed by BN
  images = tf.random.uniform([4, 64, 64, 3], -1, 1, seed=1)
  before = [(l.moving_mean.numpy(), l.moving_variance.numpy()) for l in bns]
  model(images, training=False)
  for layer, (mean, var) in zip(bns, before):
    np.testing.assert_array_equal(layer.moving_mean.numpy(), mean)
    np.testing.assert_array_equal(layer.moving_variance.numpy(), var)
  model(images, training=True)
  for layer, (mean, var) in zip(bns, before):
    assert np.any(layer.moving_mean.numpy() != mean), layer.name
    assert np.any(layer.moving_variance.numpy() != var), layer.name


@pytest.mark.parametrize('shape,message', [
    ([224, 224, 3], '4-D'),
    ([1, 64, 64, 1], '1'),
    ([1, 64, 64, 4], '4'),
])
def test_bad_input_names_the_value(shape, message):
  model = MobileNetV2Backbone(endpoints=['layer_2'])
  with pytest.raises(ValueError, match=message) as err:
    model(tf.zeros(shape))
  assert str(shape) in str(err.value) or str(shape[-1]) in str(err.value)


@pytest.mark.parametrize('kwargs,message', [
    ({'depth_multiplier': 0.0}, 'depth_multiplier must be > 0; got 0.0'),
    ({'depth_multiplier': -1.0}, 'got -1.0'),
    ({'output_stride': 4}, 'output_stride .* got 4'),
    ({'endpoints': ['layer_20']}, "layer_20"),
    ({'input_specs': [None, 64, 64, 4]}, '3 channels'),
])
def test_bad_arguments_name_the_value(kwargs, message):
  with pytest.raises(ValueError, match=message):
    MobileNetV2Backbone(**kwargs)
