"""The oneDNN path's failure scenarios (issue 15), run against a checkout.

    python experiments/benchmarks/onednn_before_after.py --tree OLD_CHECKOUT
    python experiments/benchmarks/onednn_before_after.py --tree .

Each scenario runs in a fresh process importing alexnet_jax from --tree (a
`git archive` of the commit before the fix, or this checkout), with a cache
of its own, and prints one JSON line: what happened. A stand-in compiler
that copies an already-built library (--library, one built by that tree)
keeps the builds to a second, as in tests/test_onednn.py.
"""

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

FAKE_CXX = """#!/bin/sh
case "$1" in
  --version) echo "fake c++ 1.0"; exit 0 ;;
  -dumpmachine) echo "x86_64-linux-gnu"; exit 0 ;;
esac
[ -n "$FAKE_CXX_SLEEP" ] && sleep "$FAKE_CXX_SLEEP"
while [ $# -gt 0 ]; do [ "$1" = "-o" ] && out="$2"; shift; done
cp "$FAKE_CXX_LIBRARY" "$out"
"""

SHAPES = """
import os
os.environ['ALEXNET_JAX_CONV'] = 'onednn'
import jax, jax.numpy as jnp
from alexnet_jax.core import ops
x, k = jnp.ones((2, 9, 9, 64)), jnp.ones((3, 3, 4, 8))
loss = lambda x, k: ops.conv2d(x, k, 1, 'SAME').sum()
try:
  dx, dk = jax.jit(jax.grad(loss, argnums=(0, 1)))(x, k)
  y = jax.jit(lambda x, k: ops.conv2d(x, k, 1, 'SAME'))(x, k)
  print('NO ERROR: y[0,4,4,0] =', float(y[0, 4, 4, 0]), '(64-channel rows of '
        'a 4-channel kernel of ones would give 576); dk finite:',
        bool(jnp.isfinite(dk).all()))
except Exception as e:
  print('raised', type(e).__name__ + ':', str(e).splitlines()[0][:200])
"""

BF16 = """
from alexnet_jax.core import onednn
print('implementation', onednn.bfloat16_implementation(),
      '| bfloat16_fast()', onednn.bfloat16_fast())
"""

PROBE = """
from alexnet_jax.core import onednn
print('unavailable():', onednn.unavailable())
"""

NO_HOME = """
import pwd
def no_entry(uid):
  raise KeyError(uid)
pwd.getpwuid = no_entry
from alexnet_jax.core import onednn
print('unavailable():', onednn.unavailable())
"""

# LD_PRELOAD shim: every affinity query reports $FAKE_CPUS CPUs, so XLA
# (tsl's NumSchedulableCPUs), libgomp and Python size their thread pools as
# on a host with that many cores (the 2 real ones run them all).
FAKE_CPUS_C = r"""
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdlib.h>
#include <string.h>
static void fill(size_t size, cpu_set_t* mask) {
  int n = atoi(getenv("FAKE_CPUS"));
  memset(mask, 0, size);
  for (int i = 0; i < n; i++) CPU_SET_S(i, size, mask);
}
int sched_getaffinity(pid_t pid, size_t size, cpu_set_t* mask) {
  fill(size, mask);
  return 0;
}
int pthread_getaffinity_np(pthread_t t, size_t size, cpu_set_t* mask) {
  fill(size, mask);
  return 0;
}
"""

THREADS = """
import functools, os, sys
sys.path.insert(0, os.path.join(os.environ['TREE'], 'tests'))
import jax
import test_parallel as tp
from alexnet_jax.core import model as model_lib, parallel

def threads():
  with open('/proc/self/status') as f:
    return int(next(l for l in f if l.startswith('Threads:')).split()[1])

counts = {}
for backend in ('xla', 'onednn'):
  os.environ['ALEXNET_JAX_CONV'] = backend
  c = tp._config({1: 'single', 2: 'model'}.get(jax.device_count(), 'hybrid'),
                 dropout=0.0)
  m = model_lib.from_config(c.model)
  par = parallel.Parallel(c, m)
  step = par.jit_step(functools.partial(tp.sgd_step, apply_fn=par.apply,
                                        tx=tp.TX))
  state = par.place_state(tp._initial_state())
  for i in range(4):
    state, loss = step(state, par.shard_batch(tp._batch(i, tp.STEP_SIZE)))
    float(loss)
  counts[backend] = threads()
print('threads after 4 steps: XLA convolutions', counts['xla'],
      '| oneDNN', counts['onednn'], '| added by oneDNN',
      counts['onednn'] - counts['xla'])
"""


