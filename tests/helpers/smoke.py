"""The smoke config at a tiny size, as the trainer tests run it
(test_train, test_on_accelerator)."""

import sys

from alexnet_jax.configs import smoke

STEPS = 40
# The smoke config at 1/16 width (conv 6/16/24/24/16, fc 256), batch 8.
# Plateau with patience 0 so lr drops happen and must survive a resume.
TINY = {
    'model.width_scale': 0.0625,
    'optim.batch_size': 8,
    'optim.schedule': 'plateau',
    'optim.plateau.patience': 0,
    'optim.plateau.min_delta': 0.0,
    'train.num_train_steps': STEPS,
    'train.log_every_steps': 1,
    'train.eval_every_steps': 10,
    'train.checkpoint_every_steps': 5,
    'train.keep_checkpoints': 2,
    'train.max_eval_batches': 2,
}


def tiny_config(**overrides):
  config = smoke.get_config()
  for dotted, value in {**TINY, **overrides}.items():
    *path, last = dotted.split('.')
    node = config
    for part in path:
      node = node[part]
    node[last] = value
  return config


def main_command(workdir, *flags, **overrides):
  """`python -m alexnet_jax.main` on the smoke config at the tiny size:
  extra flags, then TINY's and `overrides`' --config.FIELD=VALUE."""
  return [
      sys.executable,
      '-m',
      'alexnet_jax.main',
      '--config=configs/smoke.py',
      f'--workdir={workdir}',
      *flags,
  ] + [f'--config.{k}={v}' for k, v in {**TINY, **overrides}.items()]
