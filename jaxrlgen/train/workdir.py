"""The run directory: created and checked before any work is done.

A run writes everything under one `--workdir` (metrics, TensorBoard events,
checkpoints, summary, plots). Checking that it is writable up front turns a
permissions mistake into an immediate, readable error instead of a crash at the
first checkpoint, minutes or hours into training.
"""

import os
import uuid

from etils import epath


def _is_local(path: str) -> bool:
  # Remote filesystems (gs://, s3://, ...) have no notion of a current
  # directory or of `~`; only local paths are normalised.
  return '://' not in path


def prepare_workdir(path: str | os.PathLike[str]) -> epath.Path:
  """Creates `path` if needed and checks that files can be written in it.

  Every process of a multi-host run may call this on the same directory: the
  probe file has a unique name, so the processes do not race.

  Args:
    path: the run directory, local or (through `etils.epath`) remote. A local
      path is made absolute, with `~` expanded, because orbax requires
      absolute checkpoint paths.

  Returns:
    The directory as an `epath.Path`.

  Raises:
    ValueError: the directory cannot be created or written to. The message
      names `--workdir`, the path and the underlying error.
  """
  path = os.fspath(path)
  if not path:
    raise ValueError('--workdir is empty: pass the directory the run should '
                     'write its metrics and checkpoints to.')
  if _is_local(path):
    path = os.path.abspath(os.path.expanduser(path))
  workdir = epath.Path(path)
  probe = workdir / f'.write_probe.{uuid.uuid4().hex}'
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    probe.write_text('ok')
    probe.unlink()
  # Remote backends raise their own exception types, not only OSError; any
  # failure here means the same thing to the user.
  except Exception as e:  # pylint: disable=broad-exception-caught
    raise ValueError(
        f'--workdir={path} is not a writable directory '
        f'({type(e).__name__}: {e}). Pass a --workdir that you can create and '
        'write files in, or fix the permissions of this one.') from e
  return workdir
