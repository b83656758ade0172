"""A/B of the oneDNN thread bound (issue 15): the step before and after.

    python experiments/benchmarks/onednn_threads_ab.py --old OLD_CHECKOUT \
        --out experiments/results/benchmarks/onednn_threads_ab.jsonl

OLD_CHECKOUT is a `git archive` of the commit before the fix. The old and
the new code each run in their own benchmark worker (the ones `benchmark`
and `benchmarks.parallel` use, imported from each checkout through
PYTHONPATH), and their timed steps alternate, so the load of a shared host
hits both alike:

* train, one device: the torchvision variant and the paper model
  (`benchmark train --impls jax`'s step). One device: every call gets all
  the cores, as before; what changes is that calls run on a runner thread,
  one at a time.
* the paper model's two towers on two simulated devices
  (`benchmarks.parallel --modes model`): each device's calls now get half
  the cores, where each used to take all of them.

One JSON line per measurement: the median step of each, and their ratio.
"""

import argparse
import json
import os
import pathlib
import statistics
import sys

HERE = pathlib.Path(__file__).resolve().parents[2]


def _with_pythonpath(tree, make):
  """make(), with PYTHONPATH=tree in the environment workers inherit."""
  saved = os.environ.get('PYTHONPATH')
  os.environ['PYTHONPATH'] = str(tree)
  try:
    return make()
  finally:
    if saved is None:
      os.environ.pop('PYTHONPATH')
    else:
      os.environ['PYTHONPATH'] = saved


def train(trees, variant, args):
  from alexnet_jax import benchmark

  spec = dict(
      impl='jax',
      benchmark='train',
      model=variant,
      dtype='float32',
      batch=args.batch,
      image_size=224,
      warmup=2,
      width_scale=1.0,
      matmul_size=256,
  )
  envs = [dict(os.environ, PYTHONPATH=str(t)) for t in trees.values()]
  results = benchmark.compare([spec, spec], steps=args.steps, envs=envs)
  return [r['steps'] for r in results]


def two_towers(trees, args):
  from alexnet_jax.benchmarks import parallel

  spec = dict(
      mode='model', batch=args.batch, image_size=224, width_scale=1.0, warmup=2
  )
  workers, steps = [], []
  try:
    for tree in trees.values():
      workers.append(_with_pythonpath(tree, lambda: parallel._Worker(spec)))
      workers[-1].receive()
      steps.append([])
    for _ in range(args.steps):
      for worker, s in zip(workers, steps):
        s.append(worker.send('step')['seconds'])
  finally:
    for worker in workers:
      worker.close()
  return steps


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument('--old', required=True, type=pathlib.Path)
  parser.add_argument(
      '--new',
      default=HERE,
      type=pathlib.Path,
      help='the checkout after the fix (default: this one)',
  )
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--steps', type=int, default=8)
  parser.add_argument('--rounds', type=int, default=2)
  parser.add_argument('--out', required=True, type=pathlib.Path)
  args = parser.parse_args()
  sys.path.insert(0, str(HERE))
  with open(args.out, 'a') as out:
    for r in range(args.rounds):
      # Which worker steps first alternates between rounds too.
      names = ('before', 'after') if r % 2 == 0 else ('after', 'before')
      trees = {
          n: {'before': args.old, 'after': args.new}[n].resolve() for n in names
      }
      runs = [
          (f'train {v}, one device', lambda v=v: train(trees, v, args))
          for v in ('torchvision', 'paper')
      ]
      runs.append(
          ('paper, two towers on two devices', lambda: two_towers(trees, args))
      )
      for what, run in runs:
        steps = dict(zip(names, run()))
        med = {n: statistics.median(s) * 1e3 for n, s in steps.items()}
        record = dict(
            what=what,
            round=r,
            batch=args.batch,
            first=names[0],
            step_ms_before=round(med['before'], 1),
            step_ms_after=round(med['after'], 1),
            after_over_before=round(med['after'] / med['before'], 3),
            steps_ms={n: [round(x * 1e3) for x in s] for n, s in steps.items()},
        )
        out.write(json.dumps(record) + '\n')
        out.flush()
        print(json.dumps(record), flush=True)


if __name__ == '__main__':
  main()
