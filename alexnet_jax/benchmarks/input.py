"""Training-input throughput: our tf.data pipeline vs a PIL + NumPy loader.

    python -m alexnet_jax.benchmark input [--data=ROOT] [--data_root=DIR] \
        [--workers=1,2]

ROOT (ROOT/SPLIT/CLASS/IMAGE) defaults to the 1,000 ImageNet sample photos
under the data root, $ALEXNET_JAX_DATA/imagenet-samples (docs/data.md).

Both loaders do the paper's training preprocessing on the same JPEGs, in the
same run: shorter side to 256, centre 256x256, random 224x224 crop, random
flip, PCA lighting (alpha ~ N(0, 0.1)), per-channel mean subtraction,
batched as float32. The PIL loader is the PyTorch-style one (torchvision's
Resize -> CenterCrop -> RandomCrop -> flip -> ToTensor -> lighting ->
Normalize, as a DataLoader worker runs it), with PIL's `draft` JPEG
downscaling; with N workers it is a process pool (as DataLoader's
num_workers), batches shipped back to the parent.

Figures per loader and worker count: images/s (wall), images/s per core
(wall rate / workers) and images per CPU-second (all threads and worker
processes), the measure of cost that noisy shared machines disturb least.
Prints JSON lines, then a table.
"""

import io
import multiprocessing
import pathlib
import time

from absl import flags
import numpy as np
from PIL import Image

from alexnet_jax.benchmarks import harness
from alexnet_jax.configs import paper
from alexnet_jax.core import paths as paths_lib

DEFAULT_DATA = 'imagenet-samples'  # under the data root


def define_flags(fv):
  """`benchmark input`'s flags, defined in the FlagValues `fv`."""
  flags.DEFINE_string(
      'data',
      None,
      'Image folder ROOT/SPLIT/CLASS/IMAGE (default '
      f'{paths_lib.in_data_root(DEFAULT_DATA)}).',
      flag_values=fv,
  )
  flags.DEFINE_string(
      'data_root',
      None,
      'The folder holding the datasets (default '
      f'${paths_lib.DATA_ENV} or {paths_lib.DEFAULT_DATA_ROOT}).',
      flag_values=fv,
  )
  flags.DEFINE_string('split', 'val', 'The split to read.', flag_values=fv)
  flags.DEFINE_string(
      'workers',
      '1,2',
      'Comma-separated thread / process counts.',
      flag_values=fv,
  )
  flags.DEFINE_integer('batch', 50, 'Images per batch.', flag_values=fv)
  flags.DEFINE_float(
      'epochs', 2.0, 'Passes over the images per measurement.', flag_values=fv
  )
  flags.DEFINE_integer('image_size', 224, 'Crop side.', flag_values=fv)
  flags.DEFINE_integer(
      'resize_size', 256, 'Shorter side before cropping.', flag_values=fv
  )
  flags.DEFINE_string(
      'resize_method',
      '',
      "data.resize_method for ours ('' = the config's).",
      flag_values=fv,
  )
  flags.DEFINE_string(
      'loaders',
      'ours,pil',
      'Comma-separated: ours, pil, pil_box.',
      flag_values=fv,
  )
  flags.DEFINE_integer(
      'repeats',
      3,
      'Measurements per loader, interleaved; the best is reported (shared '
      'machines are noisy).',
      flag_values=fv,
  )
  flags.DEFINE_string(
      'json', '', 'Also append the JSON lines to this file.', flag_values=fv
  )
  flags.DEFINE_bool(
      'quick', False, 'One short pass (0.5 epochs, 1 repeat).', flag_values=fv
  )
  flags.DEFINE_string(
      'formats',
      '',
      'Comma-separated storage formats to compare instead of the loaders: '
      'original, jpeg256, raw256 (benchmarks/input_formats.py).',
      flag_values=fv,
  )
  flags.DEFINE_string(
      'augment',
      'device,host,host_float',
      'With --formats: where crop and flip run (device, host; host_float: '
      'everything on the host, as training feeds today).',
      flag_values=fv,
  )


# ------------------------------------------------------------------ ours


def _ours(args, workers, n_images):
  from alexnet_jax.core import input_pipeline  # pylint: disable=g-import-not-at-top

  c = paper.get_config()
  c.data.name = f'folder:{args.data}'
  c.data.train_split = args.split
  c.data.image_size = args.image_size
  c.data.resize_size = args.resize_size
  if args.resize_method:
    c.data.resize_method = args.resize_method
  c.data.threads = workers
  c.optim.batch_size = args.batch
  it = input_pipeline.train_iterator(c)
  for _ in range(2):  # start-up: listing, tracing, first decodes
    next(it)
  steps = max(1, round(n_images / args.batch))
  return _timed(lambda: [next(it) for _ in range(steps)], steps * args.batch)


