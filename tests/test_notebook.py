"""experiments/demo.ipynb runs end to end (nbclient) on a tiny checkpoint.

The checkpoint is a random two-tower paper-variant model at 1/16 width,
exported with checkpoint.save_model; the photos are generated JPEGs. The
parameters cell is overridden through ALEXNET_DEMO_* environment variables,
which the notebook's kernel inherits.
"""

import jax
import nbclient
import nbformat
import numpy as np
import pytest
from PIL import Image

from alexnet_jax.core import checkpoint
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import visualize
from alexnet_jax.configs import paper
from conftest import REPO

CLASSES = ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog',
           'horse', 'ship', 'truck')


@pytest.fixture
def tiny_export(tmp_path):
  config = paper.get_config()
  config.model.num_classes = len(CLASSES)
  config.model.width_scale = 1 / 16
  config.data.image_size = 67        # the smallest the paper geometry takes
  config.data.resize_size = 76
  module = model_lib.from_config(config.model)
  # 'rbg' keys: threefry initialisers take ~10 s to compile on XLA:CPU here.
  variables = model_lib.init(module, jax.random.key(0, impl='rbg'), 67)
  path = checkpoint.save_model(
      tmp_path / 'export', config=config, variables=variables,
      preprocessing=input_pipeline.preprocessing_from_config(config),
      class_names=CLASSES)
  return path, variables


def _photos(root):
  rs = np.random.RandomState(0)
  for i, name in enumerate(('cat', 'dog', 'ship')):
    (root / name).mkdir(parents=True)
    for j in range(3):
      h, w = 50 + 20 * j, 90 - 10 * i           # varied, non-square sizes
      Image.fromarray(rs.randint(0, 256, (h, w, 3)).astype(np.uint8)).save(
          root / name / f'{name}_{j}.jpg')


def test_demo_notebook_runs(tiny_export, tmp_path, monkeypatch):
  export, variables = tiny_export
  # PHOTOS and GALLERY are left to their defaults: the data root's
  # imagenet-samples and (a CIFAR-10 model) cifar10/test.
  data = tmp_path / 'data'
  _photos(data / 'imagenet-samples' / 'val')
  _photos(data / 'cifar10' / 'test')
  for name, value in dict(CHECKPOINT=export, DATA_ROOT=data,
                          PHOTO_FILTER='cat,ship', NUM_PHOTOS=4,
                          GALLERY_SIZE=9, NUM_QUERIES=2,
                          NEIGHBOURS=3, LAYER='fc7').items():
    monkeypatch.setenv(f'ALEXNET_DEMO_{name}', str(value))
  for name in ('PHOTOS', 'GALLERY'):
    monkeypatch.delenv(f'ALEXNET_DEMO_{name}', raising=False)
  nb = nbformat.read(REPO / 'experiments' / 'demo.ipynb', as_version=4)
  # Outputs are not committed: the notebook is clean for Colab users.
  assert not any(c.get('outputs') for c in nb.cells if c.cell_type == 'code')
  assert 'parameters' in nb.cells[2].metadata.get('tags', [])
  nbclient.NotebookClient(nb, timeout=300, kernel_name='python3',
                          resources={'metadata': {'path': str(tmp_path)}}
                          ).execute()
  text = '\n'.join(o.get('text', '') for c in nb.cells
                   if c.cell_type == 'code' for o in c.outputs)
  assert f'{export}: AlexNet variant=paper towers=2' in text
  # 4 photos, filtered to the cat and ship folders, each with a top-5 line.
  lines = [l for l in text.splitlines() if l.startswith(('cat_', 'ship_'))]
  assert len(lines) == 4 and all(l.count(' | ') == 4 for l in lines)
  spec = visualize.tower_colour_specificity(variables)
  for t in range(2):
    assert f'tower {t}: mean colour share {spec[t]:.3f}' in text
  width = model_lib.widths_for('paper', 2, 1 / 16)[-1]
  assert f'9 gallery images, fc7 features of shape ({width},)' in text
  images = [o for c in nb.cells if c.cell_type == 'code' for o in c.outputs
            if 'image/png' in o.get('data', {})]
  assert len(images) == 3     # photos, kernels, neighbours


def test_trained_model_figures(tiny_export, tmp_path):
  from experiments import trained_model_figures
  export, variables = tiny_export
  _photos(tmp_path / 'photos')
  out = tmp_path / 'figs'
  trained_model_figures.main([
      f'--checkpoint={export}', f'--gallery={tmp_path / "photos"}',
      '--gallery_size=9', '--queries=3', '--neighbours=2', f'--out={out}'])
  result = __import__('json').loads((out / 'figures.json').read_text())
  np.testing.assert_allclose(result['tower_colour_share'],
                             visualize.tower_colour_specificity(variables),
                             rtol=1e-6)
  assert result['gallery_size'] == 9 and result['classes'] == 3
  assert result['same_class_by_chance'] == pytest.approx(1 / 3)
  for name in ('figure3_kernels.png', 'figure4_neighbours.png', 'figures.md'):
    assert (out / name).stat().st_size > 500
