"""The train and eval steps, and the factory of the compiled train step.

`make_train_step(config, model, par)` builds the step training runs;
the trainer (train.py, which re-exports everything here), the benchmarks,
the profiling tools and the tests all get theirs from it. The step
functions are pure; parallel.py decides how they run (jit with shardings,
or pmap, where they receive `axis_name`).

Nothing here imports TensorFlow (tf.data and the metric writers live in
the training loop's modules), so a process that only steps, such as a
benchmark worker, does not carry it.
"""

from collections.abc import Callable
import dataclasses
import functools
from typing import Any

from clu import metrics
import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from alexnet_jax.core import model as model_lib
from alexnet_jax.core import optim
from alexnet_jax.core import parallel


@flax.struct.dataclass
class TrainState:
  step: jax.Array  # int32[]: updates done so far (= data position)
  params: Any
  opt_state: Any  # holds the current learning rate (optim.py)
  rng: jax.Array  # uint32[2]; step k's dropout key = fold_in(rng, k)
  plateau: dict  # optim.plateau_init(): reduce-on-plateau state


# ------------------------------------------------------------ metrics -----
# Errors, not accuracies: the paper reports top-1 and top-5 ERROR rates.


@flax.struct.dataclass
class TrainMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  top1_error: metrics.Average.from_output('top1_error')
  top5_error: metrics.Average.from_output('top5_error')
  learning_rate: metrics.LastValue.from_output('learning_rate')
  grad_norm: metrics.Average.from_output('grad_norm')
  param_norm: metrics.LastValue.from_output('param_norm')


@flax.struct.dataclass
class EvalMetrics(metrics.Collection):
  loss: metrics.Average.from_output('loss')
  top1_error: metrics.Average.from_output('top1_error')
  top5_error: metrics.Average.from_output('top5_error')


def topk_errors(scores: jnp.ndarray, labels: jnp.ndarray, k: int = 5):
  """(top-1 error, top-k error) per example as float32 0/1 arrays.

  scores: f32[B, C] (logits or probabilities); labels: int32[B].
  """
  k = min(k, scores.shape[-1])
  label_score = jnp.take_along_axis(scores, labels[:, None], axis=-1)
  # The label's rank: how many classes score strictly higher than it.
  rank = (scores > label_score).sum(axis=-1)
  return ((rank >= 1).astype(jnp.float32), (rank >= k).astype(jnp.float32))


# ------------------------------------------------------------ pure steps --


def cross_entropy(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels)


def train_step(
    state: TrainState,
    batch,
    *,
    apply_fn: Callable,
    tx: optax.GradientTransformation,
    lr_fn: Callable,
    axis_name: str | None = None,
    bare: bool = False,
    prepare: Callable | None = None,
):
  """One SGD step. batch: image f32[B, H, W, 3], label int32[B].

  With `prepare` (device_augment.prepare_fn), batch['image'] is uint8 and
  prepare(batch, step, first) makes the model input inside the step (crop,
  flip, PCA lighting, normalisation); `first` is the global index of this
  device's first image under pmap (0 otherwise: jit sees the global batch),
  so every layout draws the same images.

  Returns the new state and its TrainMetrics (top-1/top-5 errors, the
  learning rate, gradient and parameter norms beside the loss). bare=True
  leaves out everything but forward, backward and update (the lr stays
  what the state holds) and returns the mean loss instead: only for
  measuring what the rest costs (`benchmark overhead`).
  """
  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:  # pmap: a different mask on every device
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))

  images = batch['image']
  if prepare is not None:
    first = 0
    if axis_name is not None:
      first = jax.lax.axis_index(axis_name) * images.shape[0]
    images = prepare(batch, state.step, first)

  def loss_fn(params):
    logits = apply_fn(
        {'params': params},
        images,
        train=True,
        rngs={'dropout': dropout_rng},
    )
    losses = cross_entropy(logits, batch['label'])
    return losses.mean(), (losses, logits)

  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  (loss, (losses, logits)), grads = grad_fn(state.params)
  if axis_name is not None:
    grads = jax.lax.pmean(grads, axis_name)
  opt_state = state.opt_state
  if not bare:
    lr = lr_fn(state.step) * state.plateau['scale']
    opt_state = optim.with_learning_rate(opt_state, lr)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state
  )
  if bare:
    if axis_name is not None:
      loss = jax.lax.pmean(loss, axis_name)
    return new_state, loss
  top1, top5 = topk_errors(logits, batch['label'])
  outputs = dict(
      loss=losses,
      top1_error=top1,
      top5_error=top5,
      learning_rate=lr,
      grad_norm=optax.tree.norm(grads),
      param_norm=optax.tree.norm(params),
  )
  if axis_name is None:
    metrics = TrainMetrics.single_from_model_output(**outputs)
  else:
    metrics = TrainMetrics.gather_from_model_output(
        axis_name=axis_name, **outputs
    )
  return new_state, metrics


