"""A progress display for the training loop, and its steps-per-second figure.

On a terminal this is a tqdm bar. When stderr is not a terminal (a log file,
a batch job, a TPU pod's collected output) a redrawn bar would pile up
carriage returns in one endless line, so instead one plain line of the same
content is printed every `mininterval` seconds (30 by default).
"""

from collections.abc import Mapping, Sequence
import sys
import time
from typing import Any, TextIO

import jax
import numpy as np
import tqdm

# tqdm's own rate counts from the first update, whose time includes
# compilation; our steps/s (which excludes it) goes into the postfix instead.
_BAR_FORMAT = ('{l_bar}{bar}| {n_fmt}/{total_fmt} '
               '[{elapsed}<{remaining}{postfix}]')
_LINE_FORMAT = ('{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} '
                '[{elapsed}<{remaining}{postfix}]')


def _format_value(value: Any) -> str:
  try:
    return f'{float(np.asarray(value)):.4g}'
  except (TypeError, ValueError):
    return str(value)


class Progress:
  """Shows training progress and measures steps per second.

  Usage:

    progress = Progress(num_steps, initial_step=restored_step)
    for step in range(restored_step + 1, num_steps + 1):
      state, metrics = train_step(state, ...)
      if step % log_every == 0:
        progress.update(step, metrics)
    progress.close()
  """

  def __init__(self,
               total_steps: int,
               initial_step: int = 0,
               *,
               enabled: bool | None = None,
               desc: str = 'train',
               show: Sequence[str] = ('reward/mean',),
               file: TextIO | None = None,
               mininterval: float | None = None):
    """Starts the display.

    Args:
      total_steps: the step the run ends at.
      initial_step: the step the run starts from (a resumed run's checkpoint).
      enabled: whether to display anything; defaults to
        `jax.process_index() == 0`. A disabled instance still measures
        `steps_per_second`.
      desc: the label in front of the bar.
      show: names of metrics passed to `update` to display next to steps/s.
      file: where to write; defaults to `sys.stderr`.
      mininterval: the least number of seconds between redraws; defaults to
        0.1 on a terminal and 30 otherwise.
    """
    self._enabled = (jax.process_index() == 0) if enabled is None else enabled
    self._file = sys.stderr if file is None else file
    self._total = total_steps
    self._initial = initial_step
    self._desc = desc
    self._show = tuple(show)
    isatty = getattr(self._file, 'isatty', None)
    self._tty = bool(isatty and isatty())
    if mininterval is None:
      mininterval = 0.1 if self._tty else 30.0
    self._mininterval = mininterval
    self._start_time = time.monotonic()
    self._first = None  # (time, step) of the first update.
    self._last = None  # (time, step) of the latest update.
    self._step = initial_step
    self._postfix = ''
    self._last_print_time = None
    self._printed_step = None
    self._bar = None
    if self._enabled and self._tty:
      self._bar = tqdm.tqdm(
          total=total_steps, initial=initial_step, desc=desc,
          file=self._file, mininterval=mininterval, dynamic_ncols=True,
          bar_format=_BAR_FORMAT)

  @property
  def steps_per_second(self) -> float | None:
    """Steps per second of wall time since the first `update`.

    The first update is the reference point because the time before it is
    dominated by compiling the train step. None until two updates with
    different steps have been seen.
    """
    if self._first is None or self._last is None:
      return None
    (t0, s0), (t1, s1) = self._first, self._last
    if s1 <= s0 or t1 <= t0:
      return None
    return (s1 - s0) / (t1 - t0)

  def update(self, step: int, metrics: Mapping[str, Any] | None = None) -> None:
    """Moves the display to `step` and shows the `show` metrics found.

    Args:
      step: the number of completed steps.
      metrics: metric name -> scalar; only the names in `show` are read
        (a jax.Array is fetched to the host).
    """
    now = time.monotonic()
    step = int(step)
    if self._first is None:
      self._first = (now, step)
    self._last = (now, step)
    self._step = step
    if not self._enabled:
      return
    parts = []
    rate = self.steps_per_second
    if rate is not None:
      parts.append(f'steps/s={rate:.3g}')
    metrics = metrics or {}
    parts.extend(f'{name}={_format_value(metrics[name])}'
                 for name in self._show if name in metrics)
    self._postfix = ', '.join(parts)
    if self._bar is not None:
      self._bar.set_postfix_str(self._postfix, refresh=False)
      # tqdm redraws at most every `mininterval`; it also guards n going back.
      self._bar.update(step - self._bar.n)
    elif (self._last_print_time is None or
          now - self._last_print_time >= self._mininterval):
      self._print_line(now)

  def _print_line(self, now: float) -> None:
    line = tqdm.tqdm.format_meter(
        n=self._step, total=self._total, elapsed=now - self._start_time,
        prefix=self._desc, initial=self._initial, rate=self.steps_per_second,
        postfix=self._postfix or None, bar_format=_LINE_FORMAT)
    print(line, file=self._file, flush=True)
    self._last_print_time = now
    self._printed_step = self._step

  def close(self) -> None:
    """Draws the final state and closes the display; later calls do nothing."""
    if self._bar is not None:
      self._bar.close()
      self._bar = None
    elif (self._enabled and self._last is not None and
          self._printed_step != self._step):
      self._print_line(time.monotonic())

  def __enter__(self) -> 'Progress':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
