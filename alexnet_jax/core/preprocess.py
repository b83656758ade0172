"""Image preprocessing as pure TensorFlow ops (eager or inside tf.data).

The paper's recipe (Section 2 and 4.1): rescale the shorter side to 256,
centre-crop 256x256, take a random 224x224 crop and its horizontal flip, add
PCA lighting noise, subtract the mean. Rather than decode and resize the whole
photo, we decode only the window of the original photo that becomes the crop
(`tf.io.decode_and_crop_jpeg`) and resize that window straight to 224:

  S = min(h, w)                      the centre S x S square is the 256 crop
  c = floor(S * image_size / resize_size + 1/2)   side of the crop window
  train ('paper'): window at a uniformly random integer offset in [0, S - c]^2
                   inside the centre square, resized to image_size
  eval (1 crop):   the centred window, resized to image_size

which is the paper's geometry (resize-then-crop equals crop-then-resize up to
rounding at the window's edge) at a fraction of the decode and resize cost.
When the window is at least twice the output size, libjpeg decodes it at 1/2,
1/4 or 1/8 scale (its DCT scaling, which PIL's `draft` also uses). The
10-crop evaluation decodes the centre square, resizes it to resize_size^2 and
cuts TEN_CROP_ORDER from it.

Pixel values stay in [0, 255] until `normalize` applies, in one fused
multiply-add, the lighting shift and a checkpoint's `preprocessing` dict:
(x / 255 * pixel_scale in channel_order - mean) / std, or minus the matching
crop of a per-pixel mean image.

Every random choice takes a stateless seed (int32[2] or int64[2]), so an
example's augmentation is a pure function of its seed.
"""

import dataclasses

import numpy as np
import tensorflow as tf

from alexnet_jax.configs import paper

# The 10-crop order (4 corners + centre, then each one's horizontal flip):
# crop i + 5 is crop i mirrored left-right.
TEN_CROP_ORDER = (
    'top_left',
    'top_right',
    'bottom_left',
    'bottom_right',
    'centre',
    'top_left_flipped',
    'top_right_flipped',
    'bottom_left_flipped',
    'bottom_right_flipped',
    'centre_flipped',
)
RESIZE_METHODS = ('area', 'bilinear', 'antialias')
# How evaluation gets from the photo to the centre crop (Params.eval_resize):
#   'crop_first': this module's own (the paper's geometry, decoded window);
#   'warp': Caffe's - the whole photo resized to resize_size^2 ignoring its
#     aspect ratio (convert_imageset, OpenCV bilinear, stored as uint8),
#     then the centre image_size crop;
#   'shorter_side': torchvision's - Resize(resize_size) (shorter side, PIL's
#     antialiased bilinear, uint8), then CenterCrop(image_size).
EVAL_RESIZES = ('crop_first', 'warp', 'shorter_side')


@dataclasses.dataclass(frozen=True)
class Params:
  """Everything preprocessing needs, built from config.data (or a checkpoint's
  `preprocessing` dict for evaluation)."""

  image_size: int = 224
  resize_size: int = 256
  train_crop: str = 'paper'  # 'paper' | 'inception'
  flip: bool = True
  lighting_std: float = 0.1
  lighting_scale: str = 'lambda'  # 'lambda' | 'sqrt_lambda'
  eigval: tuple = paper.IMAGENET_EIGVAL  # ImageNet's RGB PCA
  eigvec: tuple = paper.IMAGENET_EIGVEC  # (columns = eigenvectors)
  resize_method: str = 'area'  # RESIZE_METHODS, see `resize`
  channel_order: str = 'RGB'  # 'RGB' | 'BGR'
  eval_resize: str = 'crop_first'  # EVAL_RESIZES
  pixel_scale: float = 1.0  # 1.0 | 255.0
  mean: tuple = (0.485, 0.456, 0.406)  # in pixel_scale units, channel_order
  std: tuple = (1.0, 1.0, 1.0)
  # Per-pixel mean image, float32[resize_size, resize_size, 3] RGB in [0, 1]
  # (the paper's mean subtraction); None = per-channel `mean`.
  mean_image: np.ndarray | None = dataclasses.field(default=None, compare=False)


