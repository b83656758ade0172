"""The trainer's step compiled for TPUs and GPUs on this machine, and its
roofline: `python -m alexnet_jax.benchmark compile`.

    python -m alexnet_jax.benchmark compile --target v5e,h100
        [--modes single,model,jit,pmap,hybrid] [--dtype bfloat16]
        [--batch 128] [--variant paper] [--image-size 224] [--data 4]
        [--set model.lrn.enabled=False] [--out FILE]

No chip is needed: XLA compiles for a TPU topology or a GPU model described
to it (compile_targets.py; the `compile` extra installs the compilers).
What compiles is the trainer's own step (steps.make_train_step), laid out
by parallel.Parallel on compile-only devices, so the program is the one
training would run on those chips. Each compile prints one JSON line:

* memory per device from XLA's buffer assignment (`memory_analysis()`):
  arguments, outputs, temporaries, and their total against the chip's HBM
  (device.PEAKS): `fits`;
* FLOPs per device: the model's own count (benchmarks/model.py: 4.35
  GFLOP per training image of the paper model at 224, split evenly over
  the devices) and XLA's; bytes accessed per device. TPU: XLA:TPU's cost
  analysis. GPU: XLA's generic HLO cost analysis of the optimised module,
  which counts each custom call (the cuDNN convolutions) as unknown: -1
  FLOP and -1 byte. Their operand and result bytes are added from the HLO
  (`custom_call_gb`), so `gb_accessed` includes them; their FLOPs are not
  (the roofline then uses the model's count);
* the collectives in the optimised HLO, each kind's count and result
  bytes;
* the compile time (on this machine: minutes on its 2 loaded cores).

And the roofline, a bound from XLA's cost model, not a timing:
step time >= max(FLOPs / peak, bytes / HBM bandwidth) + collective bytes /
interconnect bandwidth, hence img/s per chip at most batch / devices /
bound, at most a fraction `bound_frac_of_peak` of the chip's peak for the
model's FLOPs. Peaks, HBM and interconnect figures are the vendors'
(device.PEAKS, with sources).

pmap compiles too: `jax.pmap(..., devices=compile-only devices)` lowers
and compiles without touching them.
"""

import collections
import re
import sys
import time

from alexnet_jax.benchmarks import compile_targets

MODES = {  # name: (mesh.data (None: --data), mesh.model, data_parallel)
    'single': (1, 1, 'jit'),
    'model': (1, 2, 'jit'),
    'jit': (None, 1, 'jit'),
    'pmap': (None, 1, 'pmap'),
    'hybrid': (2, 2, 'jit'),
}
_DTYPE_BYTES = dict(
    f64=8, s64=8, u64=8, c64=8, f32=4, s32=4, u32=4, bf16=2, f16=2, s16=2,
    u16=2, s8=1, u8=1, pred=1, f8e4m3fn=1, f8e5m2=1,
)  # fmt: skip
COLLECTIVES = (
    'all-reduce',
    'all-gather',
    'reduce-scatter',
    'all-to-all',
    'collective-permute',
    'collective-broadcast',
)


def config_for(
    variant, dtype, batch, image_size, mode, data, overrides=(), width_scale=1.0
):
  """The paper recipe's fake-data config for one compile."""
  from alexnet_jax.benchmarks import specs

  mesh_data, mesh_model, data_parallel = MODES[mode]
  mesh_data = mesh_data or data
  config = specs.config_for(
      dict(
          model=variant,
          dtype=dtype,
          batch=batch * mesh_data,
          image_size=image_size,
          width_scale=width_scale,
      )
  )
  config.parallel.mesh.data = mesh_data
  config.parallel.mesh.model = mesh_model
  config.parallel.data_parallel = data_parallel
  for item in overrides:
    _override(config, item)
  return config


