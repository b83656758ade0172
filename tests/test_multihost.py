"""Two processes with jax.distributed on 127.0.0.1 (gloo CPU collectives).

Each process simulates 2 CPU devices and feeds its half of every global
batch to the trainer's step (train.make_train_step, dropout on) in the 2x2
hybrid mode (each process holds both towers of one data replica; gradients
are summed across processes), in 4-way jit data parallelism and in 4-way
pmap. After a few steps both processes hold the parameters one device gets
from the whole batches, each data shard drawing its own dropout masks. The
processes run under a deadline and are killed on the way out; a dead peer
fails the run at once.
"""

import os
import pathlib
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from helpers.tiny_model import STEP_SIZE
from helpers.tiny_model import batch
from helpers.tiny_model import close
from helpers.tiny_model import initial_state
from helpers.tiny_model import make_step
from helpers.tiny_model import reference_step
from helpers.tiny_model import run_steps

WORKER = pathlib.Path(__file__).with_name('multihost_worker.py')
DEADLINE_S = 600  # about a minute when idle; minutes on a loaded host
NUM_BATCHES = 2


class PeerFailed(RuntimeError):
  """A worker exited with an error or the run passed its deadline."""


def _free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def run_processes(argvs, logdir, *, deadline_s=DEADLINE_S):
  """Runs one worker per argv; raises PeerFailed on the first failure.

  Every worker is killed on the way out, whatever happened.
  """
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  env.pop('XLA_FLAGS', None)  # devices come from parallel.cpu_devices
  procs, logs = [], []
  try:
    for i, argv in enumerate(argvs):
      logs.append(open(logdir / f'worker{i}.log', 'w'))
      procs.append(
          subprocess.Popen(
              [sys.executable, str(WORKER), *map(str, argv)],
              env=env,
              stdout=logs[-1],
              stderr=subprocess.STDOUT,
          )
      )
    end = time.monotonic() + deadline_s
    while True:
      codes = [p.poll() for p in procs]
      bad = [i for i, c in enumerate(codes) if c not in (None, 0)]
      if bad:
        i = bad[0]
        raise PeerFailed(
            f'worker {i} exited with code {codes[i]}:\n'
            + _tail(logdir / f'worker{i}.log')
        )
      if all(c == 0 for c in codes):
        return
      if time.monotonic() > end:
        raise PeerFailed(
            f'workers still running after {deadline_s} s:\n'
            + _tail(logdir / 'worker0.log')
        )
      time.sleep(0.2)
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
      p.wait()
    for f in logs:
      f.close()


def _tail(path, lines=30):
  return '\n'.join(path.read_text().splitlines()[-lines:])


def _inputs(tmp_path):
  """The global batches, as the workers read them."""
  batches = [batch(20 + i, size=STEP_SIZE) for i in range(NUM_BATCHES)]
  flat = {}
  for i, b in enumerate(batches):
    flat[f'image{i}'], flat[f'label{i}'] = b['image'], b['label']
  path = tmp_path / 'inputs.npz'
  np.savez(path, num_batches=NUM_BATCHES, **flat)
  return path, batches


# Data shards of each mode over the two processes' four devices.
DATA_SHARDS = {'hybrid': 2, 'jit': 4, 'pmap': 4}


def test_two_processes_end_with_the_single_device_params(tmp_path):
  inputs, batches = _inputs(tmp_path)
  address = f'127.0.0.1:{_free_port()}'
  prefix = tmp_path / 'params'
  run_processes(
      [(inputs, prefix, address, 2, pid) for pid in range(2)], tmp_path
  )

  # The reference: one device, whole batches, each data shard's dropout.
  single = make_step('single')
  for mode, shards in DATA_SHARDS.items():
    ref, _ = run_steps(
        single, reference_step(single, shards), initial_state(single), batches
    )
    flat_ref = {
        '/'.join(k.key for k in path): x
        for path, x in jax.tree_util.tree_flatten_with_path(ref.params)[0]
    }
    for pid in range(2):
      got = dict(np.load(f'{prefix}.{mode}.{pid}.npz'))
      assert got.keys() == flat_ref.keys()
      close(got, flat_ref, atol=1e-6, rtol=1e-4)


def test_a_dead_peer_fails_the_run_quickly(tmp_path):
  inputs, _ = _inputs(tmp_path)
  address = f'127.0.0.1:{_free_port()}'
  start = time.monotonic()
  with pytest.raises(PeerFailed, match='worker 1 exited with code 3'):
    run_processes(
        [
            (inputs, tmp_path / 'p', address, 2, 0),
            (inputs, tmp_path / 'p', address, 2, 1, '--die'),
        ],
        tmp_path,
    )
  assert time.monotonic() - start < 60