def load_mean_image(path, resize_size) -> np.ndarray:
  """The per-pixel mean image at `path` (.npy, float32[resize_size,
  resize_size, 3] RGB in [0, 1], from `python -m alexnet_jax.data_stats`)."""
  try:
    image = np.load(path)
  except (OSError, ValueError) as e:
    raise ValueError(
        f'mean image {path!r} cannot be read ({e}); make one '
        'with `python -m alexnet_jax.data_stats`'
    ) from e
  if image.shape != (resize_size, resize_size, 3):
    raise ValueError(
        f'mean image {path!r} has shape {image.shape}; it must be '
        f'({resize_size}, {resize_size}, 3) (the resize size)'
    )
  return image.astype(np.float32)


def params_from_record(record, **fields) -> Params:
  """Params from the `preprocessing` dict a checkpoint carries (written by
  input_pipeline.preprocessing_from_config, or convert.preprocessing for
  imported weights): the one place that reads such a record.

  The record fixes what the weights expect: image_size, resize_size and,
  when present, resize_method, channel_order, pixel_scale, mean, std and
  mean_image (a .npy path). `fields` are other Params fields (training's
  crop, flip and lighting) and defaults for keys a record lacks; anything
  else takes Params' default.
  """
  unknown = set(fields) - {f.name for f in dataclasses.fields(Params)}
  if unknown:
    raise TypeError(f'params_from_record: no Params field {sorted(unknown)}')
  missing = [
      k for k in ('image_size', 'resize_size', 'mean', 'std') if k not in record
  ]
  if missing:
    raise ValueError(
        f'preprocessing record {dict(record)!r} lacks {", ".join(missing)}'
    )
  out = dict(fields)
  out.update(
      image_size=int(record['image_size']),
      resize_size=int(record['resize_size']),
      mean=tuple(float(v) for v in record['mean']),
      std=tuple(float(v) for v in record['std']),
  )
  for key, cast in (
      ('resize_method', str),
      ('channel_order', str),
      ('eval_resize', str),
      ('pixel_scale', float),
  ):
    if record.get(key) is not None:
      out[key] = cast(record[key])
  if out.get('eval_resize', 'crop_first') not in EVAL_RESIZES:
    raise ValueError(
        f'preprocessing record has eval_resize='
        f'{out["eval_resize"]!r}; use one of {EVAL_RESIZES}'
    )
  if record.get('mean_image'):
    out['mean_image'] = load_mean_image(
        record['mean_image'], out['resize_size']
    )
  return Params(**out)


# ---------------------------------------------------------------- decoding


def decode_rgb(encoded, dct_method=''):
  """Any JPEG/PNG/GIF/BMP/WebP bytes -> uint8[h, w, 3] (grey, CMYK, RGBA
  become RGB; the alpha channel is dropped).

  dct_method='INTEGER_ACCURATE' decodes JPEGs as libjpeg's default (ISLOW),
  what OpenCV and PIL use: TF's default differs by up to ~12 levels."""
  return tf.cond(
      tf.io.is_jpeg(encoded),
      lambda: tf.io.decode_jpeg(encoded, channels=3, dct_method=dct_method),
      lambda: tf.io.decode_image(encoded, channels=3, expand_animations=False),
  )