def _override(config, item):
  key, sep, value = item.partition('=')
  if not sep:
    raise SystemExit(f'--set {item!r}: use key=value (model.lrn.enabled=False)')
  node, *path = key.split('.')
  parent = config
  for name in [node] + path[:-1]:
    if name not in parent:
      raise SystemExit(f'--set {item!r}: the config has no {key!r}')
    parent = parent[name]
  leaf = path[-1] if path else node
  if leaf not in parent:
    raise SystemExit(f'--set {item!r}: the config has no {key!r}')
  old = parent[leaf]
  if isinstance(old, bool):
    if value not in ('True', 'False', 'true', 'false'):
      raise SystemExit(f'--set {item!r}: {key} is True or False')
    new = value.lower() == 'true'
  elif old is None or isinstance(old, str):
    new = value
  else:
    try:
      new = type(old)(value)
    except ValueError:
      raise SystemExit(
          f'--set {item!r}: {key} takes a {type(old).__name__}'
      ) from None
  parent[leaf] = new


def abstract_inputs(config, step):
  """(state, batch) as ShapeDtypeStructs with the mode's shardings."""
  import jax

  from alexnet_jax.benchmarks import specs
  from alexnet_jax.core import steps

  par = step.par
  state = jax.eval_shape(
      lambda: steps.create_train_state(config, par.model, step.tx)
  )
  # The batch's structure and dtypes as the trainer feeds it (one example
  # drawn, the batch axis set to the global batch).
  one = config.copy_and_resolve_references()
  one.optim.batch_size = 1
  example = specs.fake_batch(one)
  b = config.optim.batch_size
  if par.data_parallel == 'pmap':
    # One replica per device, stacked on a leading axis (par.place_state,
    # par.shard_batch).
    n = par.data_size
    state = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((n,) + x.shape, x.dtype), state
    )
    batch = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct((n, b // n) + x.shape[1:], x.dtype),
        example,
    )
    return state, batch
  state = jax.tree.map(
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
      state,
      par.shardings(state),
  )
  batch = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(
          (b,) + x.shape[1:], x.dtype, sharding=par.batch_sharding
      ),
      example,
  )
  return state, batch


def compile_step(config, devices):
  """(compiled executable, Parallel, seconds) of the trainer's step."""
  from alexnet_jax.core import model as model_lib
  from alexnet_jax.core import parallel
  from alexnet_jax.core import steps

  net = model_lib.from_config(config.model)
  par = parallel.Parallel(config, net, devices=devices)
  step = steps.make_train_step(config, net, par)
  state, batch = abstract_inputs(config, step)
  start = time.perf_counter()
  # jax.jit (or jax.pmap) of the step, as parallel.Step builds it.
  compiled = step.compiled._get(state, batch, ()).lower(state, batch).compile()
  return compiled, par, time.perf_counter() - start


# ----------------------------------------------------------------------------
# Reading the compiled program.


def _shape_bytes(text):
  """Bytes of every array shape in an HLO type string ('(f32[2,3], ...)')."""
  total = 0
  for dtype, dims in re.findall(r'\b([a-z]+\d*)\[([\d,]*)\]', text):
    if dtype not in _DTYPE_BYTES:
      continue
    n = 1
    for d in filter(None, dims.split(',')):
      n *= int(d)
    total += n * _DTYPE_BYTES[dtype]
  return total


def hlo_text(compiled):
  """The optimised HLO of every module of a compiled executable."""
  try:
    modules = compiled.runtime_executable().hlo_modules()
    return '\n'.join(m.to_string() for m in modules)
  except Exception:  # pylint: disable=broad-except
    return compiled.as_text()


def _instructions(hlo):
  """(name, result type, op, rest of line) of every instruction."""
  return re.findall(
      r'^\s*(?:ROOT )?%?([\w.\-]+) = (\(.*?\)|[a-z]+\d*\[[\d,]*\]\S*|\S+) '
      r'([\w\-]+)\((.*)$',
      hlo,
      re.M,
  )


