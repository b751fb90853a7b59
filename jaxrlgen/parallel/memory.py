"""What each device holds: bytes per device of the parts of a run.

Printed at start-up so that a run that will not fit says so before the first
step, and so the effect of FSDP, tensor parallelism or a bfloat16 reference
model is visible.
"""

from typing import Any, Mapping

import jax
import numpy as np

PyTree = Any


def bytes_per_device(tree: PyTree) -> int:
  """The largest number of bytes any one device holds of `tree`.

  Leaves are jax.Arrays or ShapeDtypeStructs with a `.sharding` (a leaf
  without one counts whole: it lives on one device).
  """
  per_device: dict[Any, int] = {}
  for leaf in jax.tree.leaves(tree):
    if not hasattr(leaf, 'shape'):
      continue
    itemsize = np.dtype(leaf.dtype).itemsize
    sharding = getattr(leaf, 'sharding', None)
    if sharding is None:
      per_device[None] = per_device.get(None, 0) + (
          int(np.prod(leaf.shape)) * itemsize)
      continue
    shard = int(np.prod(sharding.shard_shape(leaf.shape))) * itemsize
    for device in sharding.device_set:
      per_device[device] = per_device.get(device, 0) + shard
  return max(per_device.values(), default=0)


def _human(num_bytes: float) -> str:
  for unit in ('B', 'KiB', 'MiB', 'GiB'):
    if num_bytes < 1024 or unit == 'GiB':
      return f'{num_bytes:.1f} {unit}' if unit != 'B' else f'{num_bytes:.0f} B'
    num_bytes /= 1024
  raise AssertionError


def report(parts: Mapping[str, PyTree]) -> str:
  """A table of bytes per device of each named part and their total."""
  sizes = {name: bytes_per_device(tree) for name, tree in parts.items()}
  width = max(map(len, [*sizes, 'total']))
  lines = [f'{"bytes per device":<{width}}']
  lines += [f'  {name:<{width}}  {_human(size):>10}'
            for name, size in sizes.items()]
  lines.append(f'  {"total":<{width}}  {_human(sum(sizes.values())):>10}')
  return '\n'.join(lines)
