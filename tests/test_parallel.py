"""Device parallelism on 4 simulated CPU devices (tests/conftest.py).

The reference for every parallel mode is the same model on one device: the
model-parallel forward and gradients, and a few steps of the trainer's own
step (train.make_train_step, dropout on) in every mode, must reproduce it.
The compiled train step's collectives are checked against a list written
here with the reason for each, so an extra one fails.
"""

import collections
import functools
import re

import jax
import numpy as np
import pytest

from alexnet_jax.configs import paper
from alexnet_jax.core import device_augment
from alexnet_jax.core import input_pipeline
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import parallel
from alexnet_jax.core import preprocess
from alexnet_jax.core import train
from alexnet_jax.core.config_checks import ConfigError
from helpers import tiny_model as tm

# ------------------------------------------------------- start-up errors --


@pytest.mark.parametrize(
    'change, message',
    [
        (
            dict(data=3, model=1),
            'asks for data=3 x model=1 = 3',
        ),  # fits 4, fine
        (dict(data=4, model=2), 'only 4 are present'),
        (
            dict(data=-1, model=3),
            'mesh.model=3 is not accepted; use one of 1, 2',
        ),
        (
            dict(data=-1, batch=6),
            'batch_size=6 is not divisible by the data axis',
        ),
        (dict(data=1, model=2, dp='pmap'), 'pmap cannot split the towers'),
        (dict(data=1, model=2, towers=1), 'towers=2'),
        (dict(data=1, model=2, across=True), 'across_towers=True'),
    ],
)
def test_impossible_configs_fail_at_start_up(change, message):
  c = tm.config()
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
  c = tm.config()
  c.parallel.mesh.data = -1
  c.parallel.mesh.model = 2
  par = parallel.Parallel(c, model_lib.from_config(c.model))
  assert par.mesh.shape == {'data': 2, 'model': 2}
  assert par.mode == 'hybrid'
  # Towers of one replica on neighbouring devices: [data, model] layout.
  assert [[d.id for d in row] for row in par.mesh.devices] == [[0, 1], [2, 3]]


def test_setup_devices_after_start_keeps_enough_devices_and_refuses_more():
  jax.devices()  # the backend is up with conftest's 4 devices
  c = tm.config()
  c.parallel.cpu_devices = 4
  parallel.setup_devices(c)
  c.parallel.cpu_devices = 8
  with pytest.raises(ConfigError, match='cpu_devices=8 must be set before'):
    parallel.setup_devices(c)


def test_multihost_arguments_from_config_and_environment(monkeypatch):
  p = tm.config().parallel
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


@pytest.fixture(scope='module')
def tiny():
  """A tiny two-tower model, its variables and a batch."""
  return model_lib.from_config(tm.config().model), tm.variables(), tm.batch(1)


@functools.cache
def _reference_grads(train):
  """Gradients and logits of the one-device model on the tiny batch."""
  m, batch = model_lib.from_config(tm.config().model), tm.batch(1)
  grad = jax.grad(
      functools.partial(tm.loss_and_logits, m.apply, train=train), has_aux=True
  )
  return jax.jit(grad)(tm.variables(), batch['image'], batch['label'])


@pytest.mark.parametrize(
    'mode, train',
    [('model', True), ('model', False), ('hybrid', False), ('jit', False)],
)
def test_parallel_forward_and_grads_equal_single_device(tiny, mode, train):
  m, variables, batch = tiny
  ref_g, ref_logits = _reference_grads(train)
  par = parallel.Parallel(tm.config(mode), m)
  placed = par.place_state(variables)
  images = par.shard_batch(batch)
  grad = jax.grad(
      functools.partial(tm.loss_and_logits, par.apply, train=train),
      has_aux=True,
  )
  g, logits = jax.jit(grad)(placed, images['image'], images['label'])
  tm.close(logits, ref_logits)
  tm.close_grads(par.to_host(g), ref_g)
  # Gradients come out laid out like the parameters: each device its tower.
  assert jax.tree.map(lambda x: x.sharding.spec, g) == jax.tree.map(
      lambda x: x.sharding.spec, placed
  )


def test_dropout_masks_match_single_device_in_model_parallel(tiny):
  """Train-mode logits differ from eval-mode (masks applied), yet agree."""
  _, train_logits = _reference_grads(True)
  _, eval_logits = _reference_grads(False)
  assert np.abs(train_logits - eval_logits).max() > 1e-2
  # test_parallel_forward_and_grads_equal_single_device[model-True] then
  # shows the two-device forward draws the very same masks.


