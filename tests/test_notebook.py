"""experiments/demo.ipynb runs end to end (nbclient), offline.

Two runs: the Colab path on a small .caffemodel written by the test (fetched
through a file:// URL and checked against its SHA-1, imported, then
classified, sanity-checked, Figure 3 and 4), and the offline default (a
tiny CIFAR-10 export standing in for the smoke run's workdir, with the
photos shipped in the package). The parameters cell is overridden through
ALEXNET_DEMO_* environment variables, which the notebook's kernel inherits.
The install cell and the download check are also run on their own.
"""

import hashlib
import importlib.metadata
import importlib.util
import os
import re
import subprocess
import sys

import jax
import nbclient
import nbformat
import numpy as np
from PIL import Image
import pytest

from alexnet_jax.analysis import features
from alexnet_jax.analysis import visualize
from alexnet_jax.configs import paper
from alexnet_jax.core import checkpoint
from alexnet_jax.core import console
from alexnet_jax.core import convert
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import model as model_lib
from conftest import REPO
from helpers import caffe
from helpers import cifar10

CLASSES = cifar10.CLASSES
NOTEBOOK = REPO / 'experiments' / 'demo.ipynb'
WNIDS = ('n02123045', 'n02690373', 'n04285008')  # tabby, airliner, sports car


def _notebook():
  return nbformat.read(NOTEBOOK, as_version=4)


def _cell(marker):
  """The source of the one code cell containing `marker`."""
  found = [
      c.source
      for c in _notebook().cells
      if c.cell_type == 'code' and marker in c.source
  ]
  assert len(found) == 1, marker
  return found[0]


@pytest.fixture
def tiny_export(tmp_path):
  config = paper.get_config()
  config.model.num_classes = len(CLASSES)
  config.model.width_scale = 1 / 16
  config.data.image_size = 67  # the smallest the paper geometry takes
  config.data.resize_size = 76
  module = model_lib.from_config(config.model)
  # 'rbg' keys: threefry initialisers take ~10 s to compile on XLA:CPU here.
  variables = model_lib.init(module, jax.random.key(0, impl='rbg'), 67)
  path = checkpoint.save_model(
      tmp_path / 'export',
      config=config,
      variables=variables,
      preprocessing=input_pipeline.preprocessing_from_config(config),
      class_names=CLASSES,
  )
  return path, variables


