"""Metric writers: `metrics.jsonl`, TensorBoard events and `summary.json`.

`metrics.jsonl` holds one JSON object per logged step, `{"step": 10,
"loss": 0.25, ...}`, and is the machine-readable record of a run that tests,
plots and scripts read back. TensorBoard events under `tensorboard/` carry the
same scalars for interactive viewing.

Non-finite values: strict JSON has no NaN or infinity, and Python's
`json.dumps` would write the non-standard tokens `NaN` / `Infinity` that other
readers (jq, JavaScript, many JSON libraries) reject. So a non-finite metric is
written as `null` in `metrics.jsonl` and `summary.json`, and `read_metrics`
turns a `null` metric back into `float('nan')` so that callers always get
floats. Infinities therefore read back as NaN: both mean the run diverged.
TensorBoard receives the value unchanged.
"""

from collections.abc import Mapping
import json
import math
import os
from typing import Any
import uuid

from etils import epath
import jax
import numpy as np
import tensorboardX

METRICS_FILE = 'metrics.jsonl'
SUMMARY_FILE = 'summary.json'
TENSORBOARD_DIR = 'tensorboard'

Scalar = float | int | bool | np.generic | np.ndarray | jax.Array


def _atomic_write_text(path: epath.Path, text: str) -> None:
  # Readers (and a run killed mid-write) only ever see the old file or the new
  # one, never a truncated mix: the rename is atomic on POSIX filesystems.
  tmp = path.parent / f'.{path.name}.tmp.{uuid.uuid4().hex}'
  tmp.write_text(text)
  tmp.replace(path)


def _finite_or_none(x: float) -> float | None:
  return x if math.isfinite(x) else None


def _to_float(key: str, value: Scalar) -> float:
  """Converts a Python, NumPy or JAX scalar (any size-1 array) to a float."""
  # np.asarray also fetches a jax.Array from the device; this is the one host
  # sync of a logged step.
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f'Metric {key!r} must be a scalar; got shape '
                     f'{array.shape}. Reduce it (e.g. mean) before logging.')
  return float(array.reshape(()))


class MetricWriter:
  """Writes scalar metrics to `metrics.jsonl` and TensorBoard.

  Only one process of a multi-host run should write (by default process 0);
  on the others the writer is disabled and every method does nothing, so the
  training loop can call it unconditionally.

  Usage:

    with MetricWriter(workdir, resume_step=restored_step) as writer:
      writer.write(step, {'loss': loss, 'reward/mean': reward})
  """

  def __init__(self,
               workdir: str | os.PathLike[str],
               *,
               resume_step: int | None = None,
               enabled: bool | None = None):
    """Opens the writers.

    Args:
      workdir: the run directory (see `prepare_workdir`).
      resume_step: the step of the checkpoint the run resumes from. Lines of an
        existing `metrics.jsonl` with a larger step are dropped, because the
        run is about to redo those steps; TensorBoard hides its events from
        step `resume_step + 1` on for the same reason. None keeps the file as
        it is; a negative value drops every line (a fresh start in a used
        directory).
      enabled: whether this process writes; defaults to
        `jax.process_index() == 0`.
    """
    self._enabled = (jax.process_index() == 0) if enabled is None else enabled
    self._workdir = epath.Path(workdir)
    self._jsonl = None
    self._tb = None
    if not self._enabled:
      return
    self._workdir.mkdir(parents=True, exist_ok=True)
    metrics_path = self._workdir / METRICS_FILE
    if resume_step is not None:
      _truncate_metrics(metrics_path, resume_step)
    # Append mode, so a resumed run continues the file it left.
    self._jsonl = metrics_path.open('a')
    self._tb = tensorboardX.SummaryWriter(
        logdir=os.fspath(self._workdir / TENSORBOARD_DIR),
        purge_step=None if resume_step is None else resume_step + 1)

  @property
  def enabled(self) -> bool:
    return self._enabled

  def write(self, step: int, metrics: Mapping[str, Scalar]) -> None:
    """Writes one step's scalar metrics.

    Args:
      step: the training step the metrics belong to.
      metrics: name -> scalar (Python number, NumPy scalar, or a JAX/NumPy array
        of size 1). Names may contain `/` to group them in TensorBoard.

    Raises:
      ValueError: a metric is not a scalar or is named `step`.
    """
    if not self._enabled:
      return
    if self._jsonl is None:
      raise ValueError('MetricWriter.write called after close().')
    if 'step' in metrics:
      raise ValueError("A metric may not be named 'step': it is the key of "
                       'the step number in metrics.jsonl.')
    step = int(step)
    values = {key: _to_float(key, value) for key, value in metrics.items()}
    record = {'step': step}
    record.update({k: _finite_or_none(v) for k, v in values.items()})
    self._jsonl.write(json.dumps(record, allow_nan=False) + '\n')
    # Flushed every step, so the file is complete up to the last logged step
    # if the process dies; logging is rare enough that this costs nothing.
    self._jsonl.flush()
    for key, value in values.items():
      self._tb.add_scalar(key, value, global_step=step)

  def flush(self) -> None:
    """Pushes buffered TensorBoard events (and the jsonl file) to disk."""
    if self._jsonl is not None:
      self._jsonl.flush()
    if self._tb is not None:
      self._tb.flush()

  def close(self) -> None:
    """Flushes and closes the files; later calls do nothing."""
    if self._jsonl is not None:
      self._jsonl.close()
      self._jsonl = None
    if self._tb is not None:
      self._tb.close()
      self._tb = None

  def __enter__(self) -> 'MetricWriter':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()


