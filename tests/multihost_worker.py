"""One process of tests/test_multihost.py: a few steps under jax.distributed.

    python tests/multihost_worker.py IN.npz OUT_PREFIX COORDINATOR N ID [--die]

Reads the initial state and the global batches from IN.npz (written by the
test, so every process and the reference start from the same numbers),
feeds this process's slice of each batch, and writes the final parameters
to OUT_PREFIX.<mode>.<ID>.npz for every mode. --die exits right after
joining the cluster (the test of a peer dying).
"""

import functools
import os
import sys

import numpy as np


def main(argv):
  npz, out_prefix, address, num, pid = argv[:5]
  num, pid = int(num), int(pid)
  from alexnet_jax.core import parallel
  from test_parallel import TX, _config, sgd_step

  base = _config(dropout=0.0)
  base.parallel.cpu_devices = 2
  base.parallel.coordinator_address = address
  base.parallel.num_processes = num
  base.parallel.process_id = pid
  # A peer that dies is noticed within seconds, not the default 100.
  parallel.setup_devices(base, initialization_timeout=60,
                         heartbeat_timeout_seconds=10)
  if '--die' in argv:
    os._exit(3)   # a crash: no clean jax.distributed shutdown

  import jax
  from alexnet_jax.core import model as model_lib
  assert jax.process_count() == num and jax.device_count() == 2 * num
  data = dict(np.load(npz))
  flat_state = {k[len('state/'):]: v for k, v in data.items()
                if k.startswith('state/')}
  for mode, mesh_model, data_parallel in (('hybrid', 2, 'jit'),
                                          ('jit', 1, 'jit'),
                                          ('pmap', 1, 'pmap')):
    c = _config(dropout=0.0)
    for k, v in base.parallel.items():
      if k != 'mesh':
        c.parallel[k] = v
    c.parallel.mesh.data, c.parallel.mesh.model = -1, mesh_model
    c.parallel.data_parallel = data_parallel
    par = parallel.Parallel(c, model_lib.from_config(c.model))
    assert par.mode == mode, (par.mode, mode)
    state = par.place_state(_unflatten(flat_state))
    step = par.jit_step(functools.partial(sgd_step, apply_fn=par.apply,
                                          tx=TX))
    for i in range(int(data['num_batches'])):
      image, label = data[f'image{i}'], data[f'label{i}']
      rows = slice(pid * len(label) // num, (pid + 1) * len(label) // num)
      state, loss = step(state, par.shard_batch(
          dict(image=image[rows], label=label[rows])))
      float(loss)  # replicated: every process can read it
    params = par.to_host(state['params'])
    flat = {'/'.join(k.key for k in path): x for path, x in
            jax.tree_util.tree_flatten_with_path(params)[0]}
    np.savez(f'{out_prefix}.{mode}.{pid}.npz', **flat)


def _unflatten(flat):
  """{'params/conv1/kernel': x, 'step': ..., 'rng': ...} -> the test's state."""
  import jax
  from test_parallel import TX
  tree = {}
  for key, value in flat.items():
    node = tree
    *parents, leaf = key.split('/')
    for p in parents:
      node = node.setdefault(p, {})
    node[leaf] = value
  params = tree['params']
  return dict(step=tree['step'], rng=tree['rng'], params=params,
              opt_state=jax.tree.map(np.asarray, TX.init(params)))


if __name__ == '__main__':
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  main(sys.argv[1:])
