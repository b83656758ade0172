"""Device parallelism on 4 simulated CPU devices (tests/conftest.py).

The reference for every parallel mode is the same model on one device: the
model-parallel forward and gradients, and a few SGD steps in every mode,
must reproduce it. The compiled train step's collectives are checked against
a list written here with the reason for each, so an extra one fails.
"""

import collections
import functools
import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import parallel
from alexnet_jax.core.config_checks import ConfigError
from alexnet_jax.configs import paper

BATCH = 8
CLASSES = 10
# 99x99 with Caffe's unpadded conv1: 23 -> pool 11 -> 11 -> pool 5 -> 5 ->
# pool 2, so fc6 reads a 2x2 map and the flatten order across towers counts.
SIZE = 99
SCALE = 1 / 16   # widths 6, 16, 24, 24, 16, 256, 256 (half per tower)

MODES = {        # name: (mesh.data, mesh.model, data_parallel)
    'single': (1, 1, 'jit'),
    'model': (1, 2, 'jit'),
    'jit': (2, 1, 'jit'),
    'pmap': (2, 1, 'pmap'),
    'hybrid': (2, 2, 'jit'),
}


def _config(mode='single', *, classes=CLASSES, dropout=0.5):
  c = paper.get_config()
  c.model.width_scale = SCALE
  c.model.num_classes = classes
  c.model.conv1_padding = 'caffe'
  c.model.dropout = dropout
  c.data.image_size = SIZE
  c.optim.batch_size = BATCH
  data, model, dp = MODES[mode]
  c.parallel.mesh.data = data
  c.parallel.mesh.model = model
  c.parallel.data_parallel = dp
  return c


def _batch(seed, size=SIZE, classes=CLASSES):
  rng = np.random.default_rng(seed)
  return dict(image=rng.normal(size=(BATCH, size, size, 3)).astype(np.float32),
              label=rng.integers(0, classes, BATCH).astype(np.int32))


def _close(a, b, **kw):
  kw = dict(rtol=1e-5, atol=1e-6) | kw
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), **kw), a, b)


def _close_grads(a, b):
  """Gradients equal up to float32 rounding, relative to each tensor's scale.

  Entries that cancel to about zero carry rounding noise of the tensor's
  magnitude (ops.conv2d sums kernel gradients image by image, in another
  order than XLA), so the absolute tolerance scales with the tensor.
  """
  jax.tree.map(lambda x, y: np.testing.assert_allclose(
      np.asarray(x), np.asarray(y), rtol=1e-4,
      atol=1e-5 * np.abs(np.asarray(y)).max()), a, b)


# ------------------------------------------------------- start-up errors --


@pytest.mark.parametrize('change, message', [
    (dict(data=3, model=1), 'asks for data=3 x model=1 = 3'),  # fits 4, fine
    (dict(data=4, model=2), 'only 4 are present'),
    (dict(data=-1, model=3), 'model axis is 1'),
    (dict(data=-1, batch=6), 'batch_size=6 is not divisible by the data axis'),
    (dict(data=1, model=2, dp='pmap'), 'pmap cannot split the towers'),
    (dict(data=1, model=2, towers=1), 'towers=2'),
    (dict(data=1, model=2, across=True), 'across_towers=True'),
])
def test_impossible_configs_fail_at_start_up(change, message):
  c = _config()
  c.parallel.mesh.data = change['data']
  c.parallel.mesh.model = change.get('model', 1)
  c.parallel.data_parallel = change.get('dp', 'jit')
  c.optim.batch_size = change.get('batch', 12)
  c.model.towers = change.get('towers', 2)
  c.model.lrn.across_towers = change.get('across', False)
  m = model_lib.from_config(c.model)
  if change == dict(data=3, model=1):
    assert parallel.Parallel(c, m).mesh.shape == {'data': 3, 'model': 1}
    return
  with pytest.raises(ConfigError, match=re.escape(message)):
    parallel.Parallel(c, m)


def test_data_minus_one_fills_the_devices():
  c = _config()
  c.parallel.mesh.data = -1
  c.parallel.mesh.model = 2
  par = parallel.Parallel(c, model_lib.from_config(c.model))
  assert par.mesh.shape == {'data': 2, 'model': 2}
  assert par.mode == 'hybrid'
  # Towers of one replica on neighbouring devices: [data, model] layout.
  assert [[d.id for d in row] for row in par.mesh.devices] == [[0, 1], [2, 3]]


