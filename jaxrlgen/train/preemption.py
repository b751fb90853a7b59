"""Preemption notices: save at the current step and exit cleanly.

Schedulers warn a job before they evict it:
  * SIGTERM, from Kubernetes, SLURM (`scancel`, preemption, the time limit)
    and the shutdown of a Cloud TPU or GCE VM that is preempted or taken for
    maintenance;
  * SIGUSR1 (configurable) from SLURM's `--signal=USR1@SECONDS`, ahead of
    its SIGTERM.

`listen()` turns these signals into a notice instead of death; the training
loop asks `reached(step)` after every step and, once it says so, saves that
step's checkpoint and raises `Preempted`. `experiments.main` catches it and
exits with status `EXIT_CODE` (75, EX_TEMPFAIL: "try again"), so a wrapper
script or a requeued job knows to start the same command again, which
resumes from that checkpoint.

One process: the handler only sets a flag, so a second SIGTERM while the
checkpoint is written changes nothing (it is logged), and the write, atomic
anyway (orbax writes a temporary directory and renames it), completes.

Several processes: every process must save at the same step, or their
checkpoints would not fit together. JAX's preemption service (started by
`jax.distributed.initialize`) listens for SIGTERM on each host, tells the
others through the coordination service, and agrees on the first step that
all of them reach; `reached` is then
`multihost_utils.reached_preemption_sync_point`, true on every process at
that step. Our handler leaves SIGTERM to JAX there and forwards the other
signals to it as SIGTERM.
"""

import contextlib
import os
import signal
import threading
from typing import Iterator, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils

# EX_TEMPFAIL from sysexits.h: the run stopped early and should be started
# again with the same command.
EXIT_CODE = 75
DEFAULT_SIGNALS = ('SIGTERM', 'SIGUSR1')


class Preempted(Exception):
  """The run saved its checkpoint at `step` on a preemption notice."""

  def __init__(self, step: int, directory: str = '', saved: bool = True):
    self.step = step
    self.directory = directory
    where = f' in {directory}' if directory else ''
    what = (f'saved the checkpoint of step {step}{where}' if saved else
            f'stopped at step {step}, before training on')
    super().__init__(
        f'Preempted ({_STATE.signal_name or "notice"}): {what}. Run the same '
        'command again to resume.')


class _State:
  """The process's notice: set by a signal handler, read by the loop."""

  def __init__(self):
    self.event = threading.Event()
    self.signal_name = ''
    self.listening = 0


_STATE = _State()


def _multi_process() -> bool:
  # Not `jax.process_count()`: that would start the backends, which must
  # wait for `jax.distributed.initialize` (this may run before it).
  return jax.distributed.is_initialized()


def _handler(signum, unused_frame):
  name = signal.Signals(signum).name
  if _multi_process() and signum != signal.SIGTERM:
    # JAX's preemption service listens for SIGTERM only: hand it over, so
    # that every process learns of the notice and agrees on a step.
    os.kill(os.getpid(), signal.SIGTERM)
  if _STATE.event.is_set():
    logging.warning('%s again: the checkpoint is being saved; the run stops '
                    'when it is written.', name)
    return
  _STATE.signal_name = name
  _STATE.event.set()
  logging.warning('%s: preemption notice. The run saves a checkpoint at the '
                  'end of the current step and stops.', name)


def _signals(names: Sequence[str]) -> list[signal.Signals]:
  found = []
  for name in names:
    try:
      found.append(signal.Signals[name])
    except KeyError:
      raise ValueError(
          f'Unknown preemption signal {name!r}: use names such as '
          f'{DEFAULT_SIGNALS}.') from None
  return found


@contextlib.contextmanager
def listen(signals: Sequence[str] = DEFAULT_SIGNALS) -> Iterator[None]:
  """While active, `signals` are preemption notices rather than fatal.

  Installs the handlers on entry (only from the main thread: Python allows
  no other) and puts back the previous ones on exit. In a multi-process run
  SIGTERM stays with JAX's preemption service, which must see it: entered
  after `jax.distributed.initialize`, this leaves SIGTERM alone; entered
  before (as `experiments.main` does), the service's handler, installed
  later, replaces ours.
  """
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  chosen = _signals(signals)
  if _multi_process():
    chosen = [s for s in chosen if s != signal.SIGTERM]
  previous = {s: signal.signal(s, _handler) for s in chosen}
  _STATE.listening += 1
  try:
    yield
  finally:
    _STATE.listening -= 1
    for s, handler in previous.items():
      signal.signal(s, handler)


def requested() -> bool:
  """Whether this process has had a notice (the multi-process agreement on
  a step aside)."""
  return _STATE.event.is_set()


def reached(step: int) -> bool:
  """Whether the run should save at `step` and stop. Called after every
  step (with the same step on every process of a multi-process run, which
  JAX's sync point requires: true on all of them at the first step after
  any one's notice that all of them reach)."""
  if _multi_process():
    return multihost_utils.reached_preemption_sync_point(step)
  return _STATE.event.is_set()


def clear() -> None:
  """Forgets a notice (tests; a process that trains again after one)."""
  _STATE.event.clear()
  _STATE.signal_name = ''