# ------------------------------------------------------------------- PIL

_EIGVEC = np.array(paper.IMAGENET_EIGVEC, np.float32)
_EIGVAL = np.array(paper.IMAGENET_EIGVAL, np.float32)
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)


def pil_train_image(path, rng, image_size=224, resize_size=256, box=False):
  """One image the torchvision way (box=True: resize only the crop box)."""
  with open(path, 'rb') as f:
    im = Image.open(io.BytesIO(f.read()))
  w, h = im.size
  scale = resize_size / min(w, h)
  # draft: let libjpeg decode at 1/2, 1/4 or 1/8 scale while still at
  # least the resized size.
  im.draft('RGB', (int(w * scale) + 1, int(h * scale) + 1))
  im = im.convert('RGB')
  w, h = im.size
  scale = resize_size / min(w, h)
  ox, oy = rng.integers(0, resize_size - image_size + 1, 2)
  if box:
    side = min(w, h)
    c = side * image_size / resize_size
    x0 = (w - side) / 2 + ox / scale
    y0 = (h - side) / 2 + oy / scale
    im = im.resize(
        (image_size, image_size), Image.BILINEAR, box=(x0, y0, x0 + c, y0 + c)
    )
  else:
    im = im.resize(
        (
            max(resize_size, round(w * scale)),
            max(resize_size, round(h * scale)),
        ),
        Image.BILINEAR,
    )
    w, h = im.size
    left = (w - resize_size) // 2 + ox
    top = (h - resize_size) // 2 + oy
    im = im.crop((left, top, left + image_size, top + image_size))
  if rng.random() < 0.5:
    im = im.transpose(Image.FLIP_LEFT_RIGHT)
  x = np.asarray(im, np.float32) * np.float32(1 / 255)
  x += _EIGVEC @ (rng.normal(0, 0.1, 3).astype(np.float32) * _EIGVAL)
  x -= _MEAN
  return x


def _pil_batch(task):
  paths, seed, box, image_size, resize_size = task
  start = time.process_time()
  rng = np.random.default_rng(seed)
  images = np.stack(
      [pil_train_image(p, rng, image_size, resize_size, box) for p in paths]
  )
  return images, time.process_time() - start


def _pil(args, workers, n_images, paths, box):
  rng = np.random.default_rng(0)
  steps = max(1, round(n_images / args.batch))
  tasks = []
  for i in range(steps + 2):
    idx = rng.integers(0, len(paths), args.batch)
    tasks.append(
        ([paths[j] for j in idx], i, box, args.image_size, args.resize_size)
    )
  if workers == 1:
    _pil_batch(tasks[0])
    return _timed(
        lambda: [_pil_batch(t) for t in tasks[2:]], steps * args.batch
    )
  ctx = multiprocessing.get_context('fork')
  with ctx.Pool(workers) as pool:
    list(pool.imap(_pil_batch, tasks[:workers]))  # warm the workers
    worker_cpu = []

    def run():
      for _, cpu in pool.imap(_pil_batch, tasks[2:]):
        worker_cpu.append(cpu)

    row = _timed(run, steps * args.batch)
  row['cpu_s'] += sum(worker_cpu)
  row['img_per_cpu_s'] = row['images'] / row['cpu_s']
  return row


# ---------------------------------------------------------------- common


def _timed(fn, images):
  wall, cpu = time.perf_counter(), time.process_time()
  fn()
  wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
  return dict(
      images=images,
      wall_s=round(wall, 3),
      cpu_s=cpu,
      img_per_s=images / wall,
      img_per_cpu_s=images / cpu,
  )


def _list_images(root, split):
  paths = sorted(
      str(p)
      for p in (pathlib.Path(root) / split).glob('*/*')
      if p.suffix.lower() in ('.jpg', '.jpeg', '.png')
  )
  if not paths:
    raise FileNotFoundError(f'no images under {root}/{split}/CLASS/')
  return paths


_NAMES = {
    'ours': 'alexnet_jax tf.data',
    'pil': 'PIL+NumPy (torchvision-style, draft)',
    'pil_box': 'PIL+NumPy (resize of the crop box, draft)',
}