def collectives(hlo):
  """{kind: {count, bytes}} of the collectives in optimised HLO (async
  pairs counted once, by their -start; result bytes)."""
  out = collections.defaultdict(lambda: dict(count=0, bytes=0))
  for _, result, op, _ in _instructions(hlo):
    kind = op.removesuffix('-start')
    if kind not in COLLECTIVES or op.endswith('-done'):
      continue
    if op in ('all-gather-start', 'collective-permute-start'):
      # Their shape is (operands, results[, scratch]): count the results.
      # (all-reduce-start's shape is its results alone.)
      parts = re.findall(r'[a-z]+\d*\[[\d,]*\]', result)
      if op == 'collective-permute-start':
        result = parts[1] if len(parts) > 1 else ''
      else:
        result = ' '.join(parts[len(parts) // 2 :])
    out[kind]['count'] += 1
    out[kind]['bytes'] += _shape_bytes(result)
  return dict(out)


def custom_calls(hlo):
  """{target: (count, operand + result bytes)} of the custom calls."""
  shapes = {name: result for name, result, _, _ in _instructions(hlo)}
  out = collections.defaultdict(lambda: [0, 0])
  for _, result, op, rest in _instructions(hlo):
    if op != 'custom-call':
      continue
    target = re.search(r'custom_call_target="([^"]+)"', rest)
    target = target.group(1) if target else '?'
    operands = re.findall(r'%([\w.\-]+)', rest.split(')', 1)[0])
    size = _shape_bytes(result) + sum(
        _shape_bytes(shapes.get(o, '')) for o in operands
    )
    # cuDNN returns (result, scratch u8[...]): the scratch is workspace,
    # not traffic.
    size -= sum(
        _shape_bytes(s)
        for s in re.findall(r'u8\[[\d,]*\]', result)
        if result.startswith('(')
    )
    out[target][0] += 1
    out[target][1] += size
  return {k: tuple(v) for k, v in out.items()}


def op_counts(hlo):
  """Counter of the optimised HLO's op names (fusion, while, ...)."""
  return collections.Counter(op for _, _, op, _ in _instructions(hlo))


def cost(compiled, platform, hlo):
  """(XLA FLOPs, bytes accessed, custom-call bytes added) per device."""
  analysis = None
  if platform == 'tpu':
    analysis = compiled.cost_analysis()
  if not analysis:
    # XLA:GPU's executables give none: XLA's generic HLO cost analysis of
    # the optimised module (custom calls count 0 FLOPs and 0 bytes).
    import jax
    from jax._src.lib import _jax

    module = compiled.runtime_executable().hlo_modules()[0]
    analysis = _jax.hlo_module_cost_analysis(
        jax.devices('cpu')[0].client, module
    )
  if isinstance(analysis, list):
    analysis = analysis[0]
  flops = float(analysis.get('flops', 0.0))
  accessed = float(analysis.get('bytes accessed', 0.0))
  extra = 0
  if platform != 'tpu':
    calls = custom_calls(hlo).values()
    extra = sum(b for _, b in calls)
    # The analysis counts each custom call as -1 FLOP and -1 byte
    # ("unknown"): those are taken back, the calls' bytes added.
    unknown = sum(n for n, _ in calls)
    flops += unknown
    accessed += extra + unknown
  return flops, accessed, extra


# ----------------------------------------------------------------------------
# One compile, one record.


def measure(target_name, mode, *, variant, dtype, batch, image_size, data,
            overrides=(), width_scale=1.0):  # fmt: skip
  """The JSON record of one compile (see the module doc); its 'hlo' key
  (popped by `run` before printing) holds the optimised HLO."""
  from alexnet_jax.benchmarks import device
  from alexnet_jax.benchmarks import model as model_bench

  t = compile_targets.target(target_name)
  config = config_for(
      variant, dtype, batch, image_size, mode, data, overrides, width_scale
  )
  n = config.parallel.mesh.data * config.parallel.mesh.model
  record = dict(
      benchmark='compile',
      target=t.name,
      platform=t.platform,
      mode=mode,
      devices=n,
      variant=variant,
      dtype=dtype,
      batch=config.optim.batch_size,
      batch_per_replica=batch,
      image_size=image_size,
      width_scale=width_scale,
      overrides=list(overrides),
  )
  reason = compile_targets.unavailable(t.platform)
  if reason:
    return dict(record, skipped=reason)
  devices = compile_targets.devices(t.name, n)
  kind = devices[0].device_kind
  record['device_kind'] = kind
  compiled, par, seconds = compile_step(config, devices)
  hlo = hlo_text(compiled)
  mem = compiled.memory_analysis()
  total = (
      mem.argument_size_in_bytes
      + mem.output_size_in_bytes
      - mem.alias_size_in_bytes
      + mem.temp_size_in_bytes
      + mem.generated_code_size_in_bytes
  )
  chip = device.device_memory(kind)
  xla_flops, accessed, custom_bytes = cost(compiled, t.platform, hlo)
  model_flops = (
      model_bench.step_flops(
          'train', variant, image_size, config.optim.batch_size, width_scale
      )
      / n
  )
  coll = collectives(hlo)
  ops = op_counts(hlo)
  calls = custom_calls(hlo)
  record.update(
      compile_s=round(seconds, 1),
      memory=dict(
          argument_mb=mem.argument_size_in_bytes / 1e6,
          output_mb=mem.output_size_in_bytes / 1e6,
          alias_mb=mem.alias_size_in_bytes / 1e6,
          temp_mb=mem.temp_size_in_bytes / 1e6,
          total_mb=total / 1e6,
          hbm_gb=chip['hbm_gb'],
          fits=None
          if chip['hbm_gb'] is None
          else total <= chip['hbm_gb'] * 1e9,
      ),
      model_gflop=model_flops / 1e9,
      xla_gflop=xla_flops / 1e9,
      gb_accessed=accessed / 1e9,
      custom_call_gb=custom_bytes / 1e9,
      collectives={
          k: dict(count=v['count'], mb=v['bytes'] / 1e6)
          for k, v in sorted(coll.items())
      },
      convolutions=ops['convolution'],
      custom_calls={k: c for k, (c, _) in sorted(calls.items())},
      fusions=ops['fusion'],
      while_loops=ops['while'],
  )
  record['roofline'] = roofline(record, kind, dtype, config, par)
  record['hlo'] = hlo
  return record


def roofline(record, kind, dtype, config, par):
  """The step-time bound and what follows from it (module doc)."""
  from alexnet_jax.benchmarks import device

  peak, unit = device.device_peak_tflops(kind, dtype, config.model.precision)
  chip = device.device_memory(kind)
  out = dict(peak_tflops=peak, peak_unit=unit, **chip)
  if not peak or not chip['hbm_gbps']:
    return dict(out, bound_ms=None, reason=f'{kind!r}: no peak/HBM figure')
  # FLOPs: XLA's where it counts them all (TPU), else the model's (the
  # GPU's cuDNN convolutions count 0 in XLA's analysis).
  flops = (
      record['xla_gflop']
      if record['platform'] == 'tpu'
      else max(record['xla_gflop'], record['model_gflop'])
  )
  t_flops = flops / peak  # GFLOP / TFLOP/s = ms
  t_bytes = record['gb_accessed'] / chip['hbm_gbps'] * 1e3
  coll_mb = sum(c['mb'] for c in record['collectives'].values())
  t_coll = 0.0
  if coll_mb and chip['link_gbps']:
    t_coll = coll_mb / chip['link_gbps']  # MB / (GB/s) = ms
  elif coll_mb:
    t_coll = None
  bound = max(t_flops, t_bytes) + (t_coll or 0.0)
  images_per_chip = record['batch'] / record['devices']
  return dict(
      out,
      flop_ms=t_flops,
      hbm_ms=t_bytes,
      collective_ms=t_coll,
      bound_ms=bound,
      bound_by='flops' if t_flops >= t_bytes else 'hbm',
      img_per_s_per_chip=images_per_chip / bound * 1e3,
      bound_frac_of_peak=record['model_gflop'] / (bound * peak),
      mb_per_image=record['gb_accessed']
      * 1e3
      * par.mesh.size
      / record['batch'],
  )


# ----------------------------------------------------------------------------
# The command.


def define_flags(fv):
  """`benchmark compile`'s flags, defined in the FlagValues `fv`."""
  from absl import flags

  from alexnet_jax.benchmarks import harness
  from alexnet_jax.benchmarks import model as model_bench

  harness.define_csv(
      fv,
      'target',
      tuple(compile_targets.TARGETS) + ('auto',),
      f'Comma-separated subset of {",".join(compile_targets.TARGETS)}, or '
      "auto: this host's GPU or TPU.",
      default=['v5e', 'h100'],
  )
  harness.define_csv(
      fv,
      'modes',
      tuple(MODES),
      f'Comma-separated subset of {",".join(MODES)}.',
      default=['single', 'model'],
  )
  harness.define_csv(
      fv, 'variant', model_bench.VARIANTS, 'Model variants.', default=['paper']
  )
  harness.define_csv(
      fv, 'dtype', model_bench.DTYPES, 'Model dtypes.', default=['bfloat16']
  )
  harness.define_positive(
      fv,
      'batch',
      'Images per replica (data shard); the step takes batch x data.',
      default=128,
  )
  harness.define_positive(
      fv, 'image-size', 'Input side in pixels.', default=224
  )
  harness.define_width_scale_flag(fv)
  harness.define_positive(
      fv, 'data', 'Data shards of the jit and pmap modes.', default=4
  )
  flags.DEFINE_multi_string(
      'set',
      [],
      'A config override KEY=VALUE, e.g. model.lrn.enabled=False '
      '(repeatable).',
      flag_values=fv,
  )
  harness.define_out_flag(fv)


def parse_args(argv, prog='alexnet_jax.benchmark compile'):
  """argv (flags only) -> the namespace `run` reads (tests; the command
  parses through benchmark.py)."""
  from absl import flags

  from alexnet_jax.benchmarks import harness

  fv = flags.FlagValues()
  define_flags(fv)
  try:
    rest = fv([prog, *argv])
  except flags.Error as e:
    raise SystemExit(f'{prog}: {e}') from None
  if rest[1:]:
    raise SystemExit(f'{prog}: unexpected arguments {rest[1:]}')
  args = harness.namespace(fv)
  args.command_line = ' '.join(['python -m', prog, *argv])
  return args


def _auto_target():
  """This host's chip as a target (for `--target auto`, run.sh)."""
  from alexnet_jax.benchmarks import device

  kind = device.probe()['device_kind']
  return kind, compile_targets.for_device_kind(kind)


def run(args):
  from alexnet_jax.benchmarks import harness

  records = []
  if args.target == ['auto']:
    kind, name = _auto_target()
    if name is None:  # a CPU host, or a chip without a target (yet)
      reason = f'this host has {kind!r}, none of ' + ', '.join(
          compile_targets.TARGETS
      )
      record = dict(benchmark='compile', target='auto', skipped=reason)
      harness.emit(harness.stamp(record, args.command_line), args.out)
      return [record]
    args.target = [name]
  for name in args.target:
    for variant in args.variant:
      for dtype in args.dtype:
        for mode in args.modes:
          record = measure(
              name,
              mode,
              variant=variant,
              dtype=dtype,
              batch=args.batch,
              image_size=args.image_size,
              data=args.data,
              overrides=args.set,
              width_scale=args.width_scale,
          )
          record.pop('hlo', None)
          harness.emit(harness.stamp(record, args.command_line), args.out)
          records.append(record)
  print_table(records)
  return records


def print_table(records, file=None):
  file = file or sys.stdout
  rows = [r for r in records if r.get('benchmark') == 'compile']
  if not rows:
    return
  print(
      '\n| target | mode | chips | batch | dtype | GFLOP/chip (model, XLA) | '
      'GB accessed/chip | temp MB | fits | collective MB | bound ms | '
      'img/s/chip | of peak | compile s |\n|' + '---|' * 14,
      file=file,
  )
  for r in rows:
    if 'skipped' in r:
      print(
          f"| {r['target']} | {r['mode']} | {r['devices']} | {r['batch']} | "
          f"{r['dtype']} | skipped: {r['skipped']} |" + ' |' * 8,
          file=file,
      )
      continue
    f = r['roofline']
    coll = sum(c['mb'] for c in r['collectives'].values())
    bound = f.get('bound_ms')
    print(
        f"| {r['target']} | {r['mode']} | {r['devices']} | {r['batch']} | "
        f"{r['dtype']} | {r['model_gflop']:.0f}, {r['xla_gflop']:.0f} | "
        f"{r['gb_accessed']:.2f} | {r['memory']['temp_mb']:.0f} | "
        f"{r['memory']['fits']} | {coll:.0f} | "
        + (
            f"{bound:.2f} | {f['img_per_s_per_chip']:.0f} | "
            f"{f['bound_frac_of_peak']:.0%} | "
            if bound
            else '- | - | - | '
        )
        + f"{r['compile_s']} |",
        file=file,
    )


def main(argv, prog='alexnet_jax.benchmark compile'):
  """`benchmark compile` with these flags (tests)."""
  return run(parse_args(argv, prog))
