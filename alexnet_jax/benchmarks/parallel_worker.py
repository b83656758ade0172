"""The parallel benchmark's worker: one mode, in its own process with the
simulated CPU devices that mode needs."""

import time

import jax

from alexnet_jax.benchmarks import model_jax_worker  # sets the XLA flags
from alexnet_jax.benchmarks import parallel
from alexnet_jax.benchmarks import specs
from alexnet_jax.benchmarks import worker
from alexnet_jax.core import model as model_lib
from alexnet_jax.core import parallel as parallel_lib
from alexnet_jax.core import steps


def setup(spec) -> worker.Job:
  """Builds and compiles the trainer's step for one mode."""
  data, model, data_parallel, _ = parallel.MODES[spec['mode']]
  config = specs.config_for(dict(spec, model='paper'))
  config.parallel.mesh.data = data
  config.parallel.mesh.model = model
  config.parallel.data_parallel = data_parallel
  config.parallel.cpu_devices = data * model
  parallel_lib.setup_devices(config)  # before anything touches a device

  net = model_lib.from_config(config.model)
  step = steps.make_train_step(config, net)
  par = step.par
  # Placed as the trainer places a fresh state (no host copies).
  state = [
      par.place_state(
          steps.create_train_state(
              config, net, step.tx, model_jax_worker.numpy_params(net, config)
          )
      )
  ]
  batch = par.shard_batch(specs.fake_batch(config))
  start = time.perf_counter()
  step.lower(state[0], batch).compile()  # jit reuses this executable
  compile_s = time.perf_counter() - start
  per_device = parallel_lib.param_bytes_per_device(state[0].params)

  last = [None]  # the last step's metrics, for finish()

  def run(i):
    del i
    state[0], last[0] = step(state[0], batch)
    # What the trainer reads back after every step.
    return jax.device_get((last[0].loss.total, last[0].param_norm.total))

  def finish():
    """The last step's metrics (loss, errors, norms, learning rate): every
    mode ran the same steps from the same state on the same batch."""
    computed = par.to_host(last[0].compute())
    return dict(metrics={k: float(v) for k, v in computed.items()})

  return worker.Job(
      run=run,
      facts=dict(
          compile_s=compile_s,
          devices=len(per_device),
          param_bytes_per_device=max(per_device.values()),
          param_bytes_total=sum(
              x.nbytes for x in jax.tree.leaves(par.to_host(state[0].params))
          ),
          version=jax.__version__,
      ),
      finish=finish,
  )
