"""Everything that knows about devices: mesh, placement, parallel steps.

The mesh has two axes, `data` and `model` (`config.parallel.mesh`, -1 fills
the remaining devices). Devices are laid out [data, model], so the two towers
of one replica sit on neighbouring devices.

* model=1, data_parallel='jit' (default): `jax.jit` with `NamedSharding`;
  the batch is split over `data`, parameters are replicated and XLA averages
  the gradients with one all-reduce per step.
* model=1, data_parallel='pmap': the classic `jax.pmap` path (JAX keeps pmap
  in maintenance mode; kept because users ask for it). State is stacked with
  one replica per device, the step is bound with `axis_name='data'` and
  `jax.lax.pmean`s its gradients itself.
* model=2: the paper's split. The forward runs under `jax.shard_map` over
  `model` (and `data`): each device holds only its own tower's parameters
  and optimiser state (leading tower axis sharded), fc8's columns are split
  too when num_classes is even (about 30.5M parameters per device instead
  of 61M; 32.5M when fc8 is replicated), and the towers talk only where the
  paper's GPUs did: before conv3, fc6, fc7 and fc8, plus the logits.
* data x model (e.g. 2x2): both at once; gradients of a tower's parameters
  are summed over `data` inside the shard_map'ed backward pass.

Multi-host: `setup_devices` calls `jax.distributed.initialize`; each process
feeds its slice of the global batch (`shard_batch`), and the same code runs.

Call `setup_devices(config)` before anything touches a device.
"""

from collections.abc import Callable
import functools
import logging
import os

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import ml_collections
import numpy as np

from alexnet_jax.core import config_checks
from alexnet_jax.core.config_checks import ConfigError

DATA = 'data'
MODEL = 'model'
AXES = (DATA, MODEL)

# Layers whose parameters carry a leading tower axis (model.TowerConv/Dense).
TOWER_LAYERS = ('conv1', 'conv2', 'conv3', 'conv4', 'conv5', 'fc6', 'fc7')
# Environment fallbacks for the multi-host fields of config.parallel.
ENV_COORDINATOR = 'JAX_COORDINATOR_ADDRESS'
ENV_NUM_PROCESSES = 'JAX_NUM_PROCESSES'
ENV_PROCESS_ID = 'JAX_PROCESS_ID'


# ----------------------------------------------------------------------------
# Start-up: simulated CPU devices and multi-host initialisation.


def _multihost_args(p):
  """(coordinator, num_processes, process_id) from config, else environment.

  coordinator 'auto' means: let JAX detect the cluster (Cloud TPU pod slice,
  SLURM, Open MPI); None means a single process.
  """
  address = p.coordinator_address or os.environ.get(ENV_COORDINATOR, '')
  num = p.num_processes
  if num == 1 and os.environ.get(ENV_NUM_PROCESSES):
    num = int(os.environ[ENV_NUM_PROCESSES])
  pid = p.process_id
  if pid == 0 and os.environ.get(ENV_PROCESS_ID):
    pid = int(os.environ[ENV_PROCESS_ID])
  if not address:
    if num > 1:
      raise ConfigError(
          f'config.parallel.num_processes={num} needs '
          "config.parallel.coordinator_address=HOST:PORT (process 0's "
          f'address, or ${ENV_COORDINATOR}), or "auto" on a Cloud TPU pod '
          'slice / SLURM / Open MPI'
      )
    return None, 1, 0
  if address == 'auto':
    return 'auto', None, None
  if ':' not in address:
    raise ConfigError(
        f'config.parallel.coordinator_address={address!r} must '
        'be HOST:PORT (e.g. 10.0.0.1:1234) or "auto"'
    )
  if not 0 <= pid < num:
    raise ConfigError(
        f'config.parallel.process_id={pid} must be in '
        f'[0, num_processes={num})'
    )
  return address, num, pid


