"""What `cuda` and `tpu` would run, proven on this CPU machine.

The trainer's real train step (forward with dropout, backward, the paper's
SGD update, CLU metrics) is lowered with `jax.export` for `cuda` and for
`tpu` in each parallel mode, from simulated CPU devices. Nothing is
compiled (that needs the platform), so each export takes a second or two.
The StableHLO is what XLA:GPU / XLA:TPU would receive; for each mode it
must hold:

* no while loop in the model's forward and backward pass (ops.py's
  per-image kernel gradients are CPU-only). The one loop allowed anywhere
  is named below with its reason;
* no custom call: jax.export's safety check already refuses any without a
  compatibility guarantee (the CPU-only oneDNN calls were embedded before
  the formulation became per platform), and none of JAX's own appear;
* XLA's own convolutions, as many as the mode runs per device;
* the same collectives as tests/test_parallel.py's compiled CPU step, in
  the modes that write them (shard_map, pmap), and the input and output
  shardings the mode asks for.
"""

import collections
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from alexnet_jax.benchmarks import deviceless
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import parallel
from alexnet_jax.core import train
from helpers import (
    tiny_model,  # the CPU collective test's modes, model and lists
)

MODES = tiny_model.MODES  # single, model, jit, pmap, hybrid
BATCH = tiny_model.BATCH  # 8
SIZE = tiny_model.STEP_SIZE  # 67: fc6 reads a 1x1 map
PLATFORMS = ('cuda', 'tpu')

# XLA's convolutions per device: (forward, input gradients, kernel
# gradients). One device, jit data parallel and pmap run both towers on
# each device: conv1 and conv3 as one convolution each (every tower reads
# the same input: kernels side by side), conv2, conv4, conv5 one per tower,
# so 8 forward; conv1 needs no input gradient (it reads the images), so 7;
# every kernel needs its gradient, so 8. Two-tower and hybrid modes hold one
# tower per device: 5, 4, 5.
CONVOLUTIONS = {
    'single': (8, 7, 8),
    'jit': (8, 7, 8),
    'pmap': (8, 7, 8),
    'model': (5, 4, 5),
    'hybrid': (5, 4, 5),
}
# JAX's autodiff writes each kind with its own dimension numbers (NHWC
# activations, HWIO kernels): the input gradient is the forward with the
# kernel's in/out swapped, the kernel gradient contracts over the batch.
CONV_KINDS = {
    '[b, 0, 1, f]x[0, 1, i, o]->[b, 0, 1, f]': 'forward',
    '[b, 0, 1, f]x[0, 1, o, i]->[b, 0, 1, f]': 'input_grad',
    '[f, 0, 1, b]x[i, 0, 1, o]->[0, 1, b, f]': 'kernel_grad',
}
# Loops that may appear, with the reason each is fine. Keyed by a piece of
# the source line the loop comes from.
ALLOWED_LOOPS = {
    'pmap': {
        # clu.metrics.Metric.reduce, which gather_from_model_output calls.
        'jax.lax.scan(reduce_step': (
            "CLU's metric gathering under pmap (steps.train_step): the "
            'per-device metric totals are all-gathered and folded by a scan '
            'over the devices, on scalars, after the update'
        ),
    },
}


def _config(mode, dtype='float32'):
  c = tiny_model.config(mode)
  c.data.image_size = SIZE
  c.model.dtype = dtype
  return c


def _train_step(config, par):
  """The train step the trainer runs for `par` (steps.make_train_step): its
  parallel.Step, which the exports lower, and its optimiser."""
  step = train.make_train_step(config, par.model, par)
  return step.compiled, step.tx


def _abstract_step(config):
  """(Parallel, the trainer's compiled step, abstract state and batch)."""
  module = model_lib.from_config(config.model)
  par = parallel.Parallel(config, module)
  step, tx = _train_step(config, par)
  state = jax.eval_shape(
      functools.partial(train.create_train_state, config, module, tx)
  )
  batch = dict(
      image=jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32),
      label=jax.ShapeDtypeStruct((BATCH,), jnp.int32),
  )
  return par, step, state, batch