def test_setup_devices_after_start_keeps_enough_devices_and_refuses_more():
  jax.devices()  # the backend is up with conftest's 4 devices
  c = _config()
  c.parallel.cpu_devices = 4
  parallel.setup_devices(c)
  c.parallel.cpu_devices = 8
  with pytest.raises(ConfigError, match='cpu_devices=8 must be set before'):
    parallel.setup_devices(c)


def test_multihost_arguments_from_config_and_environment(monkeypatch):
  p = _config().parallel
  assert parallel._multihost_args(p) == (None, 1, 0)
  monkeypatch.setenv('JAX_COORDINATOR_ADDRESS', '10.0.0.1:1234')
  monkeypatch.setenv('JAX_NUM_PROCESSES', '4')
  monkeypatch.setenv('JAX_PROCESS_ID', '3')
  assert parallel._multihost_args(p) == ('10.0.0.1:1234', 4, 3)
  p.coordinator_address, p.num_processes, p.process_id = 'h:1', 2, 1
  assert parallel._multihost_args(p) == ('h:1', 2, 1)
  monkeypatch.delenv('JAX_COORDINATOR_ADDRESS')
  p.coordinator_address = ''
  with pytest.raises(ConfigError, match='needs config.parallel.coordinator'):
    parallel._multihost_args(p)
  p.coordinator_address = 'nohostport'
  with pytest.raises(ConfigError, match='HOST:PORT'):
    parallel._multihost_args(p)
  p.coordinator_address = 'auto'
  assert parallel._multihost_args(p) == ('auto', None, None)


# --------------------------------------------- model-parallel forward -----


@functools.cache
def _variables(classes=CLASSES, size=SIZE, seed=0):
  """NumPy variables of the tiny model, shaped by jax.eval_shape.

  He-scaled so gradients reach every layer (the paper's std 0.01 leaves the
  early layers' gradients near zero in a tiny net), and made without
  compiling JAX's random-number kernels, which is slow on XLA:CPU.
  """
  m = model_lib.from_config(_config(classes=classes).model)
  shapes = jax.eval_shape(lambda: model_lib.init(m, jax.random.PRNGKey(0),
                                                 size))
  rng = np.random.default_rng(seed)

  def make(path, x):
    if path[-1].key == 'bias':
      return (0.1 * rng.normal(size=x.shape)).astype(np.float32)
    fan_in = np.prod(x.shape[1:-1]) if x.ndim > 2 else x.shape[0]
    return (rng.normal(size=x.shape) * np.sqrt(2 / fan_in)).astype(np.float32)
  return jax.tree_util.tree_map_with_path(make, shapes)


@pytest.fixture(scope='module')
def tiny():
  """A tiny two-tower model, its variables and a batch."""
  return model_lib.from_config(_config().model), _variables(), _batch(1)


DROPOUT_SEED = 7  # (no device work at import: multihost_worker imports us)


def _loss_and_logits(apply, variables, images, labels, *, train):
  logits = apply(variables, images, train=train,
                 rngs={'dropout': jax.random.PRNGKey(DROPOUT_SEED)})
  ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  return ce.mean(), logits


@functools.cache
def _reference_grads(train):
  """Gradients and logits of the one-device model on the tiny batch."""
  m, batch = model_lib.from_config(_config().model), _batch(1)
  grad = jax.grad(functools.partial(_loss_and_logits, m.apply, train=train),
                  has_aux=True)
  return jax.jit(grad)(_variables(), batch['image'], batch['label'])


@pytest.mark.parametrize('mode, train', [
    ('model', True), ('model', False), ('hybrid', False), ('jit', False)])
def test_parallel_forward_and_grads_equal_single_device(tiny, mode, train):
  m, variables, batch = tiny
  ref_g, ref_logits = _reference_grads(train)
  par = parallel.Parallel(_config(mode), m)
  placed = par.place_state(variables)
  images = par.shard_batch(batch)
  grad = jax.grad(functools.partial(_loss_and_logits, par.apply, train=train),
                  has_aux=True)
  g, logits = jax.jit(grad)(placed, images['image'], images['label'])
  _close(logits, ref_logits)
  _close_grads(par.to_host(g), ref_g)
  # Gradients come out laid out like the parameters: each device its tower.
  assert jax.tree.map(lambda x: x.sharding.spec, g) == jax.tree.map(
      lambda x: x.sharding.spec, placed)