def setup_devices(
    config: ml_collections.ConfigDict,
    *,
    initialization_timeout: int = 300,
    heartbeat_timeout_seconds: int = 100,
):
  """Sets device options; call before anything touches a device.

  `config.parallel.cpu_devices=N` simulates N CPU devices (JAX's
  `jax_num_cpu_devices`); a coordinator address (config or
  $JAX_COORDINATOR_ADDRESS, with $JAX_NUM_PROCESSES / $JAX_PROCESS_ID) starts
  `jax.distributed` with gloo collectives between CPU processes.
  """
  p = config.parallel
  address, num, pid = _multihost_args(p)
  if p.cpu_devices:
    try:
      jax.config.update('jax_num_cpu_devices', p.cpu_devices)
    except RuntimeError as e:
      # Backends already up (tests force devices with XLA_FLAGS): fine if
      # there are already enough.
      have = jax.local_device_count()
      if have < p.cpu_devices:
        raise ConfigError(
            f'config.parallel.cpu_devices={p.cpu_devices} must be set before '
            f'JAX starts; it already started with {have} devices. Call '
            'parallel.setup_devices(config) first thing in main.'
        ) from e
  if address is None:
    return
  if jax.distributed.is_initialized():
    return
  # Cross-process CPU collectives (the default in JAX 0.10; set so an
  # older or newer default cannot silently change it).
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if address == 'auto':
    jax.distributed.initialize(initialization_timeout=initialization_timeout)
  else:
    jax.distributed.initialize(
        coordinator_address=address,
        num_processes=num,
        process_id=pid,
        initialization_timeout=initialization_timeout,
        heartbeat_timeout_seconds=heartbeat_timeout_seconds,
    )
  logging.info(
      'jax.distributed: process %d of %d, %d local / %d devices',
      jax.process_index(),
      jax.process_count(),
      jax.local_device_count(),
      jax.device_count(),
  )


# ----------------------------------------------------------------------------
# The mesh.


