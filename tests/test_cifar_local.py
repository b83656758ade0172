"""model.CifarLocal (cuda-convnet's conv-local CIFAR-10 nets) vs PyTorch.

The PyTorch twin is written from the layer files: conv + ReLU +
nn.LocalResponseNorm (alpha/n, k) + ceil-mode max-pool, twice; two locally
connected layers as unfold + a per-position matmul; a linear layer.
"""

import jax
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from alexnet_jax.analysis import features
from alexnet_jax.configs import paper
from alexnet_jax.core import config_checks
from alexnet_jax.core import model as model_lib


def _config(lrn=True):
  c = paper.get_config()
  c.model.variant = 'cifar_local'
  c.model.towers = 1
  c.model.num_classes = 10
  c.model.width_scale = 0.25
  c.model.lrn.enabled = lrn
  c.model.lrn.k, c.model.lrn.alpha, c.model.lrn.alpha_over_n = 1.0, 1e-3, True
  return c


def _t(a):
  return torch.from_numpy(np.array(a))


def _torch_forward(p, x, lrn):
  h = _t(x).permute(0, 3, 1, 2)
  for name in ('conv1', 'conv2'):
    w = _t(p[name]['kernel']).permute(3, 2, 0, 1)
    h = F.relu(F.conv2d(h, w, _t(p[name]['bias']), padding=2))
    if lrn:
      h = F.local_response_norm(h, 5, alpha=1e-3, beta=0.75, k=1.0)
    h = F.max_pool2d(h, 3, 2, ceil_mode=True)
  for name in ('local3', 'local4'):
    k = _t(p[name]['kernel'])  # [oh, ow, 3*3*cin, cout]
    oh, ow, _, cout = k.shape
    # Patches [B, oh*ow, cin*3*3] in (c, y, x) order, as Flax's kernel.
    cols = F.unfold(h, 3, padding=1).permute(0, 2, 1)
    out = torch.einsum('blk,lkf->blf', cols, k.reshape(oh * ow, -1, cout))
    out = out + _t(p[name]['bias']).reshape(1, oh * ow, cout)
    h = F.relu(out).reshape(h.shape[0], oh, ow, cout).permute(0, 3, 1, 2)
  flat = h.permute(0, 2, 3, 1).reshape(h.shape[0], -1)
  return (flat @ _t(p['fc']['kernel']) + _t(p['fc']['bias'])).numpy()


@pytest.mark.parametrize('lrn', [True, False])
def test_matches_pytorch_twin(lrn):
  config = _config(lrn)
  config_checks.validate(config)
  module = model_lib.from_config(config.model)
  variables = model_lib.init(module, jax.random.key(0, impl='rbg'), 24)
  # Random (not the tiny initial) weights and biases so every layer matters.
  rs = np.random.RandomState(0)
  leaves, tree = jax.tree.flatten(variables)
  variables = jax.tree.unflatten(
      tree, [rs.randn(*l.shape).astype(np.float32) * 0.2 for l in leaves]
  )
  p = variables['params']
  assert p['local3']['kernel'].shape == (6, 6, 9 * 16, 8)
  x = rs.randn(2, 24, 24, 3).astype(np.float32) * 3
  got = np.asarray(module.apply(variables, x))
  np.testing.assert_allclose(
      got, _torch_forward(p, x, lrn), rtol=2e-4, atol=2e-4
  )
  if lrn:  # features know this net's layers; local4 after its ReLU
    local4 = features.extract(module, variables, x, layer='local4')
    assert local4.shape == (2, 6, 6, 8) and (local4 >= 0).all()
    np.testing.assert_allclose(
        local4.reshape(2, -1) @ np.asarray(p['fc']['kernel'])
        + np.asarray(p['fc']['bias']),
        got,
        rtol=2e-4,
        atol=2e-3,
    )


def test_towers_refused():
  config = _config()
  config.model.towers = 2
  with pytest.raises(
      config_checks.ConfigError, match='variant=cifar_local has no towers'
  ):
    config_checks.validate(config)
