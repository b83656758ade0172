"""The optimiser against the paper's update rule written out in NumPy."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import optim


def _params(rng):
  return {
      'conv1': {
          'kernel': rng.normal(size=(3, 3, 2, 4)).astype(np.float32),
          'bias': rng.normal(size=(4,)).astype(np.float32),
      },
      'fc8': {
          'kernel': rng.normal(size=(5, 3)).astype(np.float32),
          'bias': rng.normal(size=(3,)).astype(np.float32),
      },
  }


def _numpy_paper_rule(
    params, grads_seq, lrs, *, decay_biases, bias_lr_mult, momentum=0.9, wd=5e-4
):
  """v <- m v - wd*lr*w - lr*g ; w <- w + v  (Caffe: per-group lr/decay)."""
  w = jax.tree.map(np.array, params)
  v = jax.tree.map(np.zeros_like, params)
  for grads, lr in zip(grads_seq, lrs):
    for layer in w:
      for name in w[layer]:
        bias = name == 'bias'
        mult = bias_lr_mult if bias else 1.0
        decay = wd if (decay_biases or not bias) else 0.0
        g = grads[layer][name]
        v[layer][name] = (
            momentum * v[layer][name]
            - mult * lr * decay * w[layer][name]
            - mult * lr * g
        )
        w[layer][name] = w[layer][name] + v[layer][name]
  return w


def _run_optax(params, grads_seq, lrs, optim_config):
  tx = optim.make_optimizer(optim_config)
  state = tx.init(params)
  p = jax.tree.map(jnp.asarray, params)

  @jax.jit
  def step(p, state, g, lr):
    state = optim.with_learning_rate(state, lr)
    updates, state = tx.update(g, state, p)
    return optax.apply_updates(p, updates), state

  for g, lr in zip(grads_seq, lrs):
    p, state = step(p, state, g, lr)
  return p, state


@pytest.mark.parametrize(
    'decay_biases,bias_lr_mult', [(True, 1.0), (False, 2.0)]
)
def test_matches_numpy_rule_across_lr_drops(decay_biases, bias_lr_mult):
  rng = np.random.default_rng(0)
  params = _params(rng)
  grads_seq = [_params(rng) for _ in range(7)]
  lrs = [0.1, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001]  # two drops
  o = paper.get_config().optim
  o.lr, o.decay_biases, o.bias_lr_mult = 0.1, decay_biases, bias_lr_mult
  got, state = _run_optax(params, grads_seq, lrs, o)
  want = _numpy_paper_rule(
      params,
      grads_seq,
      lrs,
      decay_biases=decay_biases,
      bias_lr_mult=bias_lr_mult,
  )
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
      got,
      want,
  )
  assert float(optim.learning_rate(state)) == pytest.approx(0.001)


def test_optax_sgd_with_schedule_is_not_the_paper_rule():
  """The reason for the chain: sgd rescales the momentum at a drop."""
  rng = np.random.default_rng(1)
  params = _params(rng)
  grads_seq = [_params(rng) for _ in range(4)]
  lrs = [0.1, 0.1, 0.01, 0.01]
  sched = optax.piecewise_constant_schedule(0.1, {2: 0.1})
  tx = optax.chain(
      optax.add_decayed_weights(5e-4), optax.sgd(sched, momentum=0.9)
  )
  p, s = params, tx.init(params)
  for g in grads_seq:
    u, s = tx.update(g, s, p)
    p = optax.apply_updates(p, u)
  want = _numpy_paper_rule(
      params,
      grads_seq,
      lrs,
      decay_biases=True,
      bias_lr_mult=1.0,
  )
  diff = max(
      float(np.abs(a - b).max())
      for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(want))
  )
  assert diff > 1e-3


def _plateau_config(**kw):
  c = ml_collections.ConfigDict(
      dict(factor=0.1, patience=1, max_drops=2, min_delta=0.01)
  )
  c.update(kw)
  return c


def test_plateau_drops_after_patience_and_at_most_max_drops():
  cfg = _plateau_config()
  state = optim.plateau_init()
  errors = [
      0.9,
      0.8,
      0.795,
      0.81,  # 2 evals without improvement -> drop 1
      0.7,
      0.71,
      0.70,  # drop 2
      0.7,
      0.7,
      0.7,
      0.7,
  ]  # max_drops reached: no more drops
  drops_at = []
  for i, e in enumerate(errors):
    d = optim.plateau_update(state, e, cfg)
    state = d.state
    if d.dropped:
      drops_at.append(i)
      assert 'drop' in d.message
  assert drops_at == [3, 6]
  assert float(state['scale']) == pytest.approx(0.01)
  assert int(state['drops']) == 2
  assert float(state['best']) == pytest.approx(0.7)


def test_plateau_counts_nan_as_no_improvement():
  state = optim.plateau_init()
  d = optim.plateau_update(state, float('nan'), _plateau_config(patience=0))
  assert d.dropped


def test_step_and_cosine_schedules():
  o = paper.get_config().optim
  o.schedule, o.lr, o.step_epochs = 'step', 1.0, (1, 2)
  s = optim.base_schedule(o, steps_per_epoch=10, total_steps=30)
  assert [float(s(i)) for i in (0, 9, 10, 19, 20, 29)] == pytest.approx(
      [1, 1, 0.1, 0.1, 0.01, 0.01]
  )
  o.schedule, o.warmup_epochs = 'cosine', 1.0
  s = optim.base_schedule(o, steps_per_epoch=10, total_steps=30)
  assert float(s(0)) == 0.0
  assert float(s(5)) == pytest.approx(0.5)
  assert float(s(10)) == pytest.approx(1.0)
  assert float(s(20)) == pytest.approx(0.5, abs=1e-6)
  assert float(s(30)) == pytest.approx(0.0, abs=1e-6)
