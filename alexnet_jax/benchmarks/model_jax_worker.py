"""The model benchmark's JAX worker, and the trainer's step on fake data that
the other JAX workers time too (parallel_worker, profile_worker).

The worker process imports this module first (benchmarks/worker.py), so the
trainer's XLA flags are set here, before JAX starts its backend.
"""

import os
import time

from alexnet_jax.core import xla_flags

xla_flags.set_defaults()  # what the trainer runs with; before JAX's backend

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from alexnet_jax.benchmarks import specs  # noqa: E402
from alexnet_jax.benchmarks import worker  # noqa: E402
from alexnet_jax.core import model as model_lib  # noqa: E402
from alexnet_jax.core import ops  # noqa: E402
from alexnet_jax.core import parallel  # noqa: E402
from alexnet_jax.core import steps  # noqa: E402


def numpy_params(net, config):
  """The paper's initial distribution, drawn by NumPy.

  Shapes come from jax.eval_shape; JAX's own initialisers would compile
  their random-number kernels, which takes long on XLA:CPU and is not
  what is measured.
  """
  shapes = jax.eval_shape(
      lambda: model_lib.init(net, jax.random.PRNGKey(0), config.data.image_size)
  )['params']
  rng = np.random.default_rng(0)
  m = config.model
  bias = m.bias_init

  def make(path, x):
    if path[-1].key == 'bias':
      return np.full(x.shape, bias, np.float32)
    fc67 = any(getattr(p, 'key', '') in ('fc6', 'fc7') for p in path)
    std = m.fc_init_std if fc67 else m.weight_init_std
    return rng.standard_normal(x.shape, np.float32) * np.float32(std)

  return jax.tree_util.tree_map_with_path(make, shapes)


def matmul_gflops(n, dtype, repeats=3):
  """Best-of-`repeats` GFLOP/s of an n x n @ n x n matmul in XLA."""
  a = jax.random.normal(jax.random.key(4), (n, n), getattr(jnp, dtype))
  mm = jax.jit(lambda a, b: a @ b)
  return worker.best_gflops(lambda: mm(a, a).block_until_ready(), n, repeats)


def build_jax_train(spec):
  """The trainer's step for a spec, its placed state and batch, compiled.

  Returns dict(step, state=[state] (a list: the step donates it), batch,
  compiled (the AOT executable, which later calls of the step reuse),
  compile_s). spec['step'] == 'bare' builds make_train_step(bare=True).
  """
  config = specs.config_for(spec)
  net = model_lib.from_config(config.model)
  step = steps.make_train_step(config, net, bare=spec.get('step') == 'bare')
  par = step.par
  # Placed as the trainer places a fresh state (no host copies).
  state = [
      par.place_state(
          steps.create_train_state(
              config, net, step.tx, numpy_params(net, config)
          )
      )
  ]
  batch = par.shard_batch(specs.fake_batch(config))
  start = time.perf_counter()
  compiled = step.lower(state[0], batch).compile()
  return dict(
      step=step,
      state=state,
      batch=batch,
      compiled=compiled,
      compile_s=time.perf_counter() - start,
  )


def train_run(built):
  """A Job's run for build_jax_train's result: one step, then what the
  trainer reads back after every step (all of the bare step's output)."""
  step, state, batch = built['step'], built['state'], built['batch']

  def run(i):
    del i
    state[0], out = step(state[0], batch)
    if step.bare:
      return jax.device_get(out)
    # What the trainer reads back after every step.
    return jax.device_get((out.loss.total, out.param_norm.total))

  return run


def setup(spec) -> worker.Job:
  """The worker's job for a spec (benchmark train|infer|matmul)."""
  if spec['benchmark'] == 'matmul':
    return worker.Job(
        run=lambda i: None,
        facts=dict(version=jax.__version__),
        finish=lambda: dict(
            matmul_gflops={
                d: matmul_gflops(spec['matmul_size'], d) for d in specs.DTYPES
            }
        ),
    )
  config = specs.config_for(spec)
  net = model_lib.from_config(config.model)
  rss_base = worker.rss_mb()
  if spec['benchmark'] == 'train':
    built = build_jax_train(spec)
    compile_s = built['compile_s']
    run = train_run(built)
  else:
    par = parallel.Parallel(config, net)
    params = par.place_state(numpy_params(net, config))
    images = par.shard_batch(specs.fake_batch(config))['image']
    fn = jax.jit(
        lambda params, images: par.apply(
            {'params': params}, images, train=False
        )
    )
    start = time.perf_counter()
    compiled = fn.lower(params, images).compile()
    compile_s = time.perf_counter() - start

    def run(i):
      del i
      return compiled(params, images).block_until_ready()

  dtypes = sorted({'float32', spec['dtype']})
  return worker.Job(
      run=run,
      facts=dict(
          compile_s=compile_s,
          rss_base_mb=rss_base,
          version=jax.__version__,
          xla_flags=os.environ.get('XLA_FLAGS', ''),
          devices=len(jax.devices()),
          platform=jax.devices()[0].platform,
          device_kind=jax.devices()[0].device_kind,
          conv_backend=ops.conv_backend(config.model.dtype),
      ),
      finish=lambda: dict(
          matmul_gflops={
              d: matmul_gflops(spec['matmul_size'], d) for d in dtypes
          }
      ),
  )
