r"""Figures 3 and 4 of the paper from a trained checkpoint, as committed files.

    python -m experiments.trained_model_figures --checkpoint=DIR \
        [--gallery=DIR] [--data_root=DIR] [--gallery_size=2000]
        [--queries=8] [--neighbours=6] [--layer=fc7] [--out=DIR]

The gallery defaults to the CIFAR-10 test images under the data root,
$ALEXNET_JAX_DATA/cifar10/test (docs/data.md).

Writes to --out (default experiments/results/trained_model_figures/):
  figure3_kernels.png   conv1's kernels, one panel per tower
  figure4_neighbours.png  query images and their nearest gallery images by
                        Euclidean distance of `--layer` activations
  figures.md, figures.json  the towers' colour shares (alexnet_jax.analysis.visualize),
                        neighbour labels, how often a neighbour shares the
                        query's class, and the command, machine and date
                        (also in provenance.json).

Use a gallery you may redistribute (the CIFAR-10 test images are fine; do
not commit figures made from the ImageNet photos).
"""

import argparse
import json
import pathlib
import sys

import experiments

plt = experiments.pyplot()  # or one line naming the extra to install
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from alexnet_jax.analysis import features  # noqa: E402
from alexnet_jax.analysis import visualize  # noqa: E402
from alexnet_jax.core import checkpoint  # noqa: E402
from alexnet_jax.core import paths  # noqa: E402
from experiments import collect  # noqa: E402

OUT = collect.RESULTS_ROOT / 'trained_model_figures'
EXTENSIONS = ('.jpg', '.jpeg', '.png')


