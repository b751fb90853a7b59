"""A fixed-size replay buffer that lives on device: a ring of pytree items.

The buffer is a pytree (`ReplayBuffer`), so it sits in `TrainState.algo_state`,
is donated, sharded and checkpointed with the rest of the state, and `add` /
`sample` run inside the jitted train step (Mnih et al. 2015, "Human-level
control through deep reinforcement learning": experience replay).

Slots are written in order 0, 1, ..., capacity - 1, 0, ...: the filled slots
are always [0, size), so uniform sampling over them needs no validity mask.

A hand-written ring rather than flashbax: the shared interface is three small
functions over one dataclass, flashbax's item buffer keeps its own state type
and adds a dependency whose jax pins move independently of ours.
"""

from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class ReplayBuffer:
  """`capacity` items stored as one pytree.

  Attributes:
    items: pytree, each leaf with leading axis `capacity`.
    position: i32[] the next slot to write.
    size: i32[] number of filled slots (at most capacity).
  """

  items: PyTree
  position: jax.Array
  size: jax.Array

  @property
  def capacity(self) -> int:
    return jax.tree.leaves(self.items)[0].shape[0]


def _batch_size(items: PyTree) -> int:
  leaves = jax.tree.leaves(items)
  if not leaves:
    raise ValueError('A replay item pytree needs at least one array leaf.')
  sizes = {x.shape[0] for x in leaves}
  if len(sizes) != 1:
    raise ValueError(f'Replay items must share one leading batch axis; got '
                     f'leading sizes {sorted(sizes)}.')
  return leaves[0].shape[0]


def check_config(cfg) -> None:
  """Raises before any compute if an algorithm config's replay sizes
  (`replay_capacity`, `replay_batch_size`, `num_minibatches`) cannot work;
  the message names the `config.algo` field."""
  if cfg.replay_capacity < 1 or cfg.replay_batch_size < 1:
    raise ValueError('config.algo.replay_capacity and '
                     'config.algo.replay_batch_size must be positive.')
  if cfg.replay_batch_size % cfg.num_minibatches:
    raise ValueError(f'config.algo.replay_batch_size={cfg.replay_batch_size} '
                     'must be divisible by '
                     f'config.algo.num_minibatches={cfg.num_minibatches}.')


def init(example: PyTree, capacity: int) -> ReplayBuffer:
  """An empty buffer of `capacity` items shaped like `example`'s rows.

  Args:
    example: pytree with a leading batch axis (any size; only the per-item
      shapes and dtypes are used, so `jax.ShapeDtypeStruct`s are fine).
    capacity: number of items the ring holds.
  """
  if capacity < 1:
    raise ValueError(f'Replay capacity={capacity} must be positive.')
  _batch_size(example)
  items = jax.tree.map(
      lambda x: jnp.zeros((capacity, *x.shape[1:]), x.dtype), example)
  return ReplayBuffer(items=items, position=jnp.zeros((), jnp.int32),
                      size=jnp.zeros((), jnp.int32))


def add(buffer: ReplayBuffer, items: PyTree) -> ReplayBuffer:
  """Writes B items at the next B slots (mod capacity), overwriting the oldest.

  Args:
    buffer: the buffer.
    items: pytree with the buffer's structure and leading axis B <= capacity.
  """
  b, capacity = _batch_size(items), buffer.capacity
  if b > capacity:
    raise ValueError(f'Cannot add {b} items to a replay buffer of capacity '
                     f'{capacity}: raise the capacity to at least {b}.')
  chex.assert_trees_all_equal_structs(buffer.items, items)
  slots = (buffer.position + jnp.arange(b, dtype=jnp.int32)) % capacity
  stored = jax.tree.map(lambda s, x: s.at[slots].set(x.astype(s.dtype)),
                        buffer.items, items)
  return ReplayBuffer(items=stored,
                      position=(buffer.position + b) % capacity,
                      size=jnp.minimum(buffer.size + b, capacity))


def sample(buffer: ReplayBuffer, key: jax.Array, batch_size: int) -> PyTree:
  """`batch_size` items drawn uniformly, with replacement, from filled slots.

  An empty buffer returns copies of slot 0 (zeros): callers add before they
  sample.
  """
  index = jax.random.randint(key, (batch_size,), 0,
                             jnp.maximum(buffer.size, 1))
  return jax.tree.map(lambda x: x[index], buffer.items)
