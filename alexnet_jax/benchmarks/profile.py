"""Where the trainer's step spends its time and memory.

    python -m alexnet_jax.benchmark profile [--variant torchvision]
        [--batch 128] [--dtype float32] [--top 40]
    python -m alexnet_jax.benchmark memory [--variant torchvision,paper]
        [--batch 128] [--bare]

Both build the trainer's own step (steps.make_train_step, as the `train`
benchmark does) in a harness worker with the trainer's XLA flags.

* profile: times --steps steps, then traces one with jax.profiler and sums
  the trace's XLA ops by name: the longest ones, and the time per kind
  (oneDNN convolution custom calls `ffi_call.*`, XLA's YNNPACK fusions
  `ynn_fusion.*` (the dots), everything else).
* memory: compiles the step without running it and reports XLA's memory
  plan (`memory_analysis()`: argument, output and temporary bytes), the
  donated parameters XLA copies anyway (`copy(state_params...)` at the
  entry of the compiled step), and this process's resident memory after
  compiling, before and after glibc's malloc_trim(0). None of these depend
  on the machine's load. --bare adds the same for the step without its
  metrics and norms (make_train_step(bare=True)).
"""

import collections
import sys

from alexnet_jax.benchmarks import harness


def _kind(op):
  if op.startswith('ffi_call') or 'custom-call' in op:
    return 'oneDNN convolutions (ffi_call)'
  if op.startswith('ynn_fusion') or op.startswith('__ynn'):
    return 'YNNPACK fusions (dots)'
  return 'other XLA ops'


def _spec(args, variant, dtype, what):
  return dict(
      model=variant,
      dtype=dtype,
      batch=args.batch,
      image_size=args.image_size,
      width_scale=args.width_scale,
      warmup=args.warmup,
      what=what,
  )


def profile(args):
  records = []
  for variant in args.variant:
    for dtype in args.dtype:
      spec = _spec(args, variant, dtype, 'trace')
      (result,) = harness.compare('profile_worker', [spec], steps=args.steps)
      ops = result['done']['ops']
      kinds = collections.Counter()
      for name, ms, _ in ops:
        kinds[_kind(name)] += ms
      rec = dict(
          benchmark='profile',
          impl='jax',
          model=variant,
          dtype=dtype,
          batch=args.batch,
          image_size=args.image_size,
          train_step='trainer',
          **harness.step_fields(result, args.batch),
          traced_ops_ms=sum(ms for _, ms, _ in ops),
          ms_by_kind=dict(kinds.most_common()),
          top_ops=[
              dict(op=n, ms=round(ms, 1), calls=c)
              for n, ms, c in ops[: args.top]
          ],
          compile_s=result['ready']['compile_s'],
          version=result['ready']['version'],
          xla_flags=result['ready']['xla_flags'],
          load_avg=result['load'],
      )
      harness.publish(rec, args, records)
  return records


def memory(args):
  """One record per variant and dtype; with --bare, also of the bare step
  (forward, backward and update only: what the metrics and norms hold)."""
  records = []
  kinds = ('trainer', 'bare') if getattr(args, 'bare', False) else ('trainer',)
  for variant in args.variant:
    for dtype, step in ((d, s) for d in args.dtype for s in kinds):
      spec = dict(_spec(args, variant, dtype, 'memory'), step=step)
      (result,) = harness.compare('profile_worker', [spec], steps=0)
      ready = dict(result['ready'])
      ready.pop('first_step_s', None)
      ready.pop('event', None)
      rec = dict(
          benchmark='memory',
          impl='jax',
          model=variant,
          dtype=dtype,
          batch=args.batch,
          image_size=args.image_size,
          train_step=step,
          **ready,
      )
      harness.publish(rec, args, records)
  return records


def print_table(records, file=sys.stdout):
  for r in (r for r in records if r.get('benchmark') == 'profile'):
    print(
        f"\n{r['model']} {r['dtype']} batch {r['batch']}: step "
        f"{r['step_ms']:.0f} ms (median of {r['steps']}); traced ops "
        f"{r['traced_ops_ms']:.0f} ms",
        file=file,
    )
    for kind, ms in r['ms_by_kind'].items():
      print(
          f'  {ms:9.1f} ms  {ms / r["traced_ops_ms"]:4.0%}  {kind}', file=file
      )
    print('\n| ms | calls | op |\n|---|---|---|', file=file)
    for op in r['top_ops']:
      print(f"| {op['ms']:.1f} | {op['calls']} | {op['op'][:90]} |", file=file)
  mem = [r for r in records if r.get('benchmark') == 'memory']
  if mem:
    print(
        '\n| model | step | dtype | batch | argument MB | temp MB | copied '
        'params | RSS after compile MB | after trim MB |\n' + '|---' * 9 + '|',
        file=file,
    )
    for r in mem:
      print(
          f"| {r['model']} | {r['train_step']} | {r['dtype']} | "
          f"{r['batch']} | "
          f"{r['argument_mb']:.0f} | {r['temp_mb']:.0f} | "
          f"{r['copied_params']} ({r['copied_param_mb']:.0f} MB) | "
          f"{r['rss_after_compile_mb']:.0f} | "
          f"{r['rss_after_trim_mb']:.0f} |",
          file=file,
      )