@functools.cache
def exported(mode, platform, dtype='float32'):
  """(jax.export.Exported, Parallel, abstract state) of the train step."""
  config = _config(mode, dtype)
  par = parallel.Parallel(config, model_lib.from_config(config.model))
  train_step = train.make_train_step(config, par.model, par)
  # The mode's inputs as `benchmark compile` lays them out: pmap's stacked
  # replicas, or the jit modes' shardings.
  state, batch = deviceless.abstract_inputs(config, train_step)
  fn = train_step.compiled._get(state, batch, ())
  if par.data_parallel == 'pmap':
    fn = jax.jit(fn)  # jax.export refuses a bare pmap but takes jit of it
  return jax.export.export(fn, platforms=[platform])(state, batch), par, state


# ------------------------------------------------ reading the StableHLO --


def convolutions(text):
  """Counter of 'forward' / 'input_grad' / 'kernel_grad' convolutions."""
  found = collections.Counter()
  for op in re.findall(r'stablehlo\.convolution[^\n]*', text):
    dims = re.search(r'dim_numbers = (.*?\]->\[.*?\])', op).group(1)
    found[CONV_KINDS.get(dims, dims)] += 1
  return found


def _locations(text):
  return dict(re.findall(r'^(#loc\d+) = (loc\(.*\))$', text, re.M))


def _source_lines(loc, locations, depth=0):
  """Every 'file:first-last' a location (and its callers) points to."""
  out = []
  for path, first, last in re.findall(
      r'"([^"]+\.py)":(\d+):\d+(?: to (?:(\d+):)?\d+)?', loc
  ):
    out.append((path, int(first), int(last or first)))
  if depth < 20:
    for ref in re.findall(r'#loc\d+', loc):
      out += _source_lines(locations.get(ref, ''), locations, depth + 1)
  return out


def while_loops(text):
  """[(file, first line, last line), ...]: where each while loop comes from.

  A loop's location is on the line that closes its body ('} loc(...)'),
  at the indentation of the line that opens it.
  """
  locations = _locations(text)
  lines = text.splitlines()
  loops = []
  for i, line in enumerate(lines):
    if 'stablehlo.while' not in line:
      continue
    indent = ' ' * (len(line) - len(line.lstrip()))
    close = next(
        l
        for l in lines[i + 1 :]
        if l.startswith(indent + '}')
        and 'loc(' in l
        and not l.startswith(indent + '} do')
    )
    sources = _source_lines(close, locations)
    loops.append(sources[0] if sources else ('?', 0, 0))
  return loops


def _reason_for_loop(mode, source):
  path, first, last = source
  try:
    code = ''.join(
        pathlib.Path(path).read_text().splitlines(True)[first - 1 : last]
    )
  except OSError:
    return None
  for key, reason in ALLOWED_LOOPS.get(mode, {}).items():
    if key in code:
      return reason
  return None


def custom_calls(text):
  return collections.Counter(re.findall(r'custom_call @([\w.$-]+)', text))


_GROUPS = re.compile(r'replica_groups = dense<(\[\[[\d, \[\]]*\]\])>')


def collectives(text, par):
  """[(kind, mesh axis, result shape)] in the order they appear."""
  pos = {d.id: idx for idx, d in np.ndenumerate(par.mesh.devices)}
  found = []
  for m in re.finditer(
      r'"stablehlo\.(all_gather|all_reduce|reduce_scatter|all_to_all|'
      r'collective_permute|collective_broadcast)"\((.*?)-> (.*?) loc\(',
      text,
      re.S,
  ):
    kind, body, result = m.groups()
    groups = [
        [int(i) for i in g.split(',') if i.strip()]
        for g in re.findall(r'\[([\d, ]+)\]', _GROUPS.search(body).group(1))
    ]
    if par.data_parallel == 'pmap':
      axis = 'data'
    else:
      spans = set()
      for g in groups:
        coords = np.array([pos[i] for i in g])
        spans |= {
            ('data', 'model')[a] for a in range(2) if len(set(coords[:, a])) > 1
        }
      axis = '+'.join(sorted(spans)) or 'none'
    shape = re.match(r'\(?tensor<([\dx]*?)x?[a-z]+\d*>', result.strip())
    dims = tuple(int(d) for d in shape.group(1).split('x') if d)
    found.append((kind.replace('_', '-'), axis, dims))
  return found


