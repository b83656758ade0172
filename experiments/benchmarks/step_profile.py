"""Where one train step's time goes: a jax.profiler trace, summed by op.

    python experiments/benchmarks/step_profile.py [torchvision|paper] [BATCH] [float32|bfloat16]

Builds the step like alexnet_jax.benchmark (SGD momentum + weight decay,
dropout, donated state), times three steps, traces a fourth and prints the
40 longest ops (ffi_call.* are the oneDNN convolutions, ynn_fusion.* XLA's
YNNPACK dots). Output of the 2026-12-01 runs: step_profile_2026-12-01.txt.
"""
import sys, os, time, gzip, json, glob, collections
import jax, jax.numpy as jnp, optax
from alexnet_jax.core import model as model_lib
from alexnet_jax.configs import paper
variant = sys.argv[1] if len(sys.argv) > 1 else 'torchvision'
B = int(sys.argv[2]) if len(sys.argv) > 2 else 128
cfg = paper.get_config().model; cfg.variant = variant; cfg.towers = 2 if variant == 'paper' else 1; cfg.dtype = sys.argv[3] if len(sys.argv) > 3 else 'float32'
net = model_lib.from_config(cfg)
params = model_lib.init(net, jax.random.key(0), 224)['params']
images = jax.random.normal(jax.random.key(1), (B, 224, 224, 3)); labels = jax.random.randint(jax.random.key(2), (B,), 0, 1000)
tx = optax.chain(optax.add_decayed_weights(5e-4), optax.sgd(0.01, momentum=0.9))
def step(state, key):
  params, opt = state
  def lf(p): return optax.softmax_cross_entropy_with_integer_labels(net.apply({'params': p}, images, train=True, rngs={'dropout': key}), labels).mean()
  l, g = jax.value_and_grad(lf)(params); u, opt = tx.update(g, opt, params)
  return (optax.apply_updates(params, u), opt), l
f = jax.jit(step, donate_argnums=(0,))
state = (params, tx.init(params)); key = jax.random.key(3)
for _ in range(2): state, l = f(state, key); l.block_until_ready()
ts=[]
for _ in range(3):
  t=time.perf_counter(); state, l = f(state, key); l.block_until_ready(); ts.append(time.perf_counter()-t)
print('step ms', [round(t*1e3) for t in ts])
d = '/tmp/prof_trace'; os.system(f'rm -rf {d}')
with jax.profiler.trace(d):
  state, l = f(state, key); l.block_until_ready()
fn = glob.glob(f'{d}/**/*.trace.json.gz', recursive=True)[0]
tr = json.load(gzip.open(fn))
agg = collections.Counter(); cnt = collections.Counter()
for e in tr['traceEvents']:
  if e.get('ph') == 'X':
    agg[e['name']] += e['dur']; cnt[e['name']] += 1
for n, t in agg.most_common(40): print(f'{t/1e3:9.1f} ms  {cnt[n]:4d}  {n[:110]}')
