"""The compile tool's bound beside the measured speed, from one run.sh log.

    python experiments/accelerator/bound_vs_measured.py LOG.jsonl

Pairs each measured `benchmark train` record of JAX on the device (img/s,
one device) with the `benchmark compile` record of the same dtype and
batch (XLA's cost model: the roofline bound in img/s per chip), and prints
measured / bound: how close the device runs to what XLA's figures allow.
"""

import json
import sys


def pairs(records):
  bounds = {
      (r['dtype'], r['batch']): r
      for r in records
      if r.get('benchmark') == 'compile'
      and r.get('mode') == 'single'
      and 'roofline' in r
  }
  for r in records:
    if r.get('benchmark') != 'train' or r.get('impl') != 'jax':
      continue
    bound = bounds.get((r['dtype'], r['batch']))
    if bound:
      yield r, bound


def main(argv):
  if len(argv) != 1:
    raise SystemExit(__doc__)
  with open(argv[0]) as f:
    records = [json.loads(l) for l in f if l.startswith('{')]
  rows = list(pairs(records))
  if not rows:
    print(
        f'{argv[0]}: no measured train record with a compile record of the '
        'same dtype and batch'
    )
    return
  print(
      '| device | dtype | batch | measured img/s | bound img/s | measured / '
      'bound | bound by |\n|---|---|---|---|---|---|---|'
  )
  for measured, bound in rows:
    roof = bound['roofline']
    print(
        f"| {bound.get('device_kind')} | {measured['dtype']} | "
        f"{measured['batch']} | {measured['img_per_s']:.0f} | "
        f"{roof['img_per_s_per_chip']:.0f} | "
        f"{measured['img_per_s'] / roof['img_per_s_per_chip']:.0%} | "
        f"{roof['bound_by']} |"
    )


if __name__ == '__main__':
  main(sys.argv[1:])