def _sdy_spec(text):
  """'#sdy.sharding<@mesh, [{"data"}, {}]>' -> ('data', None)."""
  dims = re.findall(r'\{([^{}]*)\}', text.split('[', 1)[1])
  out = []
  for d in dims:
    names = tuple(re.findall(r'"(\w+)"', d))
    out.append(None if not names else names[0] if len(names) == 1 else names)
  return tuple(out)


def io_shardings(text):
  """({input name: spec}, {output name: spec}) from main's signature."""
  main = re.search(
      r'func\.func public @main\((.*?)\) -> \((.*?)\) \{\n', text, re.S
  )
  ins = {
      name: _sdy_spec(sh)
      for sh, name in re.findall(
          r'sdy\.sharding = (#sdy\.sharding<@mesh, \[[^\]]*\]>)[^}]*\} '
          r'loc\("([^"]+)"\)',
          main.group(1),
      )
  }
  outs = {
      name: _sdy_spec(sh)
      for name, sh in re.findall(
          r'jax\.result_info = "([^"]+)", sdy\.sharding = '
          r'(#sdy\.sharding<@mesh, \[[^\]]*\]>)',
          main.group(2),
      )
  }
  return ins, outs


def _spec_tuple(spec, rank):
  spec = tuple(spec) + (None,) * (rank - len(spec))
  return tuple(
      s[0] if isinstance(s, tuple) and len(s) == 1 else s for s in spec
  )


# ----------------------------------------------------------------- tests --


@pytest.mark.parametrize('platform', PLATFORMS)
@pytest.mark.parametrize('mode', list(MODES))
def test_the_real_train_step_lowers_to_xla_convolutions_without_loops(
    mode, platform
):
  exp, par, _ = exported(mode, platform)
  text = exp.mlir_module()
  assert exp.platforms == (platform,)
  # No custom call at all: not the CPU's oneDNN ones, nor any other.
  assert custom_calls(text) == {}, custom_calls(text)
  # Loops: none from the model, only the ones named with a reason.
  for source in while_loops(text):
    assert _reason_for_loop(mode, source), (
        f"{mode}/{platform}: a while loop from {source} (ops.py's "
        'per-image kernel gradient is CPU-only)'
    )
  forward, input_grad, kernel_grad = CONVOLUTIONS[mode]
  assert convolutions(text) == dict(
      forward=forward, input_grad=input_grad, kernel_grad=kernel_grad
  )
  # The grouped alternative is not what runs (model.py says why).
  assert 'feature_group_count = 2' not in text


def test_pmap_loops_are_the_metric_gathering_only():
  """The allowance above is used, and is for what it says: 7 loops, one per
  gathered metric (loss, top-1, top-5, learning rate, grad and parameter
  norms, and CLU's reduction counter)."""
  text = exported('pmap', 'cuda')[0].mlir_module()
  loops = while_loops(text)
  assert len(loops) == 7
  # Their innermost frame is CLU's reduction (Metric.reduce's scan).
  assert {
      (pathlib.Path(p).parent.name, pathlib.Path(p).name) for p, _, _ in loops
  } == {('clu', 'metrics.py')}


