"""The paper's SGD rule, learning-rate schedules and reduce-on-plateau.

The paper's update (section 5), for every weight w with gradient g:

    v <- momentum * v - weight_decay * lr * w - lr * g
    w <- w + v

`optax.chain(add_decayed_weights(wd), scale_by_learning_rate(lr),
trace(momentum))` is this rule exactly, lr drops included: only new gradients
see a new lr. (`optax.sgd(schedule, momentum)` instead applies lr after the
momentum trace, so a drop rescales the whole accumulated velocity.)

The learning rate lives in the optimiser state (`optax.inject_hyperparams`):
the train step writes `schedule(step) * plateau scale` into it before each
update, so it is checkpointed with everything else and a resumed run uses
exactly the rate the interrupted one would have.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax


def is_bias(path) -> bool:
  """True for bias parameters (the last key of the path is 'bias')."""
  last = path[-1]
  return getattr(last, 'key', getattr(last, 'name', None)) == 'bias'


def scale_by_group(multiplier_fn) -> optax.GradientTransformation:
  """Multiplies each update by multiplier_fn(path) (per-parameter-group lr)."""

  def update_fn(updates, state, params=None):
    del params
    updates = jax.tree_util.tree_map_with_path(
        lambda path, u: u * jnp.asarray(multiplier_fn(path), u.dtype), updates
    )
    return updates, state

  return optax.GradientTransformation(
      lambda params: optax.EmptyState(), update_fn
  )


def paper_sgd(
    learning_rate,
    momentum=0.9,
    weight_decay=5e-4,
    decay_biases=True,
    bias_lr_mult=1.0,
):
  """The paper's rule; Caffe's variant: decay_biases=False, bias_lr_mult=2.

  Weight decay is added to the gradient before the lr scaling (coupled, as
  in the paper and Caffe), and a parameter group's lr multiplier scales the
  decayed gradient too (Caffe's `lr_mult`). The mask and the multiplier are
  always in the chain (as all-True and 1.0 by default), so the optimiser
  state has the same structure whatever these switches say and a run can
  be resumed with them changed.
  """
  decay_mask = lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: decay_biases or not is_bias(path), params
  )
  return optax.chain(
      optax.add_decayed_weights(weight_decay, mask=decay_mask),
      optax.scale_by_learning_rate(learning_rate),
      scale_by_group(lambda path: bias_lr_mult if is_bias(path) else 1.0),
      optax.trace(decay=momentum, nesterov=False),
  )


def make_optimizer(optim_config: ml_collections.ConfigDict):
  """paper_sgd with the lr injected as a settable hyperparameter."""
  o = optim_config
  return optax.inject_hyperparams(
      paper_sgd,
      static_args=('momentum', 'weight_decay', 'decay_biases', 'bias_lr_mult'),
  )(
      learning_rate=o.lr,
      momentum=o.momentum,
      weight_decay=o.weight_decay,
      decay_biases=o.decay_biases,
      bias_lr_mult=o.bias_lr_mult,
  )


def with_learning_rate(opt_state, lr):
  """The optimiser state with its learning rate set to `lr`."""
  hyper = dict(opt_state.hyperparams)
  hyper['learning_rate'] = jnp.asarray(lr, hyper['learning_rate'].dtype)
  return opt_state._replace(hyperparams=hyper)


def learning_rate(opt_state):
  return opt_state.hyperparams['learning_rate']


# ------------------------------------------------------------- schedules --


def base_schedule(
    optim_config, *, steps_per_epoch: float | None, total_steps: int | None
):
  """step -> lr before any plateau drops (constant for 'plateau').

  The run's sizes may be None for 'plateau' and 'constant'.
  """
  o = optim_config
  if o.schedule in ('plateau', 'constant'):
    return optax.constant_schedule(o.lr)
  if o.schedule in ('step', 'cosine') and (
      steps_per_epoch is None or total_steps is None
  ):
    raise ValueError(
        f"config.optim.schedule={o.schedule!r} needs the run's "
        'steps per epoch and total steps: pass '
        'sizes=train.plan(config, info) to make_train_step'
    )
  if o.schedule == 'step':
    boundaries = {
        max(1, int(round(e * steps_per_epoch))): 0.1 for e in o.step_epochs
    }
    return optax.piecewise_constant_schedule(o.lr, boundaries)
  if o.schedule == 'cosine':
    warmup = int(round(o.warmup_epochs * steps_per_epoch))
    if warmup == 0:
      return optax.cosine_decay_schedule(o.lr, max(1, total_steps))
    return optax.warmup_cosine_decay_schedule(
        0.0, o.lr, warmup, max(total_steps, warmup + 1), end_value=0.0
    )
  raise ValueError(
      f'config.optim.schedule={o.schedule!r} is not one of '
      'plateau, step, cosine, constant'
  )


# ----------------------------------------------------- reduce on plateau --


def plateau_init() -> dict:
  """Reduce-on-plateau state (numpy scalars, checkpointed with the state)."""
  return dict(
      scale=np.float32(1.0),
      best=np.float32(np.inf),
      bad_evals=np.int32(0),
      drops=np.int32(0),
  )


@dataclasses.dataclass(frozen=True)
class PlateauDecision:
  state: dict
  dropped: bool
  message: str


def plateau_update(
    state: dict, val_error: float, plateau_config: ml_collections.ConfigDict
) -> PlateauDecision:
  """The paper's "divide by 10 when the validation error stops improving".

  An evaluation improves when its error is below the best so far by more
  than `min_delta`. After more than `patience` evaluations in a row without
  improvement (PyTorch's ReduceLROnPlateau semantics), the lr is multiplied
  by `factor` (at most `max_drops` times) and the count restarts.
  """
  p = plateau_config
  best, bad = float(state['best']), int(state['bad_evals'])
  scale, drops = float(state['scale']), int(state['drops'])
  dropped = False
  if not math.isfinite(val_error):
    bad += 1
  elif val_error < best - p.min_delta:
    best, bad = val_error, 0
  else:
    bad += 1
  if bad > p.patience and drops < p.max_drops:
    scale *= p.factor
    drops += 1
    bad = 0
    dropped = True
  new = dict(
      scale=np.float32(scale),
      best=np.float32(best),
      bad_evals=np.int32(bad),
      drops=np.int32(drops),
  )
  message = (
      f'lr x{p.factor:g} (drop {drops} of {p.max_drops}): validation '
      f'error {val_error:.4f} has not improved on {best:.4f}'
      if dropped
      else ''
  )
  return PlateauDecision(new, dropped, message)