def _measure(args, loader, workers, n_images, paths):
  if loader == 'ours':
    return _ours(args, workers, n_images)
  if loader in ('pil', 'pil_box'):
    return _pil(args, workers, n_images, paths, box=loader == 'pil_box')
  raise ValueError(f'--loaders: {loader!r} is not one of {sorted(_NAMES)}')


def run(args):
  """Measures each loader at each worker count (best of --repeats,
  interleaved); returns the rows. `args`: the command's namespace of
  `benchmark input`, or of `benchmark all`, whose missing flags take their
  defaults; --quick makes one short pass."""
  defaults = vars(harness.defaults(define_flags))
  for key, value in defaults.items():
    if not hasattr(args, key):
      setattr(args, key, value)
  if args.quick:  # unless given
    for key, value in dict(epochs=0.5, repeats=1).items():
      if getattr(args, key) == defaults[key]:
        setattr(args, key, value)
  paths_lib.set_data_root(args.data_root)
  args.data = paths_lib.expand(
      args.data or paths_lib.in_data_root(DEFAULT_DATA)
  )
  files = _list_images(args.data, args.split)
  if args.formats:
    from alexnet_jax.benchmarks import input_formats  # pylint: disable=g-import-not-at-top

    formats = args.formats.split(',')
    unknown = sorted(set(formats) - set(input_formats.FORMATS))
    bad_augment = sorted(
        set(args.augment.split(',')) - set(input_formats.AUGMENTS)
    )
    if unknown or bad_augment:
      raise SystemExit(
          f'error: --formats takes {",".join(input_formats.FORMATS)} and '
          f'--augment {",".join(input_formats.AUGMENTS)}; got '
          f'{unknown + bad_augment}'
      )
    return input_formats.run(args, formats)
  n_images = int(len(files) * args.epochs)
  rows = []
  load_before = harness.load()
  loaders = args.loaders.split(',')
  for workers in [int(w) for w in str(args.workers).split(',')]:
    best = {}
    for _ in range(args.repeats):
      for loader in loaders:
        row = _measure(args, loader, workers, n_images, files)
        for key in ('img_per_s', 'img_per_cpu_s'):
          best.setdefault(loader, {}).setdefault(key, 0.0)
          best[loader][key] = max(best[loader][key], row[key])
        best[loader].setdefault('runs', []).append(
            round(row['img_per_cpu_s'], 1)
        )
    for loader in loaders:
      row = dict(
          bench='input',
          loader=_NAMES[loader],
          workers=workers,
          images=n_images,
          repeats=args.repeats,
          img_per_s=round(best[loader]['img_per_s'], 1),
          img_per_s_per_core=round(best[loader]['img_per_s'] / workers, 1),
          img_per_cpu_s=round(best[loader]['img_per_cpu_s'], 1),
          img_per_cpu_s_runs=best[loader]['runs'],
          image_size=args.image_size,
          batch=args.batch,
          data=paths_lib.portable(args.data),
      )
      rows.append(row)
  _add_ratios(rows)
  for row in rows:
    row['load_avg'] = [load_before, harness.load()]
    harness.emit(
        harness.stamp(
            row,
            getattr(
                args, 'command_line', 'python -m alexnet_jax.benchmark input'
            ),
        ),
        args.json or getattr(args, 'out', ''),
    )
  print(table(rows))
  return rows


def _add_ratios(rows):
  """ours / PIL at the same worker count (per core and per CPU-second)."""
  for row in rows:
    peers = [
        r
        for r in rows
        if r['workers'] == row['workers']
        and r['loader'].startswith('PIL+NumPy (torchvision')
    ]
    if peers and row['loader'].startswith('alexnet_jax'):
      row['vs_pil_per_core'] = round(
          row['img_per_s_per_core'] / peers[0]['img_per_s_per_core'], 2
      )
      row['vs_pil_per_cpu_s'] = round(
          row['img_per_cpu_s'] / peers[0]['img_per_cpu_s'], 2
      )


def table(rows):
  head = (
      '| loader | workers | img/s | img/s per core | img per CPU-s | '
      'vs PIL per core | vs PIL per CPU-s |\n'
      '|---|---|---|---|---|---|---|'
  )
  lines = [head]
  for r in rows:
    lines.append(
        f"| {r['loader']} | {r['workers']} | {r['img_per_s']} | "
        f"{r['img_per_s_per_core']} | {r['img_per_cpu_s']} | "
        f"{r.get('vs_pil_per_core', '')} | "
        f"{r.get('vs_pil_per_cpu_s', '')} |"
    )
  return '\n'.join(lines)