def test_the_loop_detector_sees_the_cpu_kernel_gradients(monkeypatch):
  """The CPU formulation lowered for CPU (XLA convolutions, not oneDNN) has
  one per-image loop per kernel gradient, found in ops.py: the check above
  would see them if they reached cuda or tpu."""
  monkeypatch.setenv('ALEXNET_JAX_CONV', 'xla')  # read at trace time
  config = _config('single')
  module = model_lib.from_config(config.model)
  params = jax.eval_shape(
      lambda: model_lib.init(module, jax.random.PRNGKey(0), SIZE)
  )['params']
  x = jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32)
  grad = jax.jit(jax.grad(lambda p, x: module.apply({'params': p}, x).sum()))
  text = jax.export.export(grad, platforms=['cpu'])(params, x).mlir_module()
  loops = while_loops(text)
  assert len(loops) == 8, loops
  assert {pathlib.Path(p).name for p, _, _ in loops} == {'ops.py'}
  assert not any(_reason_for_loop('single', s) for s in loops)
  # Its kernel gradients are matmuls inside the loops, not convolutions.
  assert 'kernel_grad' not in convolutions(text)


@pytest.mark.parametrize('platform', PLATFORMS)
@pytest.mark.parametrize('mode', ['model', 'hybrid'])
def test_two_tower_collectives_are_those_of_the_cpu_test(mode, platform):
  exp, par, state = exported(mode, platform)
  found = collectives(exp.mlir_module(), par)
  b = BATCH // par.data_size
  gathers = sorted(c for c in found if c[0] == 'all-gather')
  scatters = sorted(c for c in found if c[0] == 'reduce-scatter')
  assert gathers == sorted(
      ('all-gather', 'model', f(b)) for f, _ in tiny_model.MODEL_GATHERS
  )
  assert scatters == sorted(
      ('reduce-scatter', 'model', f(b)) for f, _ in tiny_model.MODEL_SCATTERS
  )
  reduces = [c for c in found if c[0] == 'all-reduce']
  if mode == 'model':
    assert reduces == []
  else:
    # Each device's parameter gradients (its tower and fc8 half), summed
    # over the data axis; XLA packs these into one all-reduce when it
    # compiles (the CPU test sees that), the export has one per tensor.
    local = sum(
        int(np.prod(s.sharding.shard_shape(s.shape)))
        for s in jax.tree.leaves(state.params)
    )
    assert {a for _, a, _ in reduces} == {'data'}
    assert sum(int(np.prod(s)) for _, _, s in reduces) == local
  assert {c[0] for c in found} <= {'all-gather', 'reduce-scatter', 'all-reduce'}


@pytest.mark.parametrize('platform', PLATFORMS)
@pytest.mark.parametrize('mode', ['jit', 'pmap'])
def test_data_parallel_sums_exactly_the_gradients(mode, platform):
  exp, par, state = exported(mode, platform)
  found = collectives(exp.mlir_module(), par)
  params = state.params
  n_params = sum(
      int(np.prod(x.shape[1:] if mode == 'pmap' else x.shape))
      for x in jax.tree.leaves(params)
  )
  reduces = [c for c in found if c[0] == 'all-reduce']
  assert {a for _, a, _ in reduces} == {'data'}
  assert sum(int(np.prod(s)) for _, _, s in reduces) == n_params
  others = [c for c in found if c[0] != 'all-reduce']
  if mode == 'jit':
    assert others == []
  else:
    # CLU's gather of the metrics' totals and counts: one value per device.
    assert others and all(
        c[:2] == ('all-gather', 'data') and c[2] == (par.data_size,)
        for c in others
    )