def mesh_shape(
    config: ml_collections.ConfigDict, num_devices: int
) -> tuple[int, int]:
  """(data, model) for `num_devices`, with clear errors for what cannot work.

  What the config alone decides (the axes' values, pmap without towers,
  towers for mesh.model=2) is config_checks.check_parallel's, run here
  first; this checks the mesh against the devices present.
  """
  config_checks.check_parallel(config)
  p = config.parallel
  data, model = p.mesh.data, p.mesh.model
  if data == -1:
    if num_devices % model:
      want = -(-num_devices // model) * model
      hint = (
          f'set config.parallel.cpu_devices={want} to simulate {want} '
          'CPU devices'
          if jax.default_backend() == 'cpu'
          else 'use config.parallel.mesh.model=1'
      )
      raise ConfigError(
          f'config.parallel.mesh.model={model} does not divide '
          f'the {num_devices} devices present '
          f'({jax.default_backend()}): {hint}'
      )
    data = num_devices // model
  if data * model > num_devices:
    hint = (
        f'set config.parallel.cpu_devices={data * model} to simulate them '
        'on CPU'
        if jax.default_backend() == 'cpu'
        else 'use a smaller mesh'
    )
    raise ConfigError(
        f'config.parallel.mesh asks for data={data} x model={model} = '
        f'{data * model} devices but only {num_devices} are present '
        f'({jax.default_backend()}): {hint}, or data=-1 to use what is there'
    )
  config_checks.check_batch_splits(
      config.optim.batch_size,
      data,
      f'{data} devices, from config.parallel.mesh.data={p.mesh.data}',
  )
  return data, model


def make_mesh(
    config: ml_collections.ConfigDict, devices=None
) -> jax.sharding.Mesh:
  """The ('data', 'model') mesh `config.parallel.mesh` asks for."""
  devices = list(jax.devices() if devices is None else devices)
  data, model = mesh_shape(config, len(devices))
  used = data * model
  if used < len(devices):
    if jax.process_count() > 1:
      raise ConfigError(
          f'config.parallel.mesh uses {used} of {len(devices)} devices; with '
          'several processes every device must be in the mesh (data=-1)'
      )
    logging.warning(
        'parallel: the mesh uses %d of %d devices', used, len(devices)
    )
    devices = devices[:used]
  # Auto axes: jit propagates shardings as in JAX's classic behaviour.
  return jax.make_mesh(
      (data, model),
      AXES,
      axis_types=(jax.sharding.AxisType.Auto,) * 2,
      devices=devices,
  )


# ----------------------------------------------------------------------------
# Which parameter goes where.


def _key_name(key) -> str | None:
  for attr in ('key', 'name', 'idx'):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return None


def param_spec(path, leaf, *, towers: int = 2, split_fc8: bool = True) -> P:
  """The model-parallel PartitionSpec of one leaf of any state tree.

  A leaf is a tower parameter when its path ends like a parameter's
  ('conv3', 'kernel') and its shape has the leading tower axis; optimiser
  states mirror the parameter tree, so their momenta shard the same way.
  Everything else (step counters, learning rates, rng keys) is replicated.
  """
  names = [_key_name(k) for k in path]
  shape = getattr(leaf, 'shape', None) or np.shape(leaf)
  if len(names) < 2 or names[-1] not in ('kernel', 'bias'):
    return P()
  layer, kind = names[-2], names[-1]
  if layer in TOWER_LAYERS and len(shape) >= 1 and shape[0] == towers:
    return P(MODEL)  # [T, ...]: tower t on model device t
  if layer == 'fc8' and split_fc8:
    if kind == 'kernel' and len(shape) == 2 and shape[1] % towers == 0:
      return P(None, MODEL)  # [4096, C]: columns split by tower
    if kind == 'bias' and len(shape) == 1 and shape[0] % towers == 0:
      return P(MODEL)
  return P()


# ----------------------------------------------------------------------------
# The parallel runtime.


# Parallel.mode -> what it means.
MODES = {
    'single': 'one device',
    'jit': 'data parallel (jit with shardings)',
    'pmap': 'data parallel (pmap)',
    'model': 'two towers, one per device',
    'hybrid': 'data parallel x two towers',
}


class Parallel:
  """Placement and steps for one model on the mesh the config asks for.

  Attributes:
    mesh: the ('data', 'model') jax.sharding.Mesh.
    data_size, model_size: its axis sizes.
    mode: 'single', 'jit' (data parallel), 'pmap', 'model' or 'hybrid'.
  """

  def __init__(self, config: ml_collections.ConfigDict, model, *, devices=None):
    self.config = config
    self.model = model
    self.data_parallel = config.parallel.data_parallel
    self.mesh = make_mesh(config, devices)
    self.data_size = self.mesh.shape[DATA]
    self.model_size = self.mesh.shape[MODEL]
    num_classes = getattr(model, 'num_classes', None)
    # fc8 is split by columns only if the classes divide evenly.
    self.split_fc8 = bool(num_classes) and num_classes % 2 == 0
    if self.model_size == 2:
      # config_checks.check_parallel (mesh_shape) refused what cannot split.
      self._tower_model = model.clone(tower_axis=MODEL)
    if self.data_parallel == 'pmap':
      self.mode = 'pmap'
    elif self.model_size == 2:
      self.mode = 'hybrid' if self.data_size > 1 else 'model'
    else:
      self.mode = 'jit' if self.data_size > 1 else 'single'
    self._local_devices = [
        d
        for d in self.mesh.devices.flat
        if d.process_index == jax.process_index()
    ]
    if self.data_parallel == 'pmap':
      # pmap maps over this process's devices; arrays stacked along them.
      self._pmap_mesh = jax.make_mesh(
          (len(self._local_devices),),
          (DATA,),
          axis_types=(jax.sharding.AxisType.Auto,),
          devices=self._local_devices,
      )
    if config.optim.batch_size % jax.process_count():
      raise ConfigError(
          f'config.optim.batch_size={config.optim.batch_size} is not '
          f'divisible by the {jax.process_count()} processes: each feeds an '
          'equal share of the global batch'
      )

  def __repr__(self):
    return (
        f'Parallel(mode={self.mode}, data={self.data_size}, '
        f'model={self.model_size}, processes={jax.process_count()})'
    )

  def layout(self) -> dict:
    """What runs where, as the start of a run logs it and results.json
    records it: mode, mesh shape, devices, processes, batch per device."""
    devices = self.mesh.devices.flat
    batch = self.config.optim.batch_size
    return dict(
        mode=self.mode,
        description=MODES[self.mode],
        mesh={DATA: self.data_size, MODEL: self.model_size},
        devices=self.data_size * self.model_size,
        platform=next(iter(devices)).platform,
        processes=jax.process_count(),
        global_batch=batch,
        # Both towers of a data shard see the same images.
        per_device_batch=batch // self.data_size,
        dtype=self.config.model.dtype,
    )

  # -- shardings --------------------------------------------------------------

  def specs(self, tree):
    """PartitionSpecs of a state tree (params, optimiser state, TrainState)."""
    if self.model_size == 1:
      return jax.tree.map(lambda _: P(), tree)
    return jax.tree_util.tree_map_with_path(
        functools.partial(param_spec, split_fc8=self.split_fc8), tree
    )

  def shardings(self, tree):
    """NamedShardings of a state tree on the mesh (see `specs`)."""
    return jax.tree.map(lambda s: NamedSharding(self.mesh, s), self.specs(tree))

  @property
  def batch_sharding(self) -> NamedSharding:
    return NamedSharding(self.mesh, P(DATA))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, P())

  # -- placement --------------------------------------------------------------

  def place_state(self, tree):
    """Puts a host (NumPy) or device state tree where the mode keeps it.

    Works for any tree whose parameter-like leaves mirror the model's
    parameter paths, so a checkpoint written under one mesh restores under
    another: `place_state(to_host(state))`.
    """
    if self.data_parallel == 'pmap':
      n = len(self._local_devices)
      sharding = NamedSharding(self._pmap_mesh, P(DATA))
      return jax.tree.map(
          lambda x: jax.device_put(
              np.broadcast_to(np.asarray(x)[None], (n,) + np.shape(x)), sharding
          ),
          tree,
      )
    shardings = self.shardings(tree)
    if jax.process_count() == 1:
      return jax.device_put(tree, shardings)
    # Every process holds the whole host tree; each keeps its own shards.
    return jax.tree.map(
        lambda x, s: jax.make_array_from_callback(
            np.shape(x), s, lambda idx, x=np.asarray(x): x[idx]
        ),
        tree,
        shardings,
    )

  def shard_batch(self, batch):
    """This process's slice of the global batch -> global jax.Arrays.

    jit modes: leaves [b_local, ...] become global arrays [b_global, ...]
    split over `data`. pmap: leaves become [local devices, b/devices, ...].
    """
    if self.data_parallel == 'pmap':
      n = len(self._local_devices)
      sharding = NamedSharding(self._pmap_mesh, P(DATA))

      def stack(x):
        x = np.asarray(x)
        if x.shape[0] % n:
          raise ValueError(
              f'batch of {x.shape[0]} examples does not split '
              f'over {n} pmap devices'
          )
        return jax.device_put(x.reshape((n, -1) + x.shape[1:]), sharding)

      return jax.tree.map(stack, batch)

    sharding = self.batch_sharding
    shards = self.data_size

    def put(x):
      x = np.asarray(x)
      global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
      if global_shape[0] % shards:
        raise ValueError(
            f'global batch of {global_shape[0]} examples does '
            f'not split over the data axis ({shards} devices)'
        )
      return jax.make_array_from_process_local_data(sharding, x, global_shape)

    return jax.tree.map(put, batch)

  def to_host(self, tree):
    """A NumPy copy of a state tree (whole arrays; pmap: replica 0)."""

    def get(x):
      if not isinstance(x, jax.Array):
        return np.asarray(x)
      if (
          self.data_parallel == 'pmap'
          and x.ndim
          and x.sharding == (NamedSharding(self._pmap_mesh, P(DATA)))
      ):
        x = x[0]
      if not x.is_fully_addressable:
        from jax.experimental import multihost_utils

        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(x)

    return jax.tree.map(get, tree)

  # -- the forward ------------------------------------------------------------

  def apply(self, variables, images, *, train: bool, rngs=None):
    """Logits f32[B, C] of the model, run per device under jax.shard_map.

    Usable inside jit (the train and eval steps call it as `apply_fn`).
    model=2: the two-tower forward. model=1 with several data shards: the
    whole model on each shard; the forward is written per device rather
    than left to XLA's partitioner, which cannot split ops.conv2d's
    per-image scan over a sharded batch (it would gather the batch onto
    every device). One device, or inside pmap: plain `model.apply`.
    """
    if self.data_parallel == 'pmap' or self.mesh.size == 1:
      return self.model.apply(variables, images, train=train, rngs=rngs)
    rngs = rngs or {}
    model = self._tower_model if self.model_size == 2 else self.model
    fold_data = train and self.data_size > 1

    def local_forward(variables, images, rngs):
      # B/data examples per `data` device; with model=2 one tower per
      # `model` device:
      #   images: f32[B/data, H, W, 3] (every tower reads the whole image)
      #   conv1 kernel f32[1, 11, 11, 3, 48], conv3 f32[1, 3, 3, 256, 192],
      #   fc6 f32[1, 9216, 2048], fc7 f32[1, 4096, 2048],
      #   fc8 f32[4096, C/2] (or [4096, C] when C is odd).
      # model.py all_gathers the towers' channels before conv3, fc6, fc7 and
      # fc8, and the logits: f32[B/data, C] on every model device. With
      # model=1 every device holds all parameters (specs are all P()).
      # Parameters do not vary over `data`, so their gradients are summed
      # over it in the backward pass (the transpose of that broadcast).
      if fold_data:
        # Different dropout masks on different data shards.
        idx = jax.lax.axis_index(DATA)
        rngs = {k: jax.random.fold_in(r, idx) for k, r in rngs.items()}
      return model.apply(variables, images, train=train, rngs=rngs)

    specs = self.specs(variables)
    rng_specs = jax.tree.map(lambda _: P(), rngs)
    # With one data shard the batch is not marked as varying over `data`,
    # else the backward pass would psum gradients over that size-1 axis.
    batch = P(DATA) if self.data_size > 1 else P()
    return jax.shard_map(
        local_forward,
        mesh=self.mesh,
        in_specs=(specs, batch, rng_specs),
        out_specs=batch,
        check_vma=True,
    )(variables, images, rngs)

  # -- steps ------------------------------------------------------------------

  def jit_step(
      self,
      fn: Callable,
      donate_state: bool = True,
      *,
      returns_state: bool | None = None,
  ) -> 'Step':
    """Compiles fn(state, batch, *args) for the mode.

    jit modes: jax.jit with the state's shardings kept on its outputs
    (parameter-like leaves by path, everything else replicated). pmap: the
    classic path, `jax.pmap(partial(fn, axis_name='data'))` with extra args
    broadcast; outputs other than the returned state (the first output when
    returns_state, which defaults to donate_state) come back unstacked, so
    metrics look the same in every mode.
    """
    if returns_state is None:
      returns_state = donate_state
    return Step(self, fn, donate_state, returns_state)


