"""Orbax checkpoints of the training state.

A thin layer over `orbax.checkpoint.CheckpointManager` with the current
(args-based) API: `ocp.args.StandardSave` / `ocp.args.StandardRestore` of one
unnamed pytree, and a `LatestN` preservation policy (the manager's own
`max_to_keep` option is deprecated in favour of preservation policies).

Every process of a multi-host run must call `save` and `restore` with the same
arguments: orbax synchronises the processes, each writes the shards it holds,
and the primary process writes the metadata and finalises the step directory.
"""

import dataclasses
import os
from typing import Any

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp

from jaxrlgen.train import recovery

PyTree = Any

CHECKPOINT_DIR = 'checkpoints'


def _without_frozen(state: PyTree) -> PyTree:
  if getattr(state, 'frozen', None) is None:
    return state
  return state.replace(frozen=None)


def _concrete(x):
  """An array leaf as given, or zeros of a `jax.ShapeDtypeStruct`'s shape."""
  if isinstance(x, jax.ShapeDtypeStruct):
    zeros = jnp.zeros(x.shape, x.dtype)
    sharding = getattr(x, 'sharding', None)
    return zeros if sharding is None else jax.device_put(zeros, sharding)
  return x


class Checkpointer:
  """Saves and restores a pytree of arrays (the `TrainState`) by step.

  Usage:

    ckpt = Checkpointer(workdir / CHECKPOINT_DIR)
    if (step := ckpt.latest_step()) is not None:
      state = ckpt.restore(step, abstract_state)
    ...
    ckpt.save(step, state)
    ckpt.close()
  """

  def __init__(self,
               directory: str | os.PathLike[str],
               *,
               max_to_keep: int | None = 3,
               enabled_async: bool = False):
    """Opens (and creates) the checkpoint directory.

    Args:
      directory: where step directories are written, used as given; by
        convention `workdir / CHECKPOINT_DIR`. A local path is made absolute
        because orbax's storage layer rejects relative paths.
      max_to_keep: how many of the latest checkpoints to keep; None keeps all.
      enabled_async: write in a background thread, so `save` returns once the
        arrays are copied off the device. Call `wait_until_finished` (or
        `close`) before reading the checkpoint or exiting.
    """
    directory = os.fspath(directory)
    if '://' not in directory:
      directory = os.path.abspath(os.path.expanduser(directory))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        enable_async_checkpointing=enabled_async,
        # A run killed mid-save leaves a `*.orbax-checkpoint-tmp` directory;
        # it is never restored from, so it is only wasted space.
        cleanup_tmp_directories=True,
        create=True,
    )
    self._manager = ocp.CheckpointManager(epath.Path(directory),
                                          options=options)

  @property
  def directory(self) -> epath.Path:
    return self._manager.directory

  def all_steps(self) -> list[int]:
    """The steps of the finished checkpoints on disk, ascending."""
    return sorted(self._manager.all_steps())

  def latest_step(self) -> int | None:
    """The step of the newest finished checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def save(self, step: int, state: PyTree, *, force: bool = False) -> bool:
    """Saves `state` as the checkpoint of `step`.

    When to save is the training loop's decision: any step newer than the
    latest checkpoint is saved. A step that already has a checkpoint is skipped
    rather than overwritten (orbax never overwrites), so a resumed run may
    safely save again at the step it restored.

    Args:
      step: the training step `state` belongs to.
      state: a pytree of jax/numpy arrays; None subtrees are kept as None.
        A `TrainState`'s `frozen` base (adapters' frozen weights) is not
        written: a run reloads it from its model path.
      force: also save a step older than the latest checkpoint.

    Returns:
      Whether a checkpoint was written (or started, when asynchronous).
    """
    step = int(step)
    if step in self._manager.all_steps():
      return False
    return self._manager.save(
        step, args=ocp.args.StandardSave(_without_frozen(state)), force=force)

  def restore(self, step: int | None, abstract_state: PyTree) -> PyTree:
    """Restores the checkpoint of `step` into the structure `abstract_state`.

    Args:
      step: the step to restore; None restores the latest.
      abstract_state: the pytree to fill, with the same structure as the saved
        one (a flax dataclass comes back as that dataclass, None fields as
        None). Its leaves are `jax.ShapeDtypeStruct`s (e.g. from
        `jax.eval_shape`, with `.sharding` set for sharded restores) or
        concrete arrays; each restored array takes the leaf's shape, dtype and
        sharding (a leaf without a sharding lands on the default device).
        Its `frozen` base, if any, is not read from the checkpoint but put
        back as given (concrete weights). Fields of a dataclass state that
        the checkpoint lacks (written before they existed, such as
        `TrainState.skipped_steps`) keep the given values (zeros for
        abstract leaves).

    Returns:
      The restored pytree.

    Raises:
      FileNotFoundError: there is no checkpoint of `step` (or none at all when
        `step` is None).
      ValueError: a leaf's shape differs from the stored one.
    """
    if step is None:
      step = self.latest_step()
      if step is None:
        raise FileNotFoundError(f'No checkpoint in {self.directory}.')
    target = _without_frozen(abstract_state)
    missing = self._missing_fields(int(step), target)
    if missing:
      # Written before these fields existed (e.g. `TrainState.skipped_steps`):
      # restore the others; these keep the given state's values (zeros for
      # abstract leaves).
      logging.warning('Checkpoint %d has no %s: using the initial values.',
                      step, ', '.join(missing))
      fields = {f.name: getattr(target, f.name)
                for f in dataclasses.fields(target) if f.name not in missing}
      restored = self._manager.restore(
          int(step), args=ocp.args.StandardRestore(fields))
      restored = target.replace(
          **restored, **{name: jax.tree.map(_concrete, getattr(target, name))
                         for name in missing})
    else:
      restored = self._manager.restore(
          int(step), args=ocp.args.StandardRestore(target))
    if getattr(abstract_state, 'frozen', None) is not None:
      restored = restored.replace(frozen=abstract_state.frozen)
    return restored

  def _missing_fields(self, step: int, state: PyTree) -> list[str]:
    """The fields of a dataclass `state` that checkpoint `step` lacks."""
    if not dataclasses.is_dataclass(state):
      return []
    tree = getattr(self._manager.item_metadata(step), 'tree', None)
    if not isinstance(tree, dict):
      return []
    return [f.name for f in dataclasses.fields(state) if f.name not in tree]

  def restore_or(self, state: PyTree) -> tuple[PyTree, int]:
    """The newest checkpoint that restores, into `state`'s structure, or
    `state` itself when there is none; and the step to resume metrics from
    (-1 for a fresh run, so that stale lines of a crashed one are dropped).

    A damaged checkpoint is reported and set aside (`<step>.corrupt`), and
    the next older one restored (`recovery.restore_latest_good`); if none
    restores, `recovery.NoGoodCheckpointError` names each step's error.
    """
    return recovery.restore_latest_good(self, state)

  def reload(self) -> None:
    """Lists the steps on disk again (after steps were renamed away)."""
    self._manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until an asynchronous save (if any) is on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and deletions and releases the manager."""
    self._manager.close()

  def __enter__(self) -> 'Checkpointer':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