def test_odd_class_count_replicates_fc8():
  c = tm.config('model', classes=9)
  m = model_lib.from_config(c.model)
  variables = tm.variables(classes=9)
  batch = tm.batch(2, classes=9)
  par = parallel.Parallel(c, m)
  placed = par.place_state(variables)
  fc8 = placed['params']['fc8']
  assert fc8['kernel'].sharding.is_fully_replicated
  assert placed['params']['fc7']['kernel'].sharding.spec == jax.P('model')
  grad = lambda apply, v: jax.grad(
      lambda v: apply(v, batch['image'], train=False).sum()
  )(v)
  tm.close_grads(
      par.to_host(jax.jit(functools.partial(grad, par.apply))(placed)),
      jax.jit(functools.partial(grad, m.apply))(variables),
  )


# -------------------------------------- the trainer's step in each mode ---


@pytest.fixture(scope='module')
def steps():
  """{mode: the trainer's step}, dropout on (rate 0.5)."""
  return {mode: tm.make_step(mode) for mode in tm.MODES}


@functools.cache
def _reference(shards):
  step = tm.make_step('single')
  fn = step if shards == 1 else tm.reference_step(step, shards)
  batches = [tm.batch(10 + i, size=tm.STEP_SIZE) for i in range(3)]
  return batches, tm.run_steps(step, fn, tm.initial_state(step), batches)


@pytest.mark.parametrize('mode', [m for m in tm.MODES if m != 'single'])
def test_trainer_step_in_each_mode_equals_one_device(steps, mode):
  """Three steps from the same state end in the same state and metrics.

  Dropout is on: two towers draw the one-device masks; modes with data
  shards are compared with one device drawing each shard's own masks.
  """
  step = steps[mode]
  assert step.par.mode == mode
  batches, (want, want_metrics) = _reference(tm.DATA_SHARDS[mode])
  init = tm.initial_state(step)
  placed = step.par.place_state(init)
  specs = jax.tree.map(lambda x: x.sharding.spec, placed)
  state = placed
  got_metrics = []
  for b in batches:
    state, m = step(state, step.par.shard_batch(b))
    got_metrics.append(step.par.to_host(m.compute()))
  if mode != 'pmap':  # the state keeps its layout (no silent resharding)
    assert jax.tree.map(lambda x: x.sharding.spec, state) == specs
  got = step.par.to_host(state)
  assert int(got.step) == 3
  tm.close(got.params, want.params, atol=1e-6, rtol=1e-4)
  tm.close(got.opt_state, want.opt_state, atol=1e-6, rtol=1e-4)
  for g, w in zip(got_metrics, want_metrics):
    assert (
        g.keys()
        == w.keys()
        == {
            'loss',
            'top1_error',
            'top5_error',
            'learning_rate',
            'grad_norm',
            'param_norm',
        }
    )
    tm.close(g, w, rtol=1e-5)
  lrs = [float(m['learning_rate']) for m in got_metrics]
  assert lrs[0] == pytest.approx(0.05) and lrs[0] > lrs[1] > lrs[2]
  moved = jax.tree.map(
      lambda a, b: np.abs(a - b).max(), want.params, init.params
  )
  assert min(jax.tree.leaves(moved)) > 1e-4


def test_data_shards_draw_their_own_dropout_masks():
  """The per-shard reference differs from one device's masks, so the
  comparison above tells the two apart."""
  _, (one_device, _) = _reference(1)
  _, (per_shard, _) = _reference(2)
  diff = jax.tree.map(
      lambda a, b: np.abs(a - b).max(), one_device.params, per_shard.params
  )
  assert max(jax.tree.leaves(diff)) > 1e-3


# ------------------------------------------- the compiled collectives -----

_COLLECTIVE = re.compile(
    r'= (?P<shape>.*?) (?P<kind>all-gather|all-reduce|reduce-scatter|'
    r'collective-permute|all-to-all|collective-broadcast)(?:-start)?\('
)


