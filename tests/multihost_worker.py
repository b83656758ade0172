"""One process of tests/test_multihost.py: a few steps under jax.distributed.

    python tests/multihost_worker.py IN.npz OUT_PREFIX COORDINATOR N ID [--die]

Reads the global batches from IN.npz (written by the test), builds the
trainer's step (train.make_train_step) in each multi-host mode from the
same initial state as the test's one-device reference (test_parallel's
initial_state), feeds this process's slice of each batch, and writes the
final parameters to OUT_PREFIX.<mode>.<ID>.npz. --die exits right after
joining the cluster (the test of a peer dying).
"""

import os
import sys

import numpy as np

MODES = (('hybrid', 2, 'jit'), ('jit', 1, 'jit'), ('pmap', 1, 'pmap'))


def main(argv):
  npz, out_prefix, address, num, pid = argv[:5]
  num, pid = int(num), int(pid)
  from alexnet_jax.core import parallel
  from helpers.tiny_model import initial_state
  from helpers.tiny_model import make_step
  from helpers.tiny_model import step_config

  base = step_config('single')
  base.parallel.cpu_devices = 2
  base.parallel.coordinator_address = address
  base.parallel.num_processes = num
  base.parallel.process_id = pid
  # A peer that dies is noticed within seconds, not the default 100.
  parallel.setup_devices(
      base, initialization_timeout=60, heartbeat_timeout_seconds=10
  )
  if '--die' in argv:
    os._exit(3)  # a crash: no clean jax.distributed shutdown

  import jax

  assert jax.process_count() == num and jax.device_count() == 2 * num
  data = dict(np.load(npz))
  for mode, mesh_model, data_parallel in MODES:
    c = step_config(mode)
    for k, v in base.parallel.items():
      if k != 'mesh':
        c.parallel[k] = v
    c.parallel.mesh.data, c.parallel.mesh.model = -1, mesh_model
    c.parallel.data_parallel = data_parallel
    step = make_step(mode, config=c)
    par = step.par
    assert par.mode == mode, (par.mode, mode)
    state = par.place_state(initial_state(step))
    for i in range(int(data['num_batches'])):
      image, label = data[f'image{i}'], data[f'label{i}']
      rows = slice(pid * len(label) // num, (pid + 1) * len(label) // num)
      state, metrics = step(
          state, par.shard_batch(dict(image=image[rows], label=label[rows]))
      )
      float(par.to_host(metrics.loss.total))  # every process can read it
    params = par.to_host(state.params)
    flat = {
        '/'.join(k.key for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(params)[0]
    }
    np.savez(f'{out_prefix}.{mode}.{pid}.npz', **flat)


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main(sys.argv[1:])