def test_dropout_masks_match_single_device_in_model_parallel(tiny):
  """Train-mode logits differ from eval-mode (masks applied), yet agree."""
  _, train_logits = _reference_grads(True)
  _, eval_logits = _reference_grads(False)
  assert np.abs(train_logits - eval_logits).max() > 1e-2
  # test_parallel_forward_and_grads_equal_single_device[model-True] then
  # shows the two-device forward draws the very same masks.


def test_odd_class_count_replicates_fc8():
  c = _config('model', classes=9)
  m = model_lib.from_config(c.model)
  variables = _variables(classes=9)
  batch = _batch(2, classes=9)
  par = parallel.Parallel(c, m)
  placed = par.place_state(variables)
  fc8 = placed['params']['fc8']
  assert fc8['kernel'].sharding.is_fully_replicated
  assert placed['params']['fc7']['kernel'].sharding.spec == jax.P('model')
  grad = lambda apply, v: jax.grad(lambda v: apply(
      v, batch['image'], train=False).sum())(v)
  _close_grads(
      par.to_host(jax.jit(functools.partial(grad, par.apply))(placed)),
      jax.jit(functools.partial(grad, m.apply))(variables))


# ----------------------------------------------- SGD steps in each mode ---


def sgd_step(state, batch, *, apply_fn, tx, axis_name=None):
  """SGD with momentum on mean cross-entropy; pmap passes axis_name."""
  def loss_fn(params):
    logits = apply_fn({'params': params}, batch['image'], train=True,
                      rngs={'dropout': jax.random.fold_in(state['rng'],
                                                          state['step'])})
    return optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['label']).mean()

  loss, grads = jax.value_and_grad(loss_fn)(state['params'])
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
    loss = jax.lax.pmean(loss, axis_name)
  updates, opt_state = tx.update(grads, state['opt_state'], state['params'])
  return dict(state, step=state['step'] + 1, opt_state=opt_state,
              params=optax.apply_updates(state['params'], updates)), loss


TX = optax.sgd(0.05, momentum=0.9)
STEP_SIZE = 67  # smaller images for the step tests (fc6 reads 1x1)


@pytest.fixture(scope='module')
def runners():
  """{mode: (Parallel, compiled step)} for a dropout-free tiny model.

  Dropout is off here: with several data shards each draws its own mask,
  which cannot equal the one-device mask of the whole batch.
  """
  out = {}
  for mode in MODES:
    c = _config(mode, dropout=0.0)
    m = model_lib.from_config(c.model)
    par = parallel.Parallel(c, m)
    out[mode] = par, par.jit_step(functools.partial(
        sgd_step, apply_fn=par.apply, tx=TX))
  return out


def _initial_state():
  params = _variables(size=STEP_SIZE)['params']
  return jax.tree.map(np.asarray, dict(
      step=np.zeros((), np.int32), rng=jax.random.PRNGKey(5), params=params,
      opt_state=TX.init(params)))


def test_sgd_steps_end_with_the_same_params_in_every_mode(runners):
  batches = [_batch(10 + i, size=STEP_SIZE) for i in range(3)]
  finals, losses = {}, {}
  for mode, (par, step) in runners.items():
    state = par.place_state(_initial_state())
    losses[mode] = []
    for b in batches:
      state, loss = step(state, par.shard_batch(b))
      losses[mode].append(float(loss))
    finals[mode] = par.to_host(state)
    # The state keeps its layout across steps (no silent resharding).
    if par.model_size == 2:
      kernel = state['opt_state'][0].trace['conv2']['kernel']
      assert kernel.sharding.spec == jax.P('model')
  ref = finals.pop('single')
  moved = jax.tree.map(lambda a, b: np.abs(a - b).max(), ref['params'],
                       _initial_state()['params'])
  assert min(jax.tree.leaves(moved)) > 1e-4
  for mode, final in finals.items():
    _close(final['params'], ref['params'], atol=1e-6, rtol=1e-4)
    _close(final['opt_state'], ref['opt_state'], atol=1e-6, rtol=1e-4)
    _close(losses[mode], losses['single'], rtol=1e-5)
    assert int(final['step']) == 3


# ------------------------------------------- the compiled collectives -----

_COLLECTIVE = re.compile(
    r'= (?P<shape>.*?) (?P<kind>all-gather|all-reduce|reduce-scatter|'
    r'collective-permute|all-to-all|collective-broadcast)(?:-start)?\(')


