"""Stateless, checkpointable batching over random-access data sources.

The batch of a step is a pure function of `(seed, step)`: there is no iterator
state to save, so a run restored at step k reads exactly the batches an
uninterrupted run would have read, on any number of hosts.

Records are visited epoch by epoch: think of the stream
`perm_0 ++ perm_1 ++ ...`, where `perm_e` is a permutation of
`range(num_records)` drawn from `np.random.default_rng([seed, e])`. The global
batch of step s is positions `[s * batch_size, (s + 1) * batch_size)` of that
stream, so every record appears exactly once per epoch and a batch that
crosses an epoch boundary takes its rest from the next epoch. Process p of P
takes the p-th contiguous slice of `batch_size // P` positions, and reads only
those records.
"""

from collections.abc import Sequence
import functools
from typing import Any

import numpy as np



@functools.lru_cache(maxsize=4)
def _epoch_permutation(num_records: int, seed: int, epoch: int) -> np.ndarray:
  # Consecutive steps mostly hit the same epoch; caching spares an O(N)
  # permutation per step. The array is shared, hence read-only.
  perm = np.random.default_rng([seed, epoch]).permutation(num_records)
  perm.flags.writeable = False
  return perm


def batch_indices(
    num_records: int,
    batch_size: int,
    step: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> np.ndarray:
  """Record indices of this process's share of the global batch of `step`.

  Args:
    num_records: size of the data source.
    batch_size: global batch size, summed over processes.
    step: the training step (>= 0).
    seed: shuffling seed (>= 0).
    process_index: this process, `jax.process_index()`.
    process_count: number of processes, `jax.process_count()`.

  Returns:
    `int64[batch_size // process_count]` record indices. Concatenating the
    results of processes 0..process_count-1 gives the global batch.

  Raises:
    ValueError: bad sizes, or `batch_size` not divisible by `process_count`.
  """
  if num_records < 1:
    raise ValueError(f'num_records must be >= 1, got {num_records}.')
  if batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {batch_size}.')
  if step < 0 or seed < 0:
    raise ValueError(f'step and seed must be >= 0, got step={step}, '
                     f'seed={seed}.')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in '
                     f'[0, process_count={process_count}).')
  if batch_size % process_count:
    raise ValueError(
        f'batch_size={batch_size} is not divisible by process_count='
        f'{process_count}; choose a batch_size that is a multiple of the '
        'number of processes.')
  local = batch_size // process_count
  start = step * batch_size + process_index * local
  positions = np.arange(start, start + local, dtype=np.int64)
  epochs, offsets = np.divmod(positions, num_records)
  out = np.empty(local, dtype=np.int64)
  # A share spans at most ceil(local / num_records) + 1 epochs.
  for epoch in np.unique(epochs).tolist():
    sel = epochs == epoch
    out[sel] = _epoch_permutation(int(num_records), int(seed), epoch)[offsets[sel]]
  return out


def get_batch(source: Sequence[Any], indices: np.ndarray | Sequence[int]
              ) -> list[Any]:
  """Reads the records at `indices` from a random-access source.

  Args:
    source: e.g. a TFDS `ArrayRecordDataSource` or a plain list.
    indices: `[b]` record indices, typically from `batch_indices`.

  Returns:
    The b records, in the order of `indices`.
  """
  keys = [int(i) for i in np.asarray(indices).reshape(-1)]
  # ArrayRecord sources read many records in one call much faster than one
  # by one.
  getitems = getattr(source, '__getitems__', None)
  if getitems is not None:
    return list(getitems(keys))
  return [source[k] for k in keys]
