"""The JPEG quality of a prepared dataset: error against the raw squares and
bytes per image, per quality (the choice behind prepare_data's default).

    python -m experiments.benchmarks.jpeg_quality [--data=ROOT] [--split=val]
        [--size=256] [--qualities=75,85,90,95] [--json=FILE]

ROOT defaults to the ImageNet sample photos under the data root. Each photo is
prepared as prepare_data does it (shorter side to --size, area filter, centre
square, uint8), encoded at each quality with tf.io.encode_jpeg (4:2:0 chroma,
as PIL's default) and decoded again; per quality it prints one JSON line:
PSNR (dB, over all pixels of all images), mean absolute error in levels,
the share of values more than 4 levels off, and mean bytes per image.
"""

import argparse
import json
import sys

from alexnet_jax.core import console

console.setup()

# pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np
import tensorflow as tf

from alexnet_jax.configs import paper
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import paths
from alexnet_jax.core import preprocess


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--data', default=paths.in_data_root('imagenet-samples'))
  p.add_argument('--split', default='val')
  p.add_argument('--size', type=int, default=256)
  p.add_argument('--qualities', default='75,85,90,95')
  p.add_argument('--json', default='')
  args = p.parse_args(argv)
  qualities = [int(q) for q in args.qualities.split(',')]
  config = paper.get_config()
  config.data.name = f'folder:{args.data}'
  ds, _ = input_pipeline.map_readable(
      config,
      args.split,
      lambda e: preprocess.prepare_square(e, args.size, 'area'),
  )
  sq_err = {q: 0.0 for q in qualities}
  abs_err = {q: 0.0 for q in qualities}
  far = {q: 0 for q in qualities}
  nbytes = {q: 0 for q in qualities}
  n = values = 0
  for ex in ds.as_numpy_iterator():
    raw = ex['image']
    n += 1
    values += raw.size
    for q in qualities:
      encoded = tf.io.encode_jpeg(raw, quality=q)
      nbytes[q] += len(encoded.numpy())
      back = tf.io.decode_jpeg(encoded, channels=3).numpy()
      d = back.astype(np.float64) - raw
      sq_err[q] += (d * d).sum()
      abs_err[q] += np.abs(d).sum()
      far[q] += int((np.abs(d) > 4).sum())
  lines = []
  for q in qualities:
    mse = sq_err[q] / values
    lines.append(
        dict(
            quality=q,
            size=args.size,
            images=n,
            psnr_db=round(10 * np.log10(255**2 / mse), 2),
            mean_abs_error=round(abs_err[q] / values, 3),
            share_over_4_levels=round(far[q] / values, 4),
            bytes_per_image=round(nbytes[q] / n),
        )
    )
  lines.append(
      dict(
          quality='raw',
          size=args.size,
          images=n,
          bytes_per_image=args.size**2 * 3,
      )
  )
  for line in lines:
    print(json.dumps(line))
  if args.json:
    with open(args.json, 'a') as f:
      for line in lines:
        f.write(json.dumps(line) + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
