"""Resuming past a corrupted checkpoint: the newest one that reads, not a crash.

A checkpoint can be damaged after orbax finalised it: a disk that filled up,
a copy cut short, a file system that lost a block. Orbax then fails inside
`restore` with whatever the damaged file gives (tested in
tests/train/test_recovery.py):

  default/_METADATA garbled or cut    json.JSONDecodeError, UnicodeDecodeError
  default/_METADATA missing           FileNotFoundError
  array_metadatas/ or _sharding cut   JSONDecodeError, ValueError (tensorstore)
  OCDBT's index (default/d/, small     ValueError from tensorstore: OUT_OF_RANGE,
    arrays inline) cut, garbled or      DATA_LOSS or NOT_FOUND, naming the file
    missing; a manifest.ocdbt
  a large array's data file (default/ Exception ('Encountered error while
    ocdbt.process_0/d/) cut or missing  reading array index ...')
  the item directory missing          ValueError ('... `Composite` ...'), and
                                      every later step read fails alike

Bytes flipped inside a large array's data file are NOT detected: the chunk
decompresses and the wrong values are restored (orbax 0.12 stores no
checksum of the array data).

`restore_latest_good` tries the steps newest first. A step that fails is
reported (logged with its error) and the next older one is tried; once one
restores, the newer failed ones are set aside by renaming their directories to
`<step>.corrupt` (orbax lists only integer names), so they are neither read
again nor block the run from saving those steps anew. A step is only set
aside when an older one restores into the same structure: when every step
fails, the likelier cause is the state given (a changed model shape), not
the checkpoints, and the error names the directory and every step's error
without renaming anything.
"""

from typing import Any

from absl import logging
from etils import epath
import jax
import orbax.checkpoint as ocp

PyTree = Any
SUFFIX = '.corrupt'
_ITEM = 'default'  # Orbax's directory of a step's one unnamed item.


class NoGoodCheckpointError(RuntimeError):
  """Every checkpoint in a directory failed to restore."""


def quarantine(directory: epath.Path, step: int) -> epath.Path:
  """Renames step directory `directory/<step>` to `<step>.corrupt` (or
  `<step>.corrupt-N` if that name is taken); the new path."""
  source = directory / str(step)
  target = directory / f'{step}{SUFFIX}'
  n = 0
  while target.exists():
    n += 1
    target = directory / f'{step}{SUFFIX}-{n}'
  source.rename(target)
  return target


def restore_latest_good(checkpointer, state: PyTree) -> tuple[PyTree, int]:
  """Like `Checkpointer.restore_or`, past corrupted checkpoints.

  Args:
    checkpointer: a `jaxrlgen.train.checkpoint.Checkpointer`.
    state: the state to restore into (its structure, shapes, dtypes and
      shardings), returned as it is when there is no checkpoint.
  Returns:
    (the newest checkpoint that restores, its step), or (state, -1) when the
    directory holds no checkpoint.
  Raises:
    NoGoodCheckpointError: there are checkpoints but none restores; the
      message names the directory, each step and its error.
  """
  steps = checkpointer.all_steps()
  if not steps:
    return state, -1
  failed = []
  for step in reversed(steps):
    try:
      # Orbax fixes its layout (one unnamed item, or several) from the first
      # step it reads; a step without its item directory would fix the wrong
      # one for every later step, so it fails here, before orbax looks.
      item = epath.Path(checkpointer.directory) / str(step) / _ITEM
      if not item.exists():
        raise FileNotFoundError(f'{item} is missing.')
      restored = checkpointer.restore(step, state)
    except Exception as e:  # pylint: disable=broad-except
      # Whatever orbax and tensorstore raise for a damaged file (see the
      # module docstring); which steps are bad is decided below.
      logging.error('Checkpoint %d in %s does not restore: %s: %s', step,
                    checkpointer.directory, type(e).__name__, e)
      failed.append((step, e))
      continue
    if failed:
      _set_aside(checkpointer, [s for s, _ in failed])
      logging.warning('Resuming from %s, step %d: the newest checkpoint that '
                      'restores (set aside as *%s: steps %s).',
                      checkpointer.directory, step, SUFFIX,
                      [s for s, _ in failed])
    else:
      logging.warning('Resuming from %s, step %d.', checkpointer.directory,
                      step)
    return restored, step
  errors = '\n'.join(f'  step {s}: {type(e).__name__}: {str(e)[:500]}'
                     for s, e in failed)
  raise NoGoodCheckpointError(
      f'No checkpoint in {checkpointer.directory} restores:\n{errors}\n'
      'If the model or state changed since they were written, restore with '
      'the config they were written with; if they are damaged, move the '
      'directory away to start afresh.') from failed[-1][1]


def _set_aside(checkpointer, steps: list[int]) -> None:
  """Quarantines `steps` (on the primary process) and makes the checkpointer
  forget them."""
  directory = epath.Path(checkpointer.directory)
  if jax.process_index() == 0:
    for step in steps:
      path = quarantine(directory, step)
      logging.error('Checkpoint %d set aside as %s.', step, path)
  # Every process sees the renames before any lists the steps again.
  ocp.multihost.sync_global_processes('jaxrlgen_recovery_set_aside')
  # The manager caches its step list; it must not offer the renamed ones.
  checkpointer.reload()
