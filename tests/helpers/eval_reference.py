"""References for the evaluation transforms: OpenCV's bilinear resize and
Caffe's and torchvision's preprocessing written out on NumPy and PIL, and
generated photos (test_eval_transforms, test_caffemodel)."""

import io

import numpy as np
from PIL import Image

LEVELS_MAX = 1.0 + 1e-3  # + float32 noise of the normalisation
LEVELS_MEAN = {'caffe': 0.01, 'torchvision': 0.25}

# --- References ---------------------------------------------------------------


def opencv_bilinear_u8(src, out_h, out_w):
  """cv2.resize(src, (out_w, out_h), interpolation=INTER_LINEAR), uint8.

  OpenCV's scalar path: per-axis source coordinate (d + 0.5) * scale - 0.5
  in float32, floor, fraction clamped to 0 at the borders, coefficients
  rounded to 1/2048, rows then columns in integers, (sum + 2^21) >> 22.
  """

  def axis(n_out, n_in):
    scale = n_in / n_out
    f = ((np.arange(n_out) + 0.5) * scale - 0.5).astype(np.float32)
    s = np.floor(f).astype(np.int64)
    f = (f - s).astype(np.float32)
    low = s < 0
    f[low], s[low] = 0, 0
    high = s >= n_in - 1
    f[high], s[high] = 0, n_in - 1
    a1 = np.rint(f * 2048).astype(np.int64)
    a0 = np.rint((1 - f) * 2048).astype(np.int64)
    return s, np.minimum(s + 1, n_in - 1), a0, a1

  src = src.astype(np.int64)
  ys0, ys1, b0, b1 = axis(out_h, src.shape[0])
  xs0, xs1, a0, a1 = axis(out_w, src.shape[1])
  rows = src[:, xs0] * a0[None, :, None] + src[:, xs1] * a1[None, :, None]
  out = rows[ys0] * b0[:, None, None] + rows[ys1] * b1[:, None, None]
  return np.clip((out + (1 << 21)) >> 22, 0, 255).astype(np.uint8)


def caffe_reference(data, mean_bgr=None, mean_image=None):
  """BGR 0..255 model input, Caffe's way, from encoded bytes."""
  rgb = np.asarray(Image.open(io.BytesIO(data)).convert('RGB'))
  bgr = rgb[..., ::-1]
  warped = opencv_bilinear_u8(bgr, 256, 256).astype(np.float32)
  if mean_image is not None:  # HWC RGB [0, 1] -> BGR 0..255
    warped = warped - mean_image[..., ::-1] * 255
  else:
    warped = warped - np.asarray(mean_bgr, np.float32)
  return warped[14 : 14 + 227, 14 : 14 + 227]


def torchvision_reference(data, mean, std):
  """transforms.Resize(256), CenterCrop(224), ToTensor, Normalize - with
  torchvision's own rules written out, on PIL."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = 256, int(256 * long / short)
  size = (new_short, new_long) if w <= h else (new_long, new_short)
  image = image.resize(size, Image.BILINEAR)
  w, h = image.size
  top, left = int(round((h - 224) / 2.0)), int(round((w - 224) / 2.0))
  crop = np.asarray(image, np.float32)[top : top + 224, left : left + 224] / 255
  return (crop - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


# --- Photos -------------------------------------------------------------------


def generated_photos():
  """Smooth shapes plus texture, the kind of content resizing can alias."""
  rng = np.random.RandomState(0)
  out = []
  for h, w, fmt in (
      (375, 500, 'JPEG'),
      (500, 333, 'PNG'),
      (200, 180, 'JPEG'),
      (257, 301, 'PNG'),
  ):
    y, x = np.mgrid[0:h, 0:w] / max(h, w)
    base = (
        np.stack(
            [
                np.sin(9 * x + 3 * y),
                np.cos(7 * y - 2 * x),
                np.sin(5 * x * y * 6),
            ],
            -1,
        )
        * 90
        + 128
    )
    stripes = 40 * np.sign(np.sin(x * 150))[..., None]
    noise = rng.randn(h, w, 3) * 12
    pixels = np.clip(base + stripes + noise, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt, quality=92)
    out.append((f'generated {w}x{h} {fmt}', buf.getvalue()))
  return out