def _photos(root):
  rs = np.random.RandomState(0)
  for i, name in enumerate(('cat', 'dog', 'ship')):
    (root / name).mkdir(parents=True)
    for j in range(3):
      h, w = 50 + 20 * j, 90 - 10 * i  # varied, non-square sizes
      Image.fromarray(rs.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(
          root / name / f'{name}_{j}.jpg'
      )


def _imagenet_samples(root):
  """val/<wnid>/<wnid>_<name>.JPEG, like the shared and public samples."""
  rs = np.random.RandomState(0)
  for i, wnid in enumerate(WNIDS):
    (root / wnid).mkdir(parents=True)
    for j in range(2):
      h, w = 240 + 30 * j, 300 - 20 * i
      Image.fromarray(rs.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(
          root / wnid / f'{wnid}_photo{j}.JPEG'
      )


def _run(tmp_path, monkeypatch, **params):
  for name, value in params.items():
    monkeypatch.setenv(f'ALEXNET_DEMO_{name}', str(value))
  for name in ('PHOTOS', 'GALLERY'):
    monkeypatch.delenv(f'ALEXNET_DEMO_{name}', raising=False)
  # As on Colab: nothing quietens TensorFlow but the notebook itself ('' is
  # TensorFlow's default level, and no setdefault elsewhere replaces it).
  monkeypatch.setenv('TF_CPP_MIN_LOG_LEVEL', '')
  nb = _notebook()
  # Outputs are not committed: the notebook is clean for Colab users.
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
  assert 'parameters' in nb.cells[2].metadata.get('tags', [])
  nbclient.NotebookClient(
      nb,
      timeout=300,
      kernel_name='python3',
      resources={'metadata': {'path': str(tmp_path)}},
  ).execute()
  text = '\n'.join(
      o.get('text', '')
      for c in nb.cells
      if c.cell_type == 'code'
      for o in c.outputs
  )
  images = [
      o
      for c in nb.cells
      if c.cell_type == 'code'
      for o in c.outputs
      if 'image/png' in o.get('data', {})
  ]
  # No TensorFlow start-up notices among the outputs (stdout and stderr).
  assert not [l for l in text.splitlines() if console.is_notice(l)], text
  return text, len(images)


def test_demo_notebook_runs_on_a_caffemodel(tmp_path, monkeypatch):
  """The Colab default (bvlc_alexnet) with a test-written caffemodel."""

  weights = caffe.write_caffemodel(
      tmp_path / 'small.caffemodel',
      caffe.net_blobs(caffe.caffe_net(caffe.TINY, seed=3)),
      v1=True,
  )
  sha1 = hashlib.sha1(weights.read_bytes()).hexdigest()
  data = tmp_path / 'data'
  _imagenet_samples(data / 'imagenet-samples' / 'val')
  work = tmp_path / 'work'
  work.mkdir()
  text, images = _run(
      work,
      monkeypatch,
      CHECKPOINT='bvlc_alexnet',
      BVLC_ALEXNET_URL=weights.as_uri(),
      BVLC_ALEXNET_SHA1=sha1,
      CAFFEMODEL_WIDTH=caffe.TINY,
      DATA_ROOT=data,
      PHOTO_FILTER=f'{WNIDS[0]},{WNIDS[2]}',
      NUM_PHOTOS=4,
      SANITY_PHOTOS=6,
      GALLERY_SIZE=6,
      NUM_QUERIES=2,
      NEIGHBOURS=3,
      LAYER='fc7',
  )
  export = work / 'bvlc_alexnet_export'
  assert 'bvlc_alexnet_export: AlexNet variant=paper towers=2' in text
  # 4 photos of the two filtered classes, each labelled with its true class.
  names = convert.imagenet_class_names()
  wanted = {
      f'true: {names[convert.imagenet_wnids().index(w)]}'
      for w in (WNIDS[0], WNIDS[2])
  }
  lines = [l for l in text.splitlines() if l.startswith('true: ')]
  assert len(lines) == 4 and all(l.count(' | ') == 4 for l in lines)
  assert {l.split('  ')[0].strip() for l in lines} <= wanted
  # The sanity check's figures, recomputed here from the export.
  model, variables, _ = checkpoint.load(export)
  record = checkpoint.load_metadata(export)['preprocessing']
  sample = sorted((data / 'imagenet-samples').rglob('*.JPEG'))
  logits = features.extract(
      model, variables, features.load_images(sample, record)
  )
  truth = np.array(
      [convert.imagenet_wnids().index(p.name.split('_')[0]) for p in sample]
  )
  best = np.argsort(-np.asarray(logits), axis=1)[:, :5]
  top1 = 100 * np.mean(best[:, 0] == truth)
  top5 = 100 * np.mean((best == truth[:, None]).any(1))
  assert (
      f'sanity check on 6 sample photos: top-1 {top1:.1f}%, top-5 '
      f'{top5:.1f}% (+/- 41 points at n = 6)'
  ) in text
  assert (
      'published (bvlc_alexnet, ILSVRC-2012 val, centre crop): top-1 '
      '57.1%, top-5 80.2%'
  ) in text
  spec = visualize.tower_colour_specificity(variables)
  for t in range(2):
    assert f'tower {t}: mean colour share {spec[t]:.3f}' in text
  width = model_lib.widths_for('paper', 2, caffe.TINY)[-1]
  assert f'6 gallery images, fc7 features of shape ({width},)' in text
  assert images == 3  # photos, kernels, neighbours
  assert (work / 'bvlc_alexnet.caffemodel').read_bytes() == (
      weights.read_bytes()
  )


def test_demo_notebook_offline_default(tiny_export, tmp_path, monkeypatch):
  """A local checkpoint (standing in for the smoke run's workdir) and the
  CIFAR-10 photos shipped in the package: no network, no datasets."""
  source = _cell("CHECKPOINT = 'bvlc_alexnet' if ON_COLAB")
  default = re.search(r"else '([^']+)'", source).group(1)
  readme = (REPO / 'README.md').read_text()
  assert f'--config=configs/smoke.py --workdir={default}' in readme
  export, variables = tiny_export
  text, images = _run(
      tmp_path,
      monkeypatch,
      CHECKPOINT=export,
      DATA_ROOT=tmp_path / 'nothing',
      NUM_PHOTOS=4,
      GALLERY_SIZE=9,
      NUM_QUERIES=2,
      NEIGHBOURS=3,
      LAYER='fc7',
  )
  assert f'{export}: AlexNet variant=paper towers=2' in text
  lines = [l for l in text.splitlines() if l.startswith('true: ')]
  assert len(lines) == 4 and all(l.count(' | ') == 4 for l in lines)
  assert all(l.split()[1] in CLASSES for l in lines)
  assert 'sanity check skipped' in text
  spec = visualize.tower_colour_specificity(variables)
  assert f'tower 1: mean colour share {spec[1]:.3f}' in text
  assert 'not meaningful on the smoke model' in text
  assert 'more colour-agnostic' not in text  # no winner named
  assert images == 3


def test_install_cell_message_while_the_address_is_unset(monkeypatch, tmp_path):
  source = _cell('ALEXNET_JAX_REPO =')
  assert source.count('ALEXNET_JAX_REPO = ') == 1  # one marked place
  calls = []
  monkeypatch.setattr(subprocess, 'check_call', calls.append)
  monkeypatch.setattr(importlib.util, 'find_spec', lambda name: None)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(
      RuntimeError,
      match=r'ALEXNET_JAX_REPO \(first line of '
      r'this cell\) is empty: set it to the repository '
      'address',
  ):
    exec(source, {})  # pylint: disable=exec-used
  assert not calls  # no pip error either


# Colab's GPU runtime as googlecolab/backend-info's pip-freeze.gpu.txt
# (commit 03a89033b7dd) lists it: what the install cell keeps or replaces.
COLAB = {
    'tensorflow': '2.20.0',
    'jax': '0.7.2',
    'jaxlib': '0.7.2',
    'jax-cuda12-plugin': '0.7.2',
    'torch': '2.11.0+cu128',
    'torchvision': '0.26.0+cu128',
    'numpy': '2.0.2',
}


def _install_cell():
  """The install cell's definitions (without its last lines, which act)."""
  source = _cell('ALEXNET_JAX_REPO =')
  namespace = {}
  exec(source.split('\nKIND = runtime_kind()')[0], namespace)  # pylint: disable=exec-used
  return namespace


def _fake_pip(installed):
  """A pip that records its commands and 'installs' their requirements."""
  calls = []

  def run(command):
    calls.append(command)
    for arg in command[command.index('install') + 1 :]:
      if arg.startswith('-') or arg == 'constraints.txt':
        continue
      if ' @ git+' in arg:
        installed['alexnet_jax'] = '0.1.0'
        continue
      name, _, version = re.match(
          r'([\w.-]+)(\[[^\]]*\])?(?:==|>=)?(.*)', arg
      ).groups()
      installed[name.lower()] = version or '1.0'

  def version(name):
    if name not in installed:
      raise importlib.metadata.PackageNotFoundError(name)
    return installed[name]

  return calls, run, version


@pytest.mark.parametrize('kind', ['cpu', 'gpu', 'tpu'])
def test_install_cell_per_runtime_kind(kind, monkeypatch, tmp_path, capsys):
  """pip mocked on a Colab-like runtime of each kind: JAX at the project's
  pin with the kind's plugin, TensorFlow raised to the floor (the full
  `tensorflow` Colab has, not -cpu beside it), torch and numpy kept; the
  check fails before and passes after."""
  cell = _install_cell()
  installed = dict(COLAB)
  calls, run, version = _fake_pip(installed)
  monkeypatch.chdir(tmp_path)
  with pytest.raises(RuntimeError) as e:
    cell['check_versions'](kind, version=version)
  assert 'jax 0.7.2 / jaxlib 0.7.2 (needs 0.10.2)' in str(e.value)
  assert 'tensorflow 2.20.0 (needs >= 2.21.0)' in str(e.value)
  assert cell['JAX_FOR'][kind] in str(e.value)
  cell['install_alexnet_jax'](
      'https://example.org/a',
      kind,
      run=run,
      version=version,
      requires=importlib.metadata.requires,  # the package's real requirements
  )
  first, second = calls
  assert first[-2:] == [
      '--no-deps',
      'alexnet_jax[demo] @ git+https://example.org/a',
  ]
  wanted = {
      'cpu': 'jax==0.10.2',
      'gpu': 'jax[cuda12]==0.10.2',
      'tpu': 'jax[tpu]==0.10.2',
  }[kind]
  args = second[second.index('constraints.txt') + 1 :]
  assert args[:2] == [wanted, 'tensorflow>=2.21.0']
  names = [re.split(r'[<>=\[ ]', a)[0].lower() for a in args]
  assert names.count('jax') == 1 and 'tensorflow-cpu' not in names
  assert 'jaxlib' not in names and 'onednn-cpu-gomp' not in names
  assert {'flax', 'matplotlib', 'ipykernel'} <= set(names)
  pins = (tmp_path / 'constraints.txt').read_text().split()
  assert pins == ['torch==2.11.0', 'torchvision==0.26.0', 'numpy==2.0.2']
  installed['jaxlib'] = '0.10.2'  # pip installs it with jax
  cell['check_versions'](kind, version=version)
  assert f'alexnet_jax on a {kind} runtime: jax 0.10.2, tensorflow 2.21.0' in (
      capsys.readouterr().out
  )


def test_install_cell_tells_the_runtime_kind():
  kind = _install_cell()['runtime_kind']
  none = lambda _: None
  no = lambda _: False
  assert kind({}, none, no) == 'cpu'
  assert kind({}, lambda name: '/usr/bin/nvidia-smi', no) == 'gpu'
  assert kind({'COLAB_TPU_ADDR': '10.0.0.2:8470'}, none, no) == 'tpu'
  assert kind({}, none, lambda path: path == '/dev/accel0') == 'tpu'


def test_install_cell_pins_are_the_projects():
  cell = _install_cell()
  pins = dict(
      l.split('==')
      for l in (REPO / 'requirements.txt').read_text().splitlines()
      if '==' in l and not l.startswith('#')
  )
  assert cell['JAX'] == pins['jax'] == pins['jaxlib']
  assert cell['TENSORFLOW'] == pins['tensorflow-cpu']


def _stderr_of(code):
  env = {k: v for k, v in os.environ.items() if k != 'TF_CPP_MIN_LOG_LEVEL'}
  return subprocess.run(
      [sys.executable, '-c', code],
      capture_output=True,
      text=True,
      env=env,  # as on Colab: TF_CPP_MIN_LOG_LEVEL not set
      timeout=300,
      check=False,
  ).stderr


def test_no_tensorflow_notices_in_the_outputs():
  """The notebook quietens TensorFlow (console.setup) at the top of its
  first import cell, before anything imports it: `import tensorflow` alone
  writes two start-up notices to stderr (a Colab cell's output), after the
  cell's set-up lines none."""
  cells = _notebook().cells
  first = next(
      i for i, c in enumerate(cells) if 'from alexnet_jax.' in c.source
  )
  setup, rest = cells[first].source.split('\n\n', 1)
  assert 'console.setup()' in setup and 'from alexnet_jax.' in rest
  loud = _stderr_of('import tensorflow')
  assert len([l for l in loud.splitlines() if console.is_notice(l)]) >= 2, loud
  quiet = _stderr_of(setup + '\nimport tensorflow')
  assert not [l for l in quiet.splitlines() if console.is_notice(l)], quiet


def test_download_is_checked_against_its_sha1(tmp_path):
  namespace = {'pathlib': __import__('pathlib')}
  exec(_cell('def fetch_checked('), namespace)  # pylint: disable=exec-used
  fetch = namespace['fetch_checked']
  source = tmp_path / 'published.caffemodel'
  source.write_bytes(b'weights' * 1000)
  sha1 = hashlib.sha1(source.read_bytes()).hexdigest()
  dest = tmp_path / 'got.caffemodel'
  assert fetch(source.as_uri(), dest, sha1) == dest
  assert dest.read_bytes() == source.read_bytes()
  # A corrupt download is refused and removed; a good local copy is reused.
  dest.unlink()
  source.write_bytes(b'tampered' * 1000)
  with pytest.raises(ValueError, match=f'expected the published {sha1}'):
    fetch(source.as_uri(), dest, sha1)
  assert not dest.exists() and not list(tmp_path.glob('*.part'))
  dest.write_bytes(b'weights' * 1000)
  assert fetch((tmp_path / 'absent').as_uri(), dest, sha1) == dest


def test_trained_model_figures(tiny_export, tmp_path):
  from experiments import trained_model_figures

  export, variables = tiny_export
  _photos(tmp_path / 'photos')
  out = tmp_path / 'figs'
  trained_model_figures.main(
      [
          f'--checkpoint={export}',
          f'--gallery={tmp_path / "photos"}',
          '--gallery_size=9',
          '--queries=3',
          '--neighbours=2',
          f'--out={out}',
      ]
  )
  result = __import__('json').loads((out / 'figures.json').read_text())
  np.testing.assert_allclose(
      result['tower_colour_share'],
      visualize.tower_colour_specificity(variables),
      rtol=1e-6,
  )
  assert result['gallery_size'] == 9 and result['classes'] == 3
  assert result['same_class_by_chance'] == pytest.approx(1 / 3)
  for name in ('figure3_kernels.png', 'figure4_neighbours.png', 'figures.md'):
    assert (out / name).stat().st_size > 500
