"""Training augmentation: SSD random crop and random horizontal flip.

Follows the semantics of the TF Object Detection API's `ssd_random_crop`
(docs/reference.md, "Training schedule and augmentation": the ssdlite_mobilenet_v2_coco
config uses random horizontal flip + ssd_random_crop), written with stateless random
ops so a seed makes every element reproducible regardless of tf.data parallelism:

  1. pick one of 7 options uniformly; option i has min_object_covered and
     overlap threshold OPTION_THRESHOLDS[i];
  2. with probability KEEP_ORIGINAL_PROB keep the image as is;
  3. otherwise sample a window with `sample_distorted_bounding_box`
     (aspect ratio in ASPECT_RATIO_RANGE, area fraction in AREA_RANGE, 100
     attempts, whole image if no window fits / no boxes);
  4. drop boxes completely outside the window, then boxes whose fraction
     inside the window (intersection / box area, the OD API's IoA) is below the
     option's overlap threshold; re-express the rest in the window frame and
     clip them to it.

Boxes are normalized `[ymin, xmin, ymax, xmax]` float32 `[M, 4]`.
"""

import tensorflow as tf

# OD API ssd_random_crop defaults: min_object_covered == overlap_thresh per option.
OPTION_THRESHOLDS = (0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0)
ASPECT_RATIO_RANGE = (0.5, 2.0)
AREA_RANGE = (0.1, 1.0)
KEEP_ORIGINAL_PROB = 0.15  # OD API random_coef
MAX_ATTEMPTS = 100
FLIP_PROB = 0.5


def _split(seed, n):
  return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _crop_window(image_shape, boxes, seed):
  """Returns `(begin [2] int32, size [2] int32, threshold float32)` of a crop."""
  choice_seed, keep_seed, box_seed = _split(seed, 3)
  choice = tf.random.stateless_uniform([], choice_seed, maxval=len(OPTION_THRESHOLDS),
                                       dtype=tf.int32)
  threshold = tf.gather(tf.constant(OPTION_THRESHOLDS, tf.float32), choice)
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      image_shape,
      bounding_boxes=tf.clip_by_value(boxes, 0.0, 1.0)[tf.newaxis],
      seed=box_seed,
      min_object_covered=threshold,
      aspect_ratio_range=ASPECT_RATIO_RANGE,
      area_range=AREA_RANGE,
      max_attempts=MAX_ATTEMPTS,
      use_image_if_no_bounding_boxes=True)
  keep_original = tf.random.stateless_uniform([], keep_seed) < KEEP_ORIGINAL_PROB
  begin = tf.where(keep_original, tf.zeros([2], tf.int32), begin[:2])
  size = tf.where(keep_original, image_shape[:2], size[:2])
  return begin, size, threshold


def _window_keep_mask(boxes, window, threshold):
  """`[M]` bool: box overlaps `window` and IoA(box in window) >= threshold."""
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
  wy0, wx0, wy1, wx1 = tf.unstack(window)
  outside = ((ymin >= wy1) | (xmin >= wx1) | (ymax <= wy0) | (xmax <= wx0))
  inter_h = tf.maximum(tf.minimum(ymax, wy1) - tf.maximum(ymin, wy0), 0.0)
  inter_w = tf.maximum(tf.minimum(xmax, wx1) - tf.maximum(xmin, wx0), 0.0)
  area = (ymax - ymin) * (xmax - xmin)
  ioa = tf.math.divide_no_nan(inter_h * inter_w, area)
  return tf.logical_not(outside) & (ioa >= threshold)


def ssd_random_crop(image, boxes, seed):
  """OD API-style SSD random crop.

  Args:
    image: `[H, W, C]` image, any dtype.
    boxes: `[M, 4]` float32 normalized yxyx, positive size.
    seed: `[2]` int32/int64 stateless seed.

  Returns:
    image: `[h, w, C]` cropped image.
    boxes: `[K, 4]` float32 normalized to the crop, clipped to [0, 1].
    kept: `[K]` int32 indices of the kept input boxes (to gather labels).
    begin: `[2]` int32 pixel `(y, x)` of the crop origin in the input image.
    size: `[2]` int32 pixel `(h, w)` of the crop.
  """
  image_shape = tf.shape(image)
  begin, size, threshold = _crop_window(image_shape, boxes, seed)
  hw = tf.cast(image_shape[:2], tf.float32)
  y0x0 = tf.cast(begin, tf.float32) / hw
  y1x1 = tf.cast(begin + size, tf.float32) / hw
  window = tf.concat([y0x0, y1x1], axis=0)
  kept = tf.cast(tf.reshape(tf.where(_window_keep_mask(boxes, window, threshold)),
                            [-1]), tf.int32)
  extent = tf.tile(y1x1 - y0x0, [2])
  new_boxes = (tf.gather(boxes, kept) - tf.tile(y0x0, [2])) / extent
  new_boxes = tf.clip_by_value(new_boxes, 0.0, 1.0)
  new_image = tf.slice(image, tf.concat([begin, [0]], 0),
                       tf.concat([size, [-1]], 0))
  return new_image, new_boxes, kept, begin, size


def random_horizontal_flip(image, boxes, seed):
  """Flips image `[H, W, C]` and boxes `[M, 4]` left-right with FLIP_PROB.

  Returns:
    image, boxes (xmin' = 1 - xmax, xmax' = 1 - xmin), flipped (bool scalar).
  """
  flipped = tf.random.stateless_uniform([], seed) < FLIP_PROB
  ymin, xmin, ymax, xmax = tf.unstack(boxes, axis=1)
  flipped_boxes = tf.stack([ymin, 1.0 - xmax, ymax, 1.0 - xmin], axis=1)
  image = tf.cond(flipped, lambda: tf.reverse(image, axis=[1]), lambda: image)
  boxes = tf.where(flipped, flipped_boxes, boxes)
  return image, boxes, flipped