def _replica_groups(line):
  """A collective's replica groups as tuples of device ids.

  XLA prints them either as a list, replica_groups={{0,1},{2,3}}, or in
  the compact mesh form, replica_groups=mesh['axis_0'=2,'axis_1'=2],
  device_ids=([2,2]T(1,0)) {'axis_1'}: the devices (an iota, reshaped and
  transposed as device_ids says) laid out on those axes, grouped along the
  axes in braces.
  """
  m = re.search(r'replica_groups=\{(\{[\d,]+\}(?:,\{[\d,]+\})*)\}', line)
  if m:
    return [
        tuple(map(int, g.split(',')))
        for g in re.findall(r'\{([\d,]+)\}', m.group(1))
    ]
  m = re.search(
      r'replica_groups=mesh\[([^\]]*)\](?:, device_ids=\(\[([\d,]+)'
      r'\](?:T\(([\d,]+)\))?\))? \{([^}]*)\}',
      line,
  )
  assert m, line
  axes = re.findall(r"'(\w+)'=(\d+)", m.group(1))
  names, sizes = [a for a, _ in axes], [int(n) for _, n in axes]
  ids = np.arange(int(np.prod(sizes)))
  if m.group(2):
    ids = ids.reshape([int(d) for d in m.group(2).split(',')])
    if m.group(3):
      ids = ids.transpose([int(d) for d in m.group(3).split(',')])
  ids = ids.reshape(sizes)
  grouped = [names.index(a) for a in re.findall(r"'(\w+)'", m.group(4))]
  kept = [i for i in range(len(sizes)) if i not in grouped]
  ids = ids.transpose(kept + grouped).reshape(
      -1, int(np.prod([sizes[i] for i in grouped]))
  )
  return [tuple(int(i) for i in g) for g in ids]


def _axis_of(line, par):
  """The mesh axes a collective's replica groups span ('data'/'model')."""
  if par.data_parallel == 'pmap':
    return 'data'
  pos = {d.id: idx for idx, d in np.ndenumerate(par.mesh.devices)}
  spans = set()
  for g in _replica_groups(line):
    coords = np.array([pos[i] for i in g])
    spans |= {
        ('data', 'model')[a] for a in range(2) if len(set(coords[:, a])) > 1
    }
  return '+'.join(sorted(spans)) or 'none'  # 'none': groups of one device


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


# What the trainer's step adds to the collectives beyond forward and backward.
NUM_LEAVES = 16  # params: conv1-5, fc6-8 kernels and biases
# The per-leaf sums of squares of the gradient and parameter norms, where
# the leaves are split over towers (every leaf is: fc8 too, 10 classes).
NORM_PARTIALS = 2 * NUM_LEAVES
# The partial sums of the loss, top-1 and top-5 errors over a data shard.
METRIC_PARTIALS = 3
# pmap: CLU's gather_from_model_output gathers the metric collection's
# per-device scalars: six totals and the counts XLA did not fold away (the
# counts are constants), at most twelve.
PMAP_METRIC_GATHERS = range(6, 13)


