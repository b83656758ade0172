"""The model benchmark's PyTorch worker: the twin's train step or eval-mode
forward pass (torch_models), and torch.mm's matmul peak. No JAX here."""

import torch

from alexnet_jax.benchmarks import specs
from alexnet_jax.benchmarks import worker
from alexnet_jax.reference import torch_models


def matmul_gflops(n, dtype, repeats=3, device='cpu'):
  """Best-of-`repeats` GFLOP/s of an n x n @ n x n torch.mm on `device`."""
  a = torch.randn(n, n, dtype=getattr(torch, dtype), device=device)
  sync = torch.cuda.synchronize if device == 'cuda' else (lambda: None)
  return worker.best_gflops(lambda: (torch.mm(a, a), sync()), n, repeats)


def setup(spec) -> worker.Job:
  """The worker's job for a spec (benchmark train|infer|matmul)."""
  if spec['benchmark'] == 'matmul':
    return worker.Job(
        run=lambda i: None,
        facts=dict(version=torch.__version__),
        finish=lambda: dict(
            matmul_gflops={
                d: matmul_gflops(spec['matmul_size'], d) for d in specs.DTYPES
            }
        ),
    )
  config = specs.config_for(spec)
  torch.manual_seed(0)
  size = config.data.image_size
  # flatten='chw': the twin as a PyTorch user writes it (no permute).
  net = torch_models.from_config(config.model, image_size=size, flatten='chw')
  device = spec.get('device', 'cpu')
  if device == 'cuda':
    # The same maths as JAX's default precision on the GPU (TF32).
    torch.backends.cuda.matmul.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.allow_tf32 = spec.get('precision') != 'highest'
    torch.backends.cudnn.benchmark = True
  net = net.to(device)
  batch = specs.fake_batch(config)
  images = torch.from_numpy(batch['image'].transpose(0, 3, 1, 2).copy()).to(
      device
  )
  labels = torch.from_numpy(batch['label'].astype('int64')).to(device)
  bf16 = config.model.dtype == 'bfloat16'
  rss_base = worker.rss_mb()

  if spec['benchmark'] == 'train':
    step = torch_models.TrainStep(
        net, config.optim, autocast=torch.bfloat16 if bf16 else None
    )

    def run(i):
      del i
      out = step(images, labels)
      return out['loss'].item(), out['param_norm'].item()

  else:
    net.eval()

    def run(i):
      del i
      with (
          torch.inference_mode(),
          torch.autocast(device, dtype=torch.bfloat16, enabled=bf16),
      ):
        return net(images).float().sum().item()

  dtypes = sorted({'float32', spec['dtype']})
  return worker.Job(
      run=run,
      facts=dict(
          compile_s=None,
          rss_base_mb=rss_base,
          version=torch.__version__,
          threads=torch.get_num_threads(),
          platform=device,
      ),
      finish=lambda: dict(
          matmul_gflops={
              d: matmul_gflops(spec['matmul_size'], d, device=device)
              for d in dtypes
          }
      ),
  )