def _truncate_metrics(path: epath.Path, resume_step: int) -> None:
  """Keeps only the lines of `path` whose step is at most `resume_step`."""
  if not path.exists():
    return
  kept = []
  for line in path.read_text().splitlines():
    try:
      record = json.loads(line)
    # A line cut short by a crash mid-write is dropped with the redone steps.
    except json.JSONDecodeError:
      continue
    step = record.get('step') if isinstance(record, dict) else None
    if isinstance(step, (int, float)) and step <= resume_step:
      kept.append(line + '\n')
  _atomic_write_text(path, ''.join(kept))


def read_metrics(workdir: str | os.PathLike[str]) -> list[dict[str, Any]]:
  """Reads `metrics.jsonl` back: one dict per logged step, in file order.

  A `null` metric (a non-finite value when written) becomes `float('nan')`.
  Lines that are not valid JSON (a write cut short by a crash) are skipped.

  Args:
    workdir: the run directory.

  Returns:
    The records, each with an int `step` and float metrics; [] if there is no
    file.
  """
  path = epath.Path(workdir) / METRICS_FILE
  if not path.exists():
    return []
  records = []
  for line in path.read_text().splitlines():
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue
    records.append({
        k: (math.nan if v is None and k != 'step' else v)
        for k, v in record.items()
    })
  return records


def _jsonable(value: Any) -> Any:
  """Converts a summary value to plain JSON types; non-finite floats to None."""
  if isinstance(value, Mapping):
    return {str(k): _jsonable(v) for k, v in value.items()}
  if value is None or isinstance(value, (str, bool)):
    return value
  if isinstance(value, int):
    return int(value)
  if isinstance(value, float):
    return _finite_or_none(float(value))
  if isinstance(value, (list, tuple)):
    return [_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, np.generic, jax.Array)):
    array = np.asarray(value)
    # .item() / .tolist() give Python bool/int/float, which recurse above.
    return _jsonable(array.item() if array.ndim == 0 else array.tolist())
  raise TypeError(f'Cannot write {type(value).__name__} {value!r} to '
                  f'{SUMMARY_FILE}; use numbers, strings, lists and dicts.')


def write_summary(workdir: str | os.PathLike[str],
                  summary: Mapping[str, Any]) -> None:
  """Writes `summary.json`: the run's final and before/after figures.

  The file is pretty-printed with sorted keys so that summaries of two runs
  diff cleanly, and replaced atomically. NumPy/JAX scalars become Python
  numbers, arrays become lists, non-finite floats become `null`. Unlike
  `MetricWriter` this does not check the process index: the caller decides
  which process writes.

  Args:
    workdir: the run directory.
    summary: a nested mapping of numbers, strings, lists and arrays.
  """
  text = json.dumps(_jsonable(summary), indent=2, sort_keys=True,
                    allow_nan=False)
  _atomic_write_text(epath.Path(workdir) / SUMMARY_FILE, text + '\n')


def read_summary(workdir: str | os.PathLike[str]) -> dict[str, Any]:
  """Reads `summary.json` back (non-finite values come back as None)."""
  return json.loads((epath.Path(workdir) / SUMMARY_FILE).read_text())


def summarize(records: list[dict[str, Any]], wall_time: float,
              eval_keys: tuple[str, ...]) -> dict[str, Any]:
  """An RL run's summary: `eval/KEY_before`, `_after` and `_gain` for each
  key of `eval_keys` (the first and last records holding `eval/KEY`), the
  last logged training metrics as `final/...` (records with `reward/mean`)
  and `final_step`, and `wall_time_s`."""
  summary = {'wall_time_s': wall_time}
  for key in eval_keys:
    evals = [r[f'eval/{key}'] for r in records if f'eval/{key}' in r]
    if evals:
      summary[f'eval/{key}_before'] = evals[0]
      summary[f'eval/{key}_after'] = evals[-1]
      summary[f'eval/{key}_gain'] = evals[-1] - evals[0]
  train = [r for r in records if 'reward/mean' in r]
  if train:
    summary['final_step'] = train[-1]['step']
    summary.update({f'final/{k}': v for k, v in train[-1].items()
                    if k != 'step'})
  return summary