def decode_window(encoded, window_fn, min_size=None):
  """Decodes only the window `window_fn(shape)` ([y, x, h, w]) of an image.

  JPEGs are decoded window-only (`decode_and_crop_jpeg`), and with min_size
  given, at the smallest DCT scale (1, 1/2, 1/4, 1/8) that keeps the
  window's shorter side >= min_size. Other formats (e.g. PNG bytes under a
  .jpg name) are decoded whole and sliced.
  Returns (uint8[h', w', 3], window int32[4] and shape int32[2] in the
  original image's pixels).
  """

  def jpeg():
    shape = tf.image.extract_jpeg_shape(encoded)[:2]
    window = window_fn(shape)
    if min_size is None:
      return (
          tf.io.decode_and_crop_jpeg(encoded, window, channels=3),
          window,
          shape,
      )
    side = tf.minimum(window[2], window[3])
    level = tf.reduce_sum(tf.cast(side // [2, 4, 8] >= min_size, tf.int32))

    def scaled(ratio):
      def decode():
        top, left = window[0] // ratio, window[1] // ratio
        height = tf.clip_by_value(
            window[2] // ratio, 1, (shape[0] + ratio - 1) // ratio - top
        )
        width = tf.clip_by_value(
            window[3] // ratio, 1, (shape[1] + ratio - 1) // ratio - left
        )
        return tf.io.decode_and_crop_jpeg(
            encoded,
            tf.stack([top, left, height, width]),
            channels=3,
            ratio=ratio,
        )

      return decode

    crop = tf.switch_case(level, [scaled(r) for r in (1, 2, 4, 8)])
    return crop, window, shape

  def other():
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    shape = tf.shape(image)[:2]
    window = window_fn(shape)
    crop = image[
        window[0] : window[0] + window[2], window[1] : window[1] + window[3]
    ]
    return crop, window, shape

  crop, window, shape = tf.cond(tf.io.is_jpeg(encoded), jpeg, other)
  crop.set_shape([None, None, 3])
  return crop, window, shape


# ---------------------------------------------------------------- geometry


def _crop_side(square, image_size, resize_size):
  """floor(square * image_size / resize_size + 1/2), at least 1."""
  side = tf.cast(
      tf.floor(tf.cast(square, tf.float32) * image_size / resize_size + 0.5),
      tf.int32,
  )
  return tf.clip_by_value(side, 1, square)


def centre_square(shape):
  """[y, x, s, s]: the centre square of an image of shape [h, w]."""
  s = tf.minimum(shape[0], shape[1])
  return tf.stack([(shape[0] - s) // 2, (shape[1] - s) // 2, s, s])


def paper_window(shape, image_size, resize_size, seed=None):
  """The crop window in original pixels: random (seed given) or centred."""
  square = centre_square(shape)
  s = square[2]
  c = _crop_side(s, image_size, resize_size)
  if seed is None:
    offset = tf.stack([(s - c) // 2, (s - c) // 2])
  else:
    offset = tf.random.stateless_uniform(
        [2], seed, 0, s - c + 1, dtype=tf.int32
    )
  return tf.stack([square[0] + offset[0], square[1] + offset[1], c, c])


def inception_window(shape, seed, area=(0.08, 1.0), ratio=(3 / 4, 4 / 3)):
  """torchvision's RandomResizedCrop box (the whole image if no box fits)."""
  begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.concat([shape, [3]], 0),
      tf.zeros([1, 0, 4], tf.float32),
      seed,
      min_object_covered=0.0,
      aspect_ratio_range=ratio,
      area_range=area,
      max_attempts=10,
      use_image_if_no_bounding_boxes=True,
  )
  return tf.stack([begin[0], begin[1], size[0], size[1]])


def mean_offset(window, shape, params):
  """Where a crop window sits in the resize_size^2 image: int32[2], used to
  cut the matching crop of the mean image."""
  square = centre_square(shape)
  limit = params.resize_size - params.image_size
  rel = tf.cast(window[:2] - square[:2], tf.float32)
  scale = params.resize_size / tf.cast(square[2], tf.float32)
  return tf.clip_by_value(tf.cast(tf.round(rel * scale), tf.int32), 0, limit)


# ------------------------------------------------------------- pixel ops


def resize(image, size, method='area'):
  """uint8/float[h, w, 3] -> float32[size, size, 3], values still 0..255.

  'area': average over each output pixel's footprint (a box filter) when
    shrinking, bilinear when enlarging: alias-free and fast (default).
  'bilinear': plain bilinear (Caffe/OpenCV's resize): fastest, aliases when
    shrinking by more than ~1.5x.
  'antialias': bilinear with a triangle filter as wide as the scale, what
    PIL and torchvision do: alias-free, about 2x the cost of 'area'.
  """
  if method == 'antialias':
    return tf.image.resize(
        image, [size, size], method='bilinear', antialias=True
    )
  if method == 'bilinear':
    return tf.image.resize(image, [size, size], method='bilinear')
  if method != 'area':
    raise ValueError(f'resize method {method!r} is not one of {RESIZE_METHODS}')
  shrink = tf.reduce_all(tf.shape(image)[:2] > size)
  return tf.cond(
      shrink,
      lambda: tf.image.resize(image, [size, size], method='area'),
      lambda: tf.image.resize(image, [size, size], method='bilinear'),
  )


def flip(image, seed):
  """Mirrors left-right with probability 1/2."""
  coin = tf.random.stateless_uniform([], seed) < 0.5
  return tf.cond(coin, lambda: tf.reverse(image, [-2]), lambda: image)


def lighting_shift(seed, params):
  """The paper's PCA colour shift: sum_i alpha_i * lambda_i * p_i with
  alpha ~ N(0, std) (lambda_i -> sqrt(lambda_i) for 'sqrt_lambda').
  Returns float32[3] RGB, in [0, 1] pixel units."""
  alpha = tf.random.stateless_normal([3], seed) * params.lighting_std
  eigval = np.asarray(params.eigval, np.float32)
  if params.lighting_scale == 'sqrt_lambda':
    eigval = np.sqrt(eigval)
  eigvec = tf.constant(np.asarray(params.eigvec, np.float32))  # columns = p_i
  return tf.linalg.matvec(eigvec, alpha * eigval)


def normalize(image, params, mean_crop=None, shift=None, input_scale=1.0):
  """Model input from RGB pixels in [0, input_scale]:
  ((x / input_scale + shift - mean_crop) * pixel_scale, in channel_order,
  - mean) / std; `mean` is not subtracted when `mean_crop` is given.

  Done as one multiply-add on [H, W * 3] rows: broadcasting a 3-vector over
  the last axis of [H, W, 3] is several times slower in TF.
  """
  order = (
      slice(None, None, -1) if params.channel_order == 'BGR' else slice(None)
  )
  std = np.asarray(params.std, np.float32)
  scale = (params.pixel_scale / input_scale / std).astype(np.float32)
  bias = -np.asarray(params.mean, np.float32) / std
  if mean_crop is not None:
    bias = np.zeros(3, np.float32)
  if shift is not None:
    bias = bias + tf.gather(shift, [2, 1, 0] if order.step else [0, 1, 2]) * (
        params.pixel_scale / std
    )
  if mean_crop is not None:
    image = image - mean_crop * input_scale
  if order.step:
    image = tf.reverse(image, [-1])
  shape = tf.shape(image)
  rows = tf.reshape(image, [shape[0], -1])
  if np.all(scale == scale[0]):
    rows = rows * scale[0]
  else:
    rows = rows * tf.tile(scale, [shape[1]])
  rows = rows + tf.tile(tf.cast(bias, tf.float32), [shape[1]])
  return tf.reshape(rows, shape)


def _mean_crop(params, offset):
  if params.mean_image is None:
    return None
  size = params.image_size
  return tf.slice(
      tf.constant(params.mean_image, tf.float32),
      tf.concat([offset, [0]], 0),
      [size, size, 3],
  )


# ------------------------------------------------------------ full recipes


def train_image(encoded, seed, params):
  """Encoded image bytes -> float32[image_size, image_size, 3], augmented."""
  crop_seed, flip_seed, light_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3)
  )
  size = params.image_size
  if params.train_crop == 'inception':
    window_fn = lambda shape: inception_window(shape, crop_seed)
  else:
    window_fn = lambda shape: paper_window(
        shape, size, params.resize_size, crop_seed
    )
  crop, window, shape = decode_window(encoded, window_fn, min_size=size)
  image = resize(crop, size, params.resize_method)
  shift = (
      lighting_shift(light_seed, params) if params.lighting_std > 0 else None
  )
  if params.train_crop == 'inception':
    offset = tf.fill([2], (params.resize_size - size) // 2)
  else:
    offset = mean_offset(window, shape, params)
  image = normalize(
      image, params, _mean_crop(params, offset), shift, input_scale=255.0
  )
  if params.flip:
    image = flip(image, flip_seed)
  return image


def _uint8_levels(image):
  """What storing a resized image as uint8 does (Caffe's LMDB, PIL)."""
  return tf.clip_by_value(tf.round(image), 0.0, 255.0)


def _round_half_even_half(d):
  """Python's round(d / 2) for an int32 d >= 0 (torchvision's centre crop)."""
  half = d // 2
  return half + tf.where(tf.equal(d % 2, 1), half % 2, 0)


def _source_eval_image(encoded, params, crops):
  """Caffe's ('warp') or torchvision's ('shorter_side') evaluation."""
  size, big = params.image_size, params.resize_size
  image = decode_rgb(encoded, dct_method='INTEGER_ACCURATE')
  if params.eval_resize == 'warp':
    # OpenCV's INTER_LINEAR = half-pixel-centred bilinear without
    # antialiasing, which tf.image.resize's 'bilinear' is.
    image = _uint8_levels(tf.image.resize(image, [big, big], 'bilinear'))
    if crops == 10:
      return ten_crop(image, params, input_scale=255.0)
    off = (big - size) // 2  # Caffe's TEST-phase crop
    return normalize(
        image[off : off + size, off : off + size],
        params,
        _mean_crop(params, tf.constant([off, off])),
        input_scale=255.0,
    )
  if crops != 1:
    raise ValueError(
        f'crops={crops} with eval_resize=shorter_side '
        "(torchvision's transform): only 1 is implemented"
    )
  shape = tf.shape(image)[:2]
  short = tf.minimum(shape[0], shape[1])
  # torchvision: new_long = int(resize_size * long / short).
  scaled = tf.cast(
      tf.math.floor(
          tf.cast(big, tf.float64)
          * tf.cast(shape, tf.float64)
          / tf.cast(short, tf.float64)
      ),
      tf.int32,
  )
  hw = tf.where(tf.equal(shape, short), big, scaled)
  image = _uint8_levels(tf.image.resize(image, hw, 'bilinear', antialias=True))
  top = _round_half_even_half(hw[0] - size)
  left = _round_half_even_half(hw[1] - size)
  crop = image[top : top + size, left : left + size]
  crop.set_shape([size, size, 3])
  return normalize(crop, params, None, input_scale=255.0)


def eval_image(encoded, params, crops=1):
  """Encoded bytes -> float32[size, size, 3] (centre crop) or
  float32[10, size, size, 3] (TEN_CROP_ORDER).

  params.eval_resize picks the way to the crop (EVAL_RESIZES): imported
  weights record their source's.
  """
  size, big = params.image_size, params.resize_size
  if params.eval_resize != 'crop_first':
    if crops not in (1, 10):
      raise ValueError(f'crops={crops!r} is not accepted; use 1 or 10')
    return _source_eval_image(encoded, params, crops)
  if crops == 1:
    window_fn = lambda shape: paper_window(shape, size, big)
    crop, window, shape = decode_window(encoded, window_fn, min_size=size)
    offset = mean_offset(window, shape, params)
    return normalize(
        resize(crop, size, params.resize_method),
        params,
        _mean_crop(params, offset),
        input_scale=255.0,
    )
  if crops != 10:
    raise ValueError(f'crops={crops!r} is not accepted; use 1 or 10')
  square, _, _ = decode_window(encoded, centre_square, min_size=big)
  return ten_crop(
      resize(square, big, params.resize_method), params, input_scale=255.0
  )


def ten_crop_offsets(resize_size, image_size):
  """[y, x] of the five crops in TEN_CROP_ORDER[:5]."""
  far = resize_size - image_size
  mid = far // 2
  return ((0, 0), (0, far), (far, 0), (far, far), (mid, mid))


def ten_crop(image, params, input_scale=1.0):
  """float32[R, R, 3] RGB in [0, input_scale] -> normalised
  float32[10, size, size, 3] in TEN_CROP_ORDER."""
  size = params.image_size
  crops = []
  for y, x in ten_crop_offsets(params.resize_size, size):
    crop = image[y : y + size, x : x + size]
    crops.append(
        normalize(
            crop,
            params,
            _mean_crop(params, tf.constant([y, x], tf.int32)),
            input_scale=input_scale,
        )
    )
  crops += [tf.reverse(c, [-2]) for c in crops]
  return tf.stack(crops)


# ------------------------------------------------ prepared (stored) squares
#
# A prepared dataset (prepared_source.py) stores each image once as the
# paper's resize_size^2 square, as a JPEG (`stored` is its bytes) or as raw
# uint8 (`stored` is the uint8[R, R, 3] square). Training crops a
# random image_size window of it, evaluation its centre or its 10 crops:
# the geometry above with the resize already done, once, at preparation.


def prepare_square(encoded, size, method='area'):
  """Encoded photo -> uint8[size, size, 3]: shorter side to `size`, centre
  square, what a prepared dataset stores. The whole photo is decoded as
  libjpeg's default (ISLOW, what PIL uses) at full scale: preparation runs
  once, so it takes the exact decode over the fast one."""
  image = decode_rgb(encoded, dct_method='INTEGER_ACCURATE')
  window = centre_square(tf.shape(image)[:2])
  square = image[
      window[0] : window[0] + window[2], window[1] : window[1] + window[3]
  ]
  return tf.cast(_uint8_levels(resize(square, size, method)), tf.uint8)


def _stored_window(stored, storage, resize_size, offset, size):
  """uint8[size, size, 3] at `offset` ([y, x]) of a stored square."""
  if storage == 'raw':  # stored: the square itself, uint8[R, R, 3]
    return tf.slice(stored, tf.concat([offset, [0]], 0), [size, size, 3])
  crop = tf.io.decode_and_crop_jpeg(
      stored, tf.concat([offset, [size, size]], 0), channels=3
  )
  crop.set_shape([size, size, 3])
  return crop


def stored_square(stored, storage, resize_size):
  """A stored square, decoded: uint8[resize_size, resize_size, 3]."""
  if storage == 'raw':
    return tf.ensure_shape(stored, [resize_size, resize_size, 3])
  square = tf.io.decode_jpeg(stored, channels=3)
  square.set_shape([resize_size, resize_size, 3])
  return square


def train_crop_offset(seed, params):
  """The random [y, x] of a training crop in the square: int32[2]."""
  return tf.random.stateless_uniform(
      [2], seed, 0, params.resize_size - params.image_size + 1, dtype=tf.int32
  )


def train_stored(stored, seed, params, storage):
  """A stored square -> float32[image_size, image_size, 3], augmented as
  train_image does (random crop, flip, PCA lighting, normalisation), the
  keys split the same way."""
  if params.train_crop != 'paper':
    raise ValueError(
        f'train_crop={params.train_crop!r} needs the full photo; a prepared '
        "dataset holds the paper's centre squares (use train_crop='paper' "
        'or the original images)'
    )
  crop_seed, flip_seed, light_seed = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3)
  )
  offset = train_crop_offset(crop_seed, params)
  crop = _stored_window(
      stored, storage, params.resize_size, offset, params.image_size
  )
  shift = (
      lighting_shift(light_seed, params) if params.lighting_std > 0 else None
  )
  image = normalize(
      tf.cast(crop, tf.float32),
      params,
      _mean_crop(params, offset),
      shift,
      input_scale=255.0,
  )
  if params.flip:
    image = flip(image, flip_seed)
  return image


def train_stored_uint8(stored, seed, params, storage):
  """The host's share when augmentation runs on the device: the random crop
  and flip of train_stored, as uint8 (no lighting, no normalisation)."""
  return train_stored_window(stored, seed, params, storage)[0]


def train_stored_window(stored, seed, params, storage):
  """(train_stored_uint8's crop, int32[3] [y, x, flipped]): where the crop
  was cut, which the device needs to subtract a per-pixel mean image."""
  crop_seed, flip_seed, _ = tf.unstack(
      tf.random.experimental.stateless_split(seed, 3)
  )
  offset = train_crop_offset(crop_seed, params)
  crop = _stored_window(
      stored, storage, params.resize_size, offset, params.image_size
  )
  if not params.flip:
    return crop, tf.concat([offset, [0]], 0)
  coin = tf.random.stateless_uniform([], flip_seed) < 0.5
  crop = tf.cond(coin, lambda: tf.reverse(crop, [-2]), lambda: crop)
  return crop, tf.concat([offset, [tf.cast(coin, tf.int32)]], 0)


def eval_stored(stored, params, storage, crops=1):
  """A stored square -> float32[size, size, 3] (centre crop) or
  float32[10, size, size, 3] (TEN_CROP_ORDER), as eval_image of the photo
  (eval_resize='crop_first') with the resize done at preparation."""
  if params.eval_resize != 'crop_first':
    raise ValueError(
        f'eval_resize={params.eval_resize!r} (imported weights) resizes the '
        "original photo its source's way; a prepared dataset holds the "
        "paper's squares: evaluate these weights on the original images"
    )
  size, big = params.image_size, params.resize_size
  if crops == 1:
    mid = (big - size) // 2
    offset = tf.constant([mid, mid], tf.int32)
    crop = _stored_window(stored, storage, big, offset, size)
    return normalize(
        tf.cast(crop, tf.float32),
        params,
        _mean_crop(params, offset),
        input_scale=255.0,
    )
  if crops != 10:
    raise ValueError(f'crops={crops!r} is not accepted; use 1 or 10')
  square = tf.cast(stored_square(stored, storage, big), tf.float32)
  return ten_crop(square, params, input_scale=255.0)