def _axis_of(line, par):
  """The mesh axis a collective's replica groups span ('data'/'model')."""
  m = re.search(r'replica_groups=\{(\{[\d,]+\}(?:,\{[\d,]+\})*)\}', line)
  if not m:
    # XLA's compact form names the partitioner's own axes; the modes that
    # produce it (jit data parallel) have only the data axis.
    assert par.model_size == 1, line
    return 'data'
  groups = [tuple(map(int, g.split(','))) for g in
            re.findall(r'\{([\d,]+)\}', m.group(1))]
  pos = {d.id: idx for idx, d in np.ndenumerate(par.mesh.devices)}
  if par.data_parallel == 'pmap':
    return 'data'
  spans = set()
  for g in groups:
    coords = np.array([pos[i] for i in g])
    spans |= {('data', 'model')[a] for a in range(2)
              if len(set(coords[:, a])) > 1}
  return '+'.join(sorted(spans)) or 'none'   # 'none': groups of one device


def _tensors(shape):
  """Shapes of a collective's results ('(f32[..], f32[..])' or 'f32[..]')."""
  return re.findall(r'[a-z]+\d*\[([\d,]*)\]', shape)


def collectives(par, step, state, batch):
  """[(kind, axis, result shape)] of the compiled step, in HLO order."""
  hlo = step.lower(state, batch).compile().as_text()
  found = []
  for line in hlo.splitlines():
    m = _COLLECTIVE.search(line)
    if m:
      for dims in _tensors(m['shape']):
        shape = tuple(int(d) for d in dims.split(',') if d)
        found.append((m['kind'], _axis_of(line, par), shape))
  return found


def _elements(shapes):
  return sum(int(np.prod(s)) for s in shapes)


# Per-tower widths of the tiny model (SCALE = 1/16): conv2 8, conv5 8,
# fc6/fc7 128, fc8 5 of 10 classes. 67x67 input: conv2 pooled 3x3, conv5
# pooled 1x1.
MODEL_GATHERS = [
    # (result shape per device for B examples on it, reason)
    (lambda b: (b, 3, 3, 16), 'conv3 reads both towers\' conv2 maps'),
    (lambda b: (b, 1, 1, 16), 'fc6 reads both towers\' conv5 maps'),
    (lambda b: (b, 256), 'fc7 reads both towers\' fc6 units'),
    (lambda b: (b, 256), 'fc8 reads both towers\' fc7 units'),
    (lambda b: (b, 10), 'the logits: each tower computed 5 of 10 classes'),
]
MODEL_SCATTERS = [
    # The backward of the first four gathers: each tower receives the sum
    # of both towers' gradients for its own channels. The logits' gather
    # needs none: its gradient is equal on both towers (invariant gather),
    # so each takes its slice locally.
    (lambda b: (b, 128), 'd fc7 units, from both towers\' fc8 halves'),
    (lambda b: (b, 128), 'd fc6 units, from both towers\' fc7 halves'),
    (lambda b: (b, 1, 1, 8), 'd conv5 maps, from both towers\' fc6 halves'),
    (lambda b: (b, 3, 3, 8), 'd conv2 maps, from both towers\' conv3 halves'),
]


