"""The device mesh: axes `data`, `fsdp` and `tensor`.

  data    replicas of the model, each on its own share of the batch;
  fsdp    the batch is split over it too, and so are the parameters and the
          optimizer state (ZeRO-3 / fully sharded data parallel);
  tensor  attention heads, the MLP hidden dimension and the vocabulary are
          split over it (Megatron-style tensor parallelism).

`config.mesh.{data,fsdp,tensor}` give the sizes; one of them may be -1, which
takes whatever the others leave of the devices. The mesh orders the axes
data, fsdp, tensor, so `tensor` (the most communication-hungry) varies fastest
and lands on the closest devices (`jax.make_mesh` knows the TPU topology).
"""

import math
from typing import Sequence

import jax
from jax.sharding import AxisType
from jax.sharding import Mesh
import ml_collections

AXES = ('data', 'fsdp', 'tensor')
# The axes the batch is split over, in this order.
BATCH_AXES = ('data', 'fsdp')


def default_config() -> ml_collections.ConfigDict:
  """`config.mesh`: every device on `data` (pure data parallelism)."""
  return ml_collections.ConfigDict({
      'data': -1,  # Data-parallel replicas; -1: the devices the others leave.
      'fsdp': 1,  # Batch and parameters (and optimizer state) split over it.
      'tensor': 1,  # Heads, MLP hidden units and vocabulary split over it.
  })


def resolve_shape(data: int, fsdp: int, tensor: int,
                  num_devices: int) -> tuple[int, int, int]:
  """The mesh shape (data, fsdp, tensor), with a -1 filled in.

  Raises:
    ValueError: a size is 0 or below -1, more than one is -1, or the sizes do
      not multiply to `num_devices`.
  """
  sizes = dict(zip(AXES, (data, fsdp, tensor)))
  for name, size in sizes.items():
    if size == 0 or size < -1:
      raise ValueError(f'config.mesh.{name}={size}: a mesh axis size must be '
                       '>= 1, or -1 to take the remaining devices.')
  free = [name for name, size in sizes.items() if size == -1]
  if len(free) > 1:
    raise ValueError(f'config.mesh: only one axis may be -1, got {free}.')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if free:
    if num_devices % fixed:
      raise ValueError(
          f'config.mesh: {num_devices} devices cannot be split into '
          f'{dict(sizes)}: the fixed axes ({fixed} devices) must divide the '
          'device count.')
    sizes[free[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ValueError(
        f'config.mesh={dict(sizes)} uses {fixed} devices but there are '
        f'{num_devices}; make the sizes multiply to {num_devices} or set one '
        'of them to -1.')
  return tuple(sizes[name] for name in AXES)


def make_mesh(config: ml_collections.ConfigDict | None = None,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """The mesh of `config.mesh` (default: all devices on `data`) over `devices`
  (default: every device of every process)."""
  config = config if config is not None else default_config()
  devices = list(devices) if devices is not None else jax.devices()
  shape = resolve_shape(config.data, config.fsdp, config.tensor, len(devices))
  # Auto axes: shardings are propagated by the compiler from the inputs and
  # the constraints we place, so the algorithm code never names an axis.
  return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES),
                       devices=devices)


def batch_size_divisor(mesh: Mesh) -> int:
  """How many shards the batch axis is split into (data x fsdp)."""
  return math.prod(mesh.shape[axis] for axis in BATCH_AXES)
