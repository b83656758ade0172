"""The CPU train step before and after per-platform formulations, alternating.

    python experiments/accelerator/cpu_before_after.py BEFORE_REV \
        [--batch 128] [--steps 8] [--dtype float32] [--out FILE]

Checks out BEFORE_REV's package (git archive) into a temporary directory and
runs `benchmark.compare` with two JAX workers, one importing that copy and
one this checkout: the same training step (benchmark.train_step_fn), the
same process set-up, timed steps alternating A B A B so the machine's load
hits both. Prints and appends one JSON line per side.
"""

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from alexnet_jax import benchmark

REPO = pathlib.Path(__file__).resolve().parents[2]


def export_tree(rev, dest):
  """BEFORE_REV's alexnet_jax package (configs/ inside, as installed)."""
  archive = subprocess.run(
      ['git', '-C', str(REPO), 'archive', rev, 'alexnet_jax', 'configs'],
      check=True,
      stdout=subprocess.PIPE,
  ).stdout
  subprocess.run(['tar', '-x', '-C', str(dest)], input=archive, check=True)
  shutil.copytree(dest / 'configs', dest / 'alexnet_jax' / 'configs')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('before')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--warmup', type=int, default=2)
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--model', default='paper')
  parser.add_argument('--out', default='')
  args = parser.parse_args()
  after = subprocess.run(
      ['git', '-C', str(REPO), 'rev-parse', '--short', 'HEAD'],
      check=True,
      stdout=subprocess.PIPE,
      text=True,
  ).stdout.strip()
  dirty = subprocess.run(
      [
          'git',
          '-C',
          str(REPO),
          'status',
          '--porcelain',
          'alexnet_jax',
          'configs',
      ],
      check=True,
      stdout=subprocess.PIPE,
      text=True,
  ).stdout.strip()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    export_tree(args.before, tmp)
    spec = dict(
        impl='jax',
        benchmark='train',
        model=args.model,
        dtype=args.dtype,
        batch=args.batch,
        image_size=224,
        warmup=args.warmup,
        width_scale=1.0,
        matmul_size=2048,
    )
    env_before = dict(os.environ, PYTHONPATH=str(tmp))
    env_after = dict(os.environ, PYTHONPATH=str(REPO))
    results = benchmark.compare(
        [spec, spec], steps=args.steps, envs=[env_before, env_after]
    )
  flops = benchmark.step_flops('train', args.model, 224, args.batch)
  argv = ' '.join(sys.argv[1:])
  for label, rev, result in (
      ('before', args.before, results[0]),
      ('after', after + ('+dirty' if dirty else ''), results[1]),
  ):
    rec = benchmark._record('train', spec, result, flops)
    rec.update(side=label, rev=rev, steps_ms=[s * 1e3 for s in result['steps']])
    rec = benchmark._stamp(rec, argparse.Namespace(argv=[argv]))
    rec['command'] = (
        f'python experiments/accelerator/cpu_before_after.py {argv}'
    )
    line = json.dumps(rec)
    print(line, flush=True)
    if args.out:
      with open(args.out, 'a') as f:
        f.write(line + '\n')


if __name__ == '__main__':
  main()
