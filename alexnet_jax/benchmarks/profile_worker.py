"""The profile and memory benchmarks' worker: the trainer's step, traced
(`profile`) or only compiled for XLA's memory plan (`memory`)."""

import collections
import glob
import gzip
import json
import os
import re
import tempfile

import jax

from alexnet_jax.benchmarks import model_jax_worker  # sets the XLA flags
from alexnet_jax.benchmarks import worker


def _current_rss_mb():
  try:
    with open('/proc/self/status') as f:
      return int(re.search(r'VmRSS:\s+(\d+)', f.read()).group(1)) / 1024
  except (OSError, AttributeError):
    return None


def _param_copies(hlo):
  """[(parameter name, bytes)] of entry parameters the step copies."""
  entry = hlo[hlo.index('\nENTRY') :]
  entry = entry[: entry.index('\n}')]
  params = dict(
      re.findall(
          r'(%[\w.\-]+) = (\w+\[[\d,]*\])[^\n]*? parameter\(\d+\)', entry
      )
  )
  sizes = dict(f32=4, s32=4, u32=4, bf16=2, f16=2, s8=1, u8=1, pred=1)
  out = []
  for operand in re.findall(r' copy\((%[\w.\-]+)\)', entry):
    if operand in params and 'params' in operand:
      dtype, dims = re.match(r'(\w+)\[([\d,]*)\]', params[operand]).groups()
      n = 1
      for d in filter(None, dims.split(',')):
        n *= int(d)
      out.append((operand, n * sizes.get(dtype, 4)))
  return out


def setup(spec) -> worker.Job:
  built = model_jax_worker.build_jax_train(spec)
  run = model_jax_worker.train_run(built)

  if spec['what'] == 'memory':
    mem = built['compiled'].memory_analysis()
    copies = _param_copies(built['compiled'].as_text())
    rss_compiled = _current_rss_mb()
    worker.release_free_heap()
    facts = dict(
        argument_mb=mem.argument_size_in_bytes / 2**20,
        output_mb=mem.output_size_in_bytes / 2**20,
        alias_mb=mem.alias_size_in_bytes / 2**20,
        temp_mb=mem.temp_size_in_bytes / 2**20,
        copied_params=len(copies),
        copied_param_mb=sum(b for _, b in copies) / 2**20,
        rss_after_compile_mb=rss_compiled,
        rss_after_trim_mb=_current_rss_mb(),
        compile_s=built['compile_s'],
        version=jax.__version__,
        xla_flags=os.environ.get('XLA_FLAGS', ''),
    )
    return worker.Job(run=lambda i: None, facts=facts)

  def trace():
    with tempfile.TemporaryDirectory() as d:
      with jax.profiler.trace(d):
        run(-1)
      (path,) = glob.glob(f'{d}/**/*.trace.json.gz', recursive=True)
      with gzip.open(path) as f:
        events = json.load(f)['traceEvents']
    total, count = collections.Counter(), collections.Counter()
    for e in events:
      # XLA's ops carry their HLO name; runtime frames (ThunkExecutor,
      # Python calls) span whole steps and are left out.
      if e.get('ph') == 'X' and 'hlo_op' in e.get('args', {}):
        total[e['name']] += e['dur'] / 1e3
        count[e['name']] += 1
    return dict(ops=[(n, ms, count[n]) for n, ms in total.most_common()])

  return worker.Job(
      run=run,
      facts=dict(
          compile_s=built['compile_s'],
          version=jax.__version__,
          xla_flags=os.environ.get('XLA_FLAGS', ''),
      ),
      finish=trace,
  )