def eval_step(
    params, batch, *, apply_fn: Callable, axis_name: str | None = None
):
  """Metrics of one eval batch; 10-crop batches average the softmax.

  batch: image f32[B, H, W, 3] or f32[B, crops, H, W, 3], label int32[B],
  mask bool[B] (False for the padding of the last batch).
  """
  images = batch['image']
  if images.ndim == 5:
    b, n = images.shape[:2]
    logits = apply_fn(
        {'params': params},
        images.reshape((b * n,) + images.shape[2:]),
        train=False,
    )
    probs = jax.nn.softmax(logits).reshape(b, n, -1).mean(axis=1)
    log_probs = jnp.log(jnp.maximum(probs, jnp.finfo(jnp.float32).tiny))
  else:
    logits = apply_fn({'params': params}, images, train=False)
    log_probs = jax.nn.log_softmax(logits)
  labels = batch['label']
  losses = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
  top1, top5 = topk_errors(log_probs, labels)
  outputs = dict(
      loss=losses, top1_error=top1, top5_error=top5, mask=batch['mask']
  )
  if axis_name is None:
    return EvalMetrics.single_from_model_output(**outputs)
  return EvalMetrics.gather_from_model_output(axis_name=axis_name, **outputs)


# ------------------------------------------------------------ the factory -


@dataclasses.dataclass
class Plan:
  """Derived sizes, computed once at start-up (and logged)."""

  num_train_examples: int
  steps_per_epoch: float
  total_steps: int


def create_train_state(config, module, tx, params=None) -> TrainState:
  """The initial state, on the host (unplaced).

  Parameters are drawn with an 'rbg' key from config.train.seed unless
  `params` are given: XLA:CPU compiles threefry's init of the sixteen
  parameter arrays about 5x slower (tens of seconds). Dropout keys stay
  threefry (`rng`), whose masks do not depend on how the batch is sharded.
  """
  if params is None:
    init_rng = jax.random.key(config.train.seed, impl='rbg')
    variables = model_lib.init(module, init_rng, config.data.image_size)
    params = variables['params']
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      rng=jax.random.PRNGKey(config.train.seed),
      plateau=jax.tree.map(jnp.asarray, optim.plateau_init()),
  )


@dataclasses.dataclass(frozen=True)
class TrainStep:
  """The trainer's compiled step for one config, model and layout.

  `step(state, batch) -> (state, TrainMetrics)` takes a placed state
  (`par.place_state(step.init_state())`) and a placed batch
  (`par.shard_batch`); the state is donated. Built by make_train_step.
  """

  config: ml_collections.ConfigDict
  par: parallel.Parallel
  tx: optax.GradientTransformation
  lr_fn: Callable  # step -> lr before plateau drops
  bare: bool
  compiled: parallel.Step
  prepare: Callable | None = None

  def __call__(self, state, batch):
    return self.compiled(state, batch)

  def lower(self, state, batch):
    return self.compiled.lower(state, batch)

  def init_state(self, params=None) -> TrainState:
    """The initial state as NumPy arrays (see create_train_state), which
    `par.place_state` copies: placing it twice gives two states, each of
    which the step may donate.

    What create_train_state made on the device is copied, not viewed:
    placed views can alias those buffers, which the first step then cannot
    donate (it allocates the state anew: about 230 MB more peak memory for
    the torchvision variant). To place one state once, without the host
    copies, `par.place_state(create_train_state(...))` as the trainer does.
    """
    return jax.tree.map(
        lambda x: np.array(x) if isinstance(x, jax.Array) else np.asarray(x),
        create_train_state(self.config, self.par.model, self.tx, params),
    )


def make_train_step(
    config,
    model,
    par=None,
    *,
    sizes: Plan | None = None,
    bare: bool = False,
    prepare: Callable | None = None,
) -> TrainStep:
  """The train step training runs, for `model` laid out by `par`.

  Training, the benchmarks, the profiling tools and the tests all build
  their step here, so what they time and check is what trains.

  Args:
    config: the run's config (optim.* sets the update rule and schedule).
    model: the Flax module (`model.from_config(config.model)`).
    par: its parallel.Parallel; by default made from config and model.
    sizes: the run's Plan (train.plan(config, info)), which the 'step' and
      'cosine' schedules need; 'plateau' and 'constant' do without.
    bare: forward, backward and update only (train_step's `bare`).
    prepare: train_step's `prepare`, for uint8 batches
      (input_pipeline.device_prepare gives the trainer's).
  """
  if par is None:
    par = parallel.Parallel(config, model)
  elif par.model != model:
    raise ValueError(
        'make_train_step: par was built for another model '
        f'({type(par.model).__name__}); pass the model it '
        'places, or par=None'
    )
  tx = optim.make_optimizer(config.optim)
  lr_fn = optim.base_schedule(
      config.optim,
      steps_per_epoch=sizes and sizes.steps_per_epoch,
      total_steps=sizes and sizes.total_steps,
  )
  compiled = par.jit_step(
      functools.partial(
          train_step,
          apply_fn=par.apply,
          tx=tx,
          lr_fn=lr_fn,
          bare=bare,
          prepare=prepare,
      )
  )
  return TrainStep(config, par, tx, lr_fn, bare, compiled, prepare)
