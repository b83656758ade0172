"""data_stats: the mean image and PCA colour constants against NumPy."""

import json

import numpy as np
from PIL import Image

from alexnet_jax import data_stats


def test_mean_image_and_pca_match_numpy(tmp_path):
  rng = np.random.default_rng(0)
  images = []
  for i in range(5):
    (tmp_path / 'data' / 'train' / f'c{i % 2}').mkdir(
        parents=True, exist_ok=True
    )
    # Correlated channels, so the covariance has a clear principal axis.
    base = rng.integers(0, 200, (8, 8, 1))
    image = np.clip(base + rng.integers(0, 50, (8, 8, 3)), 0, 255).astype(
        np.uint8
    )
    Image.fromarray(image).save(
        tmp_path / 'data' / 'train' / f'c{i % 2}' / f'{i}.png'
    )
    images.append(image / 255.0)
  (tmp_path / 'data' / 'train' / 'c0' / 'broken.jpg').write_bytes(b'xx')
  out = tmp_path / 'out'
  assert (
      data_stats.main(
          [
              f'--data=folder:{tmp_path / "data"}',
              '--resize_size=8',
              f'--out={out}',
          ]
      )
      == 0
  )
  images = np.stack(images)
  np.testing.assert_allclose(
      np.load(out / 'mean_image.npy'), images.mean(0), atol=1e-5
  )
  stats = json.loads((out / 'stats.json').read_text())
  pixels = images.reshape(-1, 3)
  cov = np.cov(pixels.T, bias=True)
  want_val, want_vec = np.linalg.eigh(cov)
  np.testing.assert_allclose(stats['eigval'], want_val[::-1], atol=1e-5)
  got_vec = np.asarray(stats['eigvec'])
  for k in range(3):  # same axes up to sign
    assert abs(abs(got_vec[:, k] @ want_vec[:, 2 - k]) - 1) < 1e-4
  np.testing.assert_allclose(
      got_vec.T @ cov @ got_vec, np.diag(stats['eigval']), atol=1e-5
  )
  np.testing.assert_allclose(stats['channel_mean'], pixels.mean(0), atol=1e-5)
  assert stats['num_images'] == 5
  assert any(s.endswith('broken.jpg') for s in stats['skipped'])