def test_train_step_collectives_are_exactly_the_expected_ones(runners):
  state0 = _initial_state()
  params = state0['params']
  n_params = sum(x.size for x in jax.tree.leaves(params))
  n_local = sum(int(np.prod(
      jax.sharding.NamedSharding(runners['model'][0].mesh, spec)
      .shard_shape(x.shape))) for x, spec in zip(
          jax.tree.leaves(params),
          jax.tree.leaves(runners['model'][0].specs(params))))
  assert n_local * 2 == n_params          # fc8's 10 classes split too

  expected = {
      'single': [],
      'model': (
          [('all-gather', 'model', f(BATCH)) for f, _ in MODEL_GATHERS]
          + [('reduce-scatter', 'model', f(BATCH)) for f, _ in MODEL_SCATTERS]
          # No all-reduce: both towers see the whole batch, and every device
          # computes the loss from the same gathered logits.
      ),
      'hybrid': (
          [('all-gather', 'model', f(BATCH // 2)) for f, _ in MODEL_GATHERS]
          + [('reduce-scatter', 'model', f(BATCH // 2))
             for f, _ in MODEL_SCATTERS]
          # One all-reduce over data: the gradients of this device's tower
          # parameters and fc8 half (n_local numbers), summed over the two
          # data shards, and the loss's partial sums (1 number).
          + [('all-reduce', 'data', n_local + 1)]
      ),
      # Data parallel: the gradients of every parameter and the loss,
      # summed over the data axis; nothing else (in particular no gathered
      # batch, which XLA's partitioner would need to split ops.conv2d's
      # per-image scan: parallel.py runs the forward per device instead).
      'jit': [('all-reduce', 'data', n_params + 1)],
      'pmap': [('all-reduce', 'data', n_params + 1)],
  }
  batch = _batch(0, size=STEP_SIZE)
  for mode, (par, step) in runners.items():
    found = collectives(par, step, par.place_state(state0),
                        par.shard_batch(batch))
    reduces = [(k, a, s) for k, a, s in found if k == 'all-reduce']
    others = sorted((k, a, s) for k, a, s in found if k != 'all-reduce')
    want_reduces = [e for e in expected[mode] if e[0] == 'all-reduce']
    want_others = sorted(e for e in expected[mode] if e[0] != 'all-reduce')
    assert others == want_others, mode
    # XLA may combine or split the all-reduce's tensors: compare what is
    # reduced (axis and element count), not how it is packed.
    got = collections.Counter()
    for k, a, s in reduces:
      got[(k, a)] += int(np.prod(s))
    assert got == collections.Counter(
        {(k, a): n for k, a, n in want_reduces}), mode


# ------------------------------------------------- memory and restore -----


def _param_counts(classes):
  """Per-device parameter counts of the real-size model (no arrays made)."""
  c = paper.get_config()
  c.model.num_classes = classes
  c.parallel.mesh.model = 2
  c.parallel.mesh.data = 1
  m = model_lib.from_config(c.model)
  shapes = jax.eval_shape(lambda: model_lib.init(
      m, jax.random.PRNGKey(0), 224))['params']
  par = parallel.Parallel(c, m)
  local = sum(int(np.prod(sh.shard_shape(x.shape))) for x, sh in zip(
      jax.tree.leaves(shapes), jax.tree.leaves(par.shardings(shapes))))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  return local, total


def _paper_param_count(classes):
  """The paper's layer table, counted by hand (two towers)."""
  conv = lambda k, cin, cout, towers: towers * (k * k * cin * cout + cout)
  return (conv(11, 3, 48, 2) + conv(5, 48, 128, 2) + conv(3, 256, 192, 2)
          + conv(3, 192, 192, 2) + conv(3, 192, 128, 2)
          + 2 * (9216 * 2048 + 2048) + 2 * (4096 * 2048 + 2048)
          + 4096 * classes + classes)


def test_each_device_holds_about_half_the_real_model():
  local, total = _param_counts(1000)
  assert total == _paper_param_count(1000) == 60_965_224
  assert local == total // 2 == 30_482_612      # about 30.5M, fc8 split
  fc8 = 4096 * 999 + 999
  local, total = _param_counts(999)             # odd: fc8 replicated
  assert local == (total - fc8) // 2 + fc8 == 32_527_015  # about 32.5M


def test_device_bytes_of_placed_state_are_half(tiny):
  _, variables, _ = tiny
  par = parallel.Parallel(_config('model'), tiny[0])
  placed = par.place_state(variables)
  per_device = parallel.param_bytes_per_device(placed)
  whole = sum(x.nbytes for x in jax.tree.leaves(variables))
  assert sorted(per_device.values()) == [whole // 2, whole // 2]


def test_state_written_under_one_mesh_restores_under_another(runners):
  state = _initial_state()
  batch = _batch(3, size=STEP_SIZE)
  par, step = runners['model']
  trained, _ = step(par.place_state(state), par.shard_batch(batch))
  host = par.to_host(trained)            # what a checkpoint stores
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
  for mode in ('single', 'hybrid', 'pmap'):
    other, other_step = runners[mode]
    placed = other.place_state(host)
    _close(other.to_host(placed), host, rtol=0, atol=0)
    # ...and training continues there exactly as it would have here.
    mine, _ = step(par.place_state(host), par.shard_batch(batch))
    theirs, _ = other_step(placed, other.shard_batch(batch))
    _close(other.to_host(theirs)['params'], par.to_host(mine)['params'],
           atol=1e-6, rtol=1e-4)


def test_pmap_metrics_come_back_unstacked(runners):
  par, step = runners['pmap']
  state = par.place_state(_initial_state())
  assert state['params']['fc8']['kernel'].shape[0] == 2   # one per device
  state, loss = step(state, par.shard_batch(_batch(0, size=STEP_SIZE)))
  assert np.shape(loss) == ()
  assert par.to_host(state)['params']['fc8']['kernel'].shape == (256, 10)