def gallery_files(folder, count):
  """`count` image files evenly spaced over the sorted files of `folder`."""
  files = sorted(
      p
      for p in pathlib.Path(folder).rglob('*')
      if p.suffix.lower() in EXTENSIONS
  )
  if not files:
    raise SystemExit(f'--gallery={folder}: no {EXTENSIONS} images there')
  if count < len(files):
    files = [files[i * len(files) // count] for i in range(count)]
  return files


def figure3(variables, channel_order, path):
  kernels = visualize.conv1_kernels(variables)
  spec = visualize.tower_colour_specificity(variables)
  fig, axes = plt.subplots(
      1, len(kernels), squeeze=False, figsize=(5 * len(kernels), 4)
  )
  for t, (ax, k) in enumerate(zip(axes[0], kernels)):
    ax.imshow(
        visualize.kernel_mosaic(k, columns=8, channel_order=channel_order),
        interpolation='nearest',
    )
    ax.set_title(f'tower {t}: {len(k)} kernels, colour share {spec[t]:.2f}')
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return spec, visualize.colour_share(kernels)


def figure4(files, idx, queries, path):
  rows, cols = len(queries), idx.shape[1]
  fig, axes = plt.subplots(
      rows, cols, squeeze=False, figsize=(1.3 * cols, 1.45 * rows)
  )
  for row, q, near in zip(axes, queries, idx):
    for col, (ax, g) in enumerate(zip(row, [q] + list(near[near != q]))):
      ax.imshow(Image.open(files[g]).convert('RGB'), interpolation='nearest')
      ax.set_xticks([])
      ax.set_yticks([])
      ax.set_xlabel(files[g].parent.name, fontsize=7)
      if col == 0:
        ax.set_title('query', fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv=None):
  argv = sys.argv[1:] if argv is None else argv
  p = argparse.ArgumentParser(
      prog='python -m experiments.trained_model_figures',
      description=__doc__.split('\n')[0],
  )
  p.add_argument('--checkpoint', required=True)
  p.add_argument(
      '--gallery',
      default=None,
      help='image folder (default $ALEXNET_JAX_DATA/cifar10/test)',
  )
  p.add_argument(
      '--data_root',
      default=None,
      help='the folder holding the datasets (default '
      '$ALEXNET_JAX_DATA or ~/alexnet_jax_data)',
  )
  p.add_argument('--gallery_size', type=int, default=2000)
  p.add_argument('--queries', type=int, default=8)
  p.add_argument('--neighbours', type=int, default=6)
  p.add_argument('--layer', default='fc7')
  p.add_argument('--out', default=str(OUT))
  args = p.parse_args(argv)
  paths.set_data_root(args.data_root)
  gallery = paths.expand(args.gallery or paths.in_data_root('cifar10/test'))
  # Recorded with the data root as $ALEXNET_JAX_DATA: no machine paths.
  gallery_name = paths.portable(gallery)
  out = pathlib.Path(args.out)
  out.mkdir(parents=True, exist_ok=True)

  model, variables, config = checkpoint.load(args.checkpoint)
  meta = checkpoint.load_metadata(args.checkpoint)
  prep = meta['preprocessing']
  spec, shares = figure3(
      variables, prep['channel_order'], out / 'figure3_kernels.png'
  )

  layer = args.layer
  if layer not in features.layer_names(model):
    raise SystemExit(
        f'--layer={layer}: {type(model).__name__} has '
        f'{", ".join(features.layer_names(model))}'
    )
  files = gallery_files(gallery, args.gallery_size)
  feats = features.extract(
      model, variables, features.load_images(files, prep), layer=layer
  )
  queries = [i * len(files) // args.queries for i in range(args.queries)]
  idx, _ = features.nearest_neighbours(
      feats[queries], feats, k=args.neighbours + 1
  )
  figure4(files, idx, queries, out / 'figure4_neighbours.png')
  # How often a neighbour (other than the query) has the query's folder.
  labels = [f.parent.name for f in files]
  same = [
      np.mean([labels[g] == labels[q] for g in near[near != q]])
      for q, near in zip(queries, idx)
  ]
  classes = sorted(set(labels))
  chance = np.mean([labels.count(c) / len(labels) for c in labels])

  prov = collect.provenance(['experiments.trained_model_figures'] + argv)
  result = dict(
      checkpoint=str(args.checkpoint),
      model=type(model).__name__,
      variant=config.model.variant,
      towers=config.model.towers,
      tower_colour_share=[float(s) for s in spec],
      kernel_colour_share=[[float(v) for v in t] for t in shares],
      layer=layer,
      gallery=gallery_name,
      gallery_size=len(files),
      neighbours_same_class=float(np.mean(same)),
      same_class_by_chance=float(chance),
      classes=len(classes),
      provenance=prov,
  )
  (out / 'figures.json').write_text(json.dumps(result, indent=1) + '\n')
  (out / collect.PROVENANCE_FILE).write_text(json.dumps(prov, indent=1) + '\n')
  lines = [
      '# Figures 3 and 4 from a trained checkpoint',
      '',
      f'Checkpoint: `{args.checkpoint}` ({type(model).__name__}, variant '
      f'{config.model.variant}, {config.model.towers} tower(s)).',
      '',
      '## Figure 3: conv1 kernels by tower',
      '',
      '![conv1 kernels](figure3_kernels.png)',
      '',
      'Colour share (0 = grey-level kernel, 1 = pure colour-opponent, random '
      "kernels ~0.67; mean over each tower's kernels):",
      '',
  ]
  lines += [f'- tower {t}: {s:.3f}' for t, s in enumerate(spec)]
  lines += [
      '',
      '## Figure 4: nearest neighbours',
      '',
      '![neighbours](figure4_neighbours.png)',
      '',
      f'{len(queries)} queries, {args.neighbours} neighbours each among '
      f'{len(files)} images of `{gallery_name}` by Euclidean distance '
      f'of {layer} activations: {100 * np.mean(same):.0f}% of the '
      f"neighbours share the query's class ({100 * chance:.0f}% by "
      'chance).',
      '',
      f'Command: `{prov["command"]}`  ',
      f'Machine: {prov["machine"]}  ',
      f'Date: {prov["date"]}, git {prov["git_commit"]}',
      '',
  ]
  (out / 'figures.md').write_text('\n'.join(lines))
  print('\n'.join(lines))
  return 0


if __name__ == '__main__':
  sys.exit(main())