@pytest.mark.parametrize('mode', ['single', 'jit', 'model', 'hybrid'])
def test_inputs_and_outputs_are_laid_out_as_the_mode_asks(mode):
  """The jit modes' shardings, as XLA's partitioner will receive them (it
  inserts its own collectives only when it compiles for the platform)."""
  exp, par, state = exported(mode, 'cuda')
  ins, outs = io_shardings(exp.mlir_module())
  leaves = jax.tree_util.tree_flatten_with_path(state)[0]
  specs = jax.tree.leaves(
      par.specs(state), is_leaf=lambda x: isinstance(x, jax.P)
  )
  assert len(leaves) == len(specs)
  split = 0
  for (path, leaf), spec in zip(leaves, specs):
    name = jax.tree_util.keystr(path)
    want = _spec_tuple(spec, leaf.ndim)
    if 'state' + name not in ins:
      # jit drops inputs the step never reads: only the learning rate,
      # which train_step overwrites from the schedule.
      assert name == ".opt_state.hyperparams['learning_rate']", name
    else:
      assert _spec_tuple(ins['state' + name], leaf.ndim) == want, name
    assert _spec_tuple(outs['result[0]' + name], leaf.ndim) == want, name
    split += 'model' in want
  # Tower parameters and their momenta live on their tower's device.
  assert split == (0 if par.model_size == 1 else 2 * (2 * 7 + 2))
  # The batch is split over `data` (of size 1 in single and model mode).
  batch = ('data',)
  assert par.mesh.shape['data'] == par.data_size
  assert _spec_tuple(ins["batch['image']"], 4) == batch + (None,) * 3
  assert _spec_tuple(ins["batch['label']"], 1) == batch
  # Metrics come back whole on every device.
  metrics = [v for k, v in outs.items() if k.startswith('result[1]')]
  assert metrics and all(all(d is None for d in v) for v in metrics)


def test_bfloat16_tpu_step_convolves_in_bfloat16_and_updates_in_float32():
  exp, _, _ = exported('single', 'tpu', 'bfloat16')
  text = exp.mlir_module()
  convs = re.findall(r'stablehlo\.convolution[^\n]*', text)
  assert len(convs) == 8 + 7 + 8
  for op in convs:
    signature = op.rsplit(' : ', 1)[1]
    assert re.findall(r'x([a-z]\w*)>', signature) == ['bf16'] * 3, op
  matmuls = re.findall(r'stablehlo\.dot_general[^\n]*', text)
  assert matmuls and all('bf16' in op.rsplit(' : ', 1)[1] for op in matmuls)
  # Parameters, momenta, and the state in and out stay float32...
  state_out, _ = jax.tree.unflatten(exp.out_tree, exp.out_avals)
  floats = lambda tree: {
      a.dtype
      for a in jax.tree.leaves(tree)
      if jnp.issubdtype(a.dtype, jnp.floating)
  }
  assert floats(state_out.params) == {jnp.dtype('float32')}
  assert floats(state_out.opt_state) == {jnp.dtype('float32')}
  assert floats(exp.in_avals) == {jnp.dtype('float32')}
  # ...and so does the update arithmetic: every add, subtract and multiply
  # on fc6's kernel shape (weight decay, momentum, the step) is float32;
  # the forward only converts that kernel to bfloat16.
  fc6 = 'x'.join(map(str, state_out.params['fc6']['kernel'].shape))
  arithmetic = re.findall(
      rf'stablehlo\.(?:add|subtract|multiply) [^\n]*: tensor<{fc6}x(\w+)>', text
  )
  assert len(arithmetic) >= 3 and set(arithmetic) == {'f32'}, arithmetic


def test_one_export_serves_cpu_cuda_and_tpu():
  """platform_dependent keeps a branch per platform in one artifact: the
  CPU's oneDNN calls (admitted by name) beside the plain XLA branch, and
  the platform is picked when the artifact is compiled."""
  from alexnet_jax.core import onednn

  par, step, state, batch = _abstract_step(_config('single'))
  checks = [
      jax.export.DisabledSafetyCheck.custom_call(t)
      for t in onednn.TARGETS.values()
  ]
  exp = jax.export.export(
      step._get(state, batch, ()),
      platforms=['cpu', 'cuda', 'tpu'],
      disabled_checks=checks,
  )(state, batch)
  text = exp.mlir_module()
  assert exp.platforms == ('cpu', 'cuda', 'tpu')
  assert set(custom_calls(text)) <= set(onednn.TARGETS.values())
  # Both formulations are in it. XLA's convolutions are written once per
  # platform that lowers them differently (a platform switch around each),
  # so they come in whole sets of the 8 kernel gradients.
  kernel_grads = convolutions(text)['kernel_grad']
  assert kernel_grads and kernel_grads % 8 == 0
  if onednn.unavailable() is None:  # the CPU branch's own kernel gradients
    assert custom_calls(text)['AlexnetConvBwdKernel'] == 8