class Step:
  """A compiled parallel step; `.lower(...)` exposes it for inspection."""

  def __init__(self, par: Parallel, fn, donate_state, returns_state):
    self._par = par
    self._fn = fn
    self._donate = (0,) if donate_state else ()
    self._returns_state = returns_state
    self._compiled = {}

  def _build(self, state, batch, args):
    par = self._par
    if par.data_parallel == 'pmap':
      fn = functools.partial(self._fn, axis_name=DATA)
      # Every device of the mesh, given identically by each process (pmap
      # maps over the local ones; its collectives span them all).
      return jax.pmap(
          fn,
          axis_name=DATA,
          devices=list(par.mesh.devices.flat),
          in_axes=(0, 0) + (None,) * len(args),
          donate_argnums=self._donate,
      )
    out = jax.eval_shape(self._fn, state, batch, *args)
    return jax.jit(
        self._fn, out_shardings=par.shardings(out), donate_argnums=self._donate
    )

  def _get(self, state, batch, args):
    key = jax.tree.structure((state, batch, args))
    if key not in self._compiled:
      self._compiled[key] = self._build(state, batch, args)
    return self._compiled[key]

  def lower(self, state, batch, *args):
    return self._get(state, batch, args).lower(state, batch, *args)

  def __call__(self, state, batch, *args):
    out = self._get(state, batch, args)(state, batch, *args)
    if self._par.data_parallel != 'pmap':
      return out
    unstack = lambda t: jax.tree.map(lambda x: x[0], t)
    if not self._returns_state:
      return unstack(out)
    if not isinstance(out, tuple):
      return out  # the state alone
    return (out[0],) + tuple(unstack(o) for o in out[1:])


def param_bytes_per_device(tree) -> dict:
  """{device: bytes of `tree`'s leaves stored on it}."""
  sizes = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      sizes[shard.device] = sizes.get(shard.device, 0) + shard.data.nbytes
  return sizes


def layout_line(layout: dict) -> str:
  """Parallel.layout() in one line."""
  mesh = ' x '.join(f'{k}={v}' for k, v in layout['mesh'].items())
  processes = layout['processes']
  return (
      f'{layout["description"]} (mode {layout["mode"]}); mesh {mesh}; '
      f'{layout["devices"]} {layout["platform"]} devices in {processes} '
      f'process{"es" if processes > 1 else ""}; batch '
      f'{layout["per_device_batch"]} per device ({layout["global_batch"]} in '
      f'all); {layout["dtype"]}'
  )