def test_train_step_collectives_are_exactly_the_expected_ones(steps):
  params = tm.initial_state(steps['single']).params
  n_params = sum(x.size for x in jax.tree.leaves(params))
  assert len(jax.tree.leaves(params)) == NUM_LEAVES
  model_par = steps['model'].par
  n_local = sum(
      int(
          np.prod(
              jax.sharding.NamedSharding(model_par.mesh, spec).shard_shape(
                  x.shape
              )
          )
      )
      for x, spec in zip(
          jax.tree.leaves(params), jax.tree.leaves(model_par.specs(params))
      )
  )
  assert n_local * 2 == n_params  # fc8's 10 classes split too

  expected = {
      'single': [],
      'model': (
          [('all-gather', 'model', f(tm.BATCH)) for f, _ in tm.MODEL_GATHERS]
          + [
              ('reduce-scatter', 'model', f(tm.BATCH))
              for f, _ in tm.MODEL_SCATTERS
          ]
          # Both towers see the whole batch and compute the loss and errors
          # from the same gathered logits: over `model` only the norms'
          # per-leaf partial sums.
          + [('all-reduce', 'model', NORM_PARTIALS)]
      ),
      'hybrid': (
          [
              ('all-gather', 'model', f(tm.BATCH // 2))
              for f, _ in tm.MODEL_GATHERS
          ]
          + [
              ('reduce-scatter', 'model', f(tm.BATCH // 2))
              for f, _ in tm.MODEL_SCATTERS
          ]
          # Over data: the gradients of this device's tower parameters and
          # fc8 half (n_local numbers), summed over the two data shards, and
          # the metrics' partial sums.
          + [
              ('all-reduce', 'data', n_local + METRIC_PARTIALS),
              ('all-reduce', 'model', NORM_PARTIALS),
          ]
      ),
      # Data parallel: the gradients of every parameter and the metrics'
      # partial sums, over the data axis; nothing else (in particular no
      # gathered batch, which XLA's partitioner would need to split
      # ops.conv2d's per-image scan: parallel.py runs the forward per
      # device instead). The norms read the summed gradients.
      'jit': [('all-reduce', 'data', n_params + METRIC_PARTIALS)],
      'pmap': [('all-reduce', 'data', n_params)],
  }
  batch = tm.batch(0, size=tm.STEP_SIZE)
  for mode, step in steps.items():
    par = step.par
    found = collectives(
        par,
        step,
        par.place_state(tm.initial_state(step)),
        par.shard_batch(batch),
    )
    reduces = [(k, a, s) for k, a, s in found if k == 'all-reduce']
    others = sorted((k, a, s) for k, a, s in found if k != 'all-reduce')
    if mode == 'pmap':
      gathers = [e for e in others if e == ('all-gather', 'data', (2,))]
      assert len(gathers) in PMAP_METRIC_GATHERS, others
      others = [e for e in others if e not in gathers]
    want_reduces = [e for e in expected[mode] if e[0] == 'all-reduce']
    want_others = sorted(e for e in expected[mode] if e[0] != 'all-reduce')
    assert others == want_others, mode
    # XLA may combine or split the all-reduce's tensors: compare what is
    # reduced (axis and element count), not how it is packed.
    got = collections.Counter()
    for k, a, s in reduces:
      got[(k, a)] += int(np.prod(s))
    assert got == collections.Counter(
        {(k, a): n for k, a, n in want_reduces}
    ), mode


# ------------------------------------------------- memory and restore -----


def _param_counts(classes):
  """Per-device parameter counts of the real-size model (no arrays made)."""
  c = paper.get_config()
  c.model.num_classes = classes
  c.parallel.mesh.model = 2
  c.parallel.mesh.data = 1
  m = model_lib.from_config(c.model)
  shapes = jax.eval_shape(
      lambda: model_lib.init(m, jax.random.PRNGKey(0), 224)
  )['params']
  par = parallel.Parallel(c, m)
  local = sum(
      int(np.prod(sh.shard_shape(x.shape)))
      for x, sh in zip(
          jax.tree.leaves(shapes), jax.tree.leaves(par.shardings(shapes))
      )
  )
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  return local, total


def _paper_param_count(classes):
  """The paper's layer table, counted by hand (two towers)."""
  conv = lambda k, cin, cout, towers: towers * (k * k * cin * cout + cout)
  return (
      conv(11, 3, 48, 2)
      + conv(5, 48, 128, 2)
      + conv(3, 256, 192, 2)
      + conv(3, 192, 192, 2)
      + conv(3, 192, 128, 2)
      + 2 * (9216 * 2048 + 2048)
      + 2 * (4096 * 2048 + 2048)
      + 4096 * classes
      + classes
  )


def test_each_device_holds_about_half_the_real_model():
  local, total = _param_counts(1000)
  assert total == _paper_param_count(1000) == 60_965_224
  assert local == total // 2 == 30_482_612  # about 30.5M, fc8 split
  fc8 = 4096 * 999 + 999
  local, total = _param_counts(999)  # odd: fc8 replicated
  assert local == (total - fc8) // 2 + fc8 == 32_527_015  # about 32.5M


def test_device_bytes_of_placed_state_are_half(tiny):
  _, variables, _ = tiny
  par = parallel.Parallel(tm.config('model'), tiny[0])
  placed = par.place_state(variables)
  per_device = parallel.param_bytes_per_device(placed)
  whole = sum(x.nbytes for x in jax.tree.leaves(variables))
  assert sorted(per_device.values()) == [whole // 2, whole // 2]


def test_state_written_under_one_mesh_restores_under_another(steps):
  step = steps['model']
  par = step.par
  batch = tm.batch(3, size=tm.STEP_SIZE)
  trained, _ = step(
      par.place_state(tm.initial_state(step)), par.shard_batch(batch)
  )
  host = par.to_host(trained)  # what a checkpoint stores
  assert all(isinstance(x, np.ndarray) for x in jax.tree.leaves(host))
  for mode in ('single', 'hybrid', 'pmap'):
    other = steps[mode]
    placed = other.par.place_state(host)
    tm.close(other.par.to_host(placed), host, rtol=0, atol=0)
    # ...and training continues there as it would on one device (drawing
    # that mode's dropout masks).
    theirs, _ = other(placed, other.par.shard_batch(batch))
    shards = tm.DATA_SHARDS[mode]
    ref = steps['single'] if shards == 1 else tm.reference_step(step, shards)
    single = steps['single'].par
    mine, _ = ref(single.place_state(host), single.shard_batch(batch))
    tm.close(
        other.par.to_host(theirs).params,
        single.to_host(mine).params,
        atol=1e-6,
        rtol=1e-4,
    )


def test_pmap_metrics_come_back_unstacked(steps):
  step = steps['pmap']
  state = step.par.place_state(tm.initial_state(step))
  assert state.params['fc8']['kernel'].shape[0] == 2  # one per device
  state, m = step(state, step.par.shard_batch(tm.batch(0, size=tm.STEP_SIZE)))
  assert all(np.shape(x) == () for x in jax.tree.leaves(m))
  assert m.loss.count == tm.BATCH  # every device's examples
  assert step.par.to_host(state).params['fc8']['kernel'].shape == (256, 10)


@pytest.mark.parametrize('mode', tm.MODES)
def test_layout_names_mode_mesh_devices_and_batch_per_device(mode):
  """The run's start logs this, and results.json records it."""
  c = tm.config(mode)
  par = parallel.Parallel(c, model_lib.from_config(c.model))
  data, model, _ = tm.MODES[mode]
  layout = par.layout()
  assert layout == dict(
      mode=mode,
      description=parallel.MODES[mode],
      mesh={'data': data, 'model': model},
      devices=data * model,
      platform='cpu',
      processes=1,
      global_batch=tm.BATCH,
      per_device_batch=tm.BATCH // data,
      dtype='float32',
  )
  line = parallel.layout_line(layout)
  assert line.startswith(f'{parallel.MODES[mode]} (mode {mode}); ')
  assert f'mesh data={data} x model={model}; {data * model} cpu devices' in line
  assert (
      f'batch {tm.BATCH // data} per device ({tm.BATCH} in all); float32'
      in line
  )


# ------------------------- uint8 batches augmented inside the step ---


@functools.cache
def _uint8_steps(mode, seed=0):
  """Two steps of `mode` from uint8 squares, cropped, flipped, lit and
  normalised inside the step (device_augment); dropout off, so only the
  images can make two modes differ."""
  big = tm.STEP_SIZE + 8
  c = tm.step_config(mode, dropout=0.0)
  c.data.image_size, c.data.resize_size = tm.STEP_SIZE, big
  # [0, 1] inputs: the scale of tm.batch, which the tolerances below fit.
  c.data.pixel_scale, c.data.mean = 1.0, (0.5, 0.45, 0.4)
  params = preprocess.params_from_record(
      input_pipeline.preprocessing_from_config(c), lighting_std=0.1
  )
  prepare = device_augment.prepare_fn(params, seed=seed, crop=True)
  step = train.make_train_step(
      c, model_lib.from_config(c.model), sizes=tm.SIZES, prepare=prepare
  )
  rng = np.random.default_rng(5)
  batches = [
      dict(
          image=rng.integers(0, 256, (tm.BATCH, big, big, 3), np.uint8),
          label=rng.integers(0, tm.CLASSES, tm.BATCH).astype(np.int32),
      )
      for _ in range(2)
  ]
  return tm.run_steps(step, step, tm.initial_state(step), batches)


@pytest.mark.parametrize('mode', [m for m in tm.MODES if m != 'single'])
def test_uint8_batches_give_every_mode_the_images_of_one_device(mode):
  """Crops, flips and lighting are keyed by (seed, step, global image
  index): every layout trains on the one-device images."""
  want, want_metrics = _uint8_steps('single')
  got, got_metrics = _uint8_steps(mode)
  tm.close(got.params, want.params, atol=1e-6, rtol=1e-4)
  for g, w in zip(got_metrics, want_metrics):
    tm.close(g, w, rtol=1e-5)
  # Other images (another seed) would have been told apart.
  other, _ = _uint8_steps('single', seed=1)
  diff = jax.tree.map(
      lambda a, b: np.abs(a - b).max(), other.params, want.params
  )
  assert max(jax.tree.leaves(diff)) > 1e-3