def run(tree, code, env, timeout=600):
  full = dict(os.environ, PYTHONPATH=str(tree), TREE=str(tree), **env)
  full.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=1')
  for k in [k for k, v in env.items() if v is None]:
    full.pop(k)
  start = time.monotonic()
  try:
    p = subprocess.run(
        [sys.executable, '-c', code],
        env=full,
        cwd=tree,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    out, rc = p.stdout.strip() or p.stderr.strip().splitlines()[-1], (
        p.returncode
    )
  except subprocess.TimeoutExpired:
    out, rc = f'still running after {timeout} s: killed', 'timeout'
  return dict(rc=rc, seconds=round(time.monotonic() - start, 1), out=out)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--tree', required=True, type=pathlib.Path)
  parser.add_argument(
      '--library',
      required=True,
      help='a library built by that tree (for the stand-in compiler)',
  )
  parser.add_argument('--only', default='')
  args = parser.parse_args()
  tree = args.tree.resolve()
  work = pathlib.Path(tempfile.mkdtemp(prefix='onednn_before_after-'))
  cxx = work / 'fake-c++'
  cxx.write_text(FAKE_CXX)
  cxx.chmod(0o755)
  fake = dict(CXX=str(cxx), FAKE_CXX_LIBRARY=args.library)

  def say(scenario, result):
    print(
        json.dumps(dict(scenario=scenario, tree=str(args.tree), **result)),
        flush=True,
    )

  want = set(args.only.split(',')) if args.only else None
  todo = lambda name: want is None or name in want

  if todo('shapes'):
    say(
        'grad of conv2d(x[..., 64], k[3, 3, 4, 8]), ALEXNET_JAX_CONV=onednn',
        run(tree, SHAPES, dict(ALEXNET_JAX_CACHE=str(work / 'c0'))),
    )
  if todo('bf16'):
    for isa in ('AVX512_CORE', 'AVX2'):
      say(
          f'bfloat16 with ONEDNN_MAX_CPU_ISA={isa}',
          run(
              tree,
              BF16,
              dict(ONEDNN_MAX_CPU_ISA=isa, ALEXNET_JAX_CACHE=str(work / 'c0')),
          ),
      )
  if todo('corrupt'):
    cache = work / 'c1'
    env = dict(fake, ALEXNET_JAX_CACHE=str(cache))
    run(tree, PROBE, env)
    for lib in cache.glob('onednn_conv-*.so'):
      lib.write_bytes(b'\x7fELF truncated')
    say('cached library corrupted, first run', run(tree, PROBE, env))
    say('cached library corrupted, second run', run(tree, PROBE, env))
  if todo('planted'):
    cache = work / 'c2'
    env = dict(fake, ALEXNET_JAX_CACHE=str(cache))
    run(tree, PROBE, env)
    cache.chmod(0o777)
    for lib in cache.glob('onednn_conv-*.so'):  # another user's library
      os.chown(lib, 4321, 4321)
      lib.chmod(0o666)
    say(
        'library owned by uid 4321 (mode 666) in a mode-777 cache',
        run(tree, PROBE, env),
    )
  if todo('no_home'):
    say(
        'no HOME, no passwd entry, ALEXNET_JAX_CACHE unset',
        run(
            tree,
            NO_HOME,
            dict(fake, HOME=None, ALEXNET_JAX_CACHE=None, TMPDIR=str(work)),
        ),
    )
  if todo('hang'):
    say(
        'a compiler that hangs (ALEXNET_JAX_BUILD_TIMEOUT=5 where known)',
        run(
            tree,
            PROBE,
            dict(
                fake,
                FAKE_CXX_SLEEP='300',
                ALEXNET_JAX_BUILD_TIMEOUT='5',
                ALEXNET_JAX_CACHE=str(work / 'c3'),
            ),
            timeout=60,
        ),
    )
  if todo('threads'):
    for devices in (2, 4):
      for threads in ('16', None):
        env = {
            'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
            'ALEXNET_JAX_CACHE': str(work / 'c0'),
        }
        if threads:  # the old code: OpenMP's; the new: its own setting
          env.update(
              OMP_NUM_THREADS=threads, ALEXNET_JAX_ONEDNN_THREADS=threads
          )
        say(
            f'two towers, {devices} devices, threads per call '
            f'{threads or "default"}',
            run(tree, THREADS, env),
        )
  if todo('threads16'):
    shim = work / 'fakecpus.so'
    (work / 'fakecpus.c').write_text(FAKE_CPUS_C)
    subprocess.run(
        [
            'gcc',
            '-O2',
            '-shared',
            '-fPIC',
            str(work / 'fakecpus.c'),
            '-o',
            str(shim),
        ],
        check=True,
    )
    for devices in (1, 2, 4):
      env = {
          'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
          'ALEXNET_JAX_CACHE': str(work / 'c0'),
          'LD_PRELOAD': str(shim),
          'FAKE_CPUS': '16',
      }
      say(
          f'two towers, {devices} devices, an emulated 16-core host',
          run(tree, THREADS, env),
      )


if __name__ == '__main__':
  main()
