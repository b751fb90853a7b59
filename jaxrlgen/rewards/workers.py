"""A pool of worker processes for host rewards, restarted when an item hangs
or kills its interpreter.

A Python thread cannot be stopped, and a crash in it (`os._exit`, a
segfault in an extension) ends the whole run. `ProcessPool.run(fn, calls,
timeout_s)` instead calls `fn(*args, **kwargs)` for each call in one of
`size` worker processes, one call per worker at a time. A call that runs
past `timeout_s` has its worker killed (`SIGKILL`) and replaced; a worker
that dies (exit, signal) fails its call and is replaced; a call that raises
or returns something other than a finite number fails. Each failed call
gets its own error message; the other calls are not affected.

The pool runs in the calling thread (no helper threads) and is kept for
reuse: `pool(size)` returns the same pool on every call. Between calls its
processes are: `size` workers, multiprocessing's fork server (workers are
forked from it, single-threaded, with `jaxrlgen.rewards` already imported,
so a replacement costs milliseconds rather than a fresh interpreter's
import of JAX) and multiprocessing's resource tracker. That set does not
grow with the number of items or of failures. Measured on 2 CPU cores (see
`tests/rewards/test_host.py` and
`experiments/benchmarks/host_reward_processes.py`): after 1,000 items that
hang (timeout 0.02 s) the process had the same 1 thread and the same 4
child processes (2 workers, fork server, resource tracker) as after its
first call.

Functions travel by pickle, so they must be importable by the worker: a
module-level function or a `functools.partial` of one, in an importable
module or in a file loaded through an import path (`registry.load`, which
the worker repeats). A lambda or closure fails with a clear error when the
reward is built. Workers inherit the caller's environment and are not a
sandbox: untrusted code goes through `rewards.sandbox`. A worker exits when
its pipe closes or the fork server (which exits with the caller) is gone.
"""

import atexit
import importlib.util
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import signal
import sys
import threading
import time
from typing import Any, Callable, Sequence

_PRELOAD = ['jaxrlgen.rewards']
_USER_PREFIX = '_jaxrlgen_user_'  # registry.load's modules for .py files.
_MAX_ERROR = 1000


def _as_reward(value) -> float:
  if hasattr(value, 'reshape'):
    value = value.reshape(())  # A 1-element array is fine.
  out = float(value)
  if not math.isfinite(out):
    raise ValueError(f'the reward is {out}, not a finite number')
  return out


def _load_user_modules(files: dict[str, str]):
  for name, path in files.items():
    if name not in sys.modules:
      spec = importlib.util.spec_from_file_location(name, path)
      module = importlib.util.module_from_spec(spec)
      sys.modules[name] = module
      spec.loader.exec_module(module)


def _watch_parent(parent: int):
  while True:
    time.sleep(1.0)
    if os.getppid() != parent:
      os._exit(1)  # The fork server is gone: so is the caller.


def _worker_main(conn):
  """A worker's loop: ('ready',), then per task ('started', id) and
  ('done', id, ok, float or error message)."""
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # The caller handles ^C.
  threading.Thread(target=_watch_parent, args=(os.getppid(),),
                   daemon=True).start()
  functions = {}
  conn.send(('ready',))
  while True:
    try:
      task_id, blob, files, args, kwargs = conn.recv()
    except (EOFError, OSError):
      return
    try:
      fn = functions.get(blob)
      if fn is None:
        _load_user_modules(files)
        fn = pickle.loads(blob)
        if len(functions) > 64:
          functions.clear()
        functions[blob] = fn
    except BaseException as e:  # pylint: disable=broad-except
      conn.send(('done', task_id, False,
                 f'the worker could not load the function: '
                 f'{type(e).__name__}: {e}'[:_MAX_ERROR]))
      continue
    conn.send(('started', task_id))
    try:
      outcome = (True, _as_reward(fn(*args, **kwargs)))
    except BaseException as e:  # pylint: disable=broad-except
      outcome = (False, f'{type(e).__name__}: {e}'[:_MAX_ERROR])
    conn.send(('done', task_id, *outcome))


def dumps(fn: Callable[..., Any], name: str = 'reward') -> bytes:
  """`fn` pickled for a worker, or a ValueError that says how to fix it."""
  try:
    return pickle.dumps(fn)
  except Exception as e:
    raise ValueError(
        f'The host reward {name!r} cannot run in worker processes '
        f"(backend='process'): it does not pickle ({type(e).__name__}: {e}). "
        'Define it at module level in an importable module (a '
        'functools.partial of such a function works), or use '
        "backend='thread'.") from e


class _Worker:

  def __init__(self, ctx):
    self.conn, child = ctx.Pipe(duplex=True)
    self.process = ctx.Process(target=_worker_main, args=(child,),
                               daemon=True, name='jaxrlgen-reward-worker')
    self.process.start()
    child.close()
    self.spawned = time.monotonic()
    self.ready = False
    self.task = None  # The call it runs.
    self.sent = self.started = None

  def kill(self):
    if self.process.is_alive():
      self.process.kill()
    self.process.join(timeout=5.0)
    self.conn.close()
    if self.process.exitcode is not None:
      self.process.close()

  def exit_description(self) -> str:
    self.process.join(timeout=1.0)
    code = self.process.exitcode
    if code is None:
      return 'its worker stopped answering'
    if code < 0:
      return f'its worker died of signal {-code} ({signal.Signals(-code).name})'
    return f'its worker exited with status {code}'


class ProcessPool:
  """`size` worker processes that run calls with a timeout each.

  Attributes:
    size: workers.
    startup_timeout_s: how long a new worker may take to answer, and a call
      to start (load its function) before its worker is replaced.
  """

  def __init__(self, size: int, *, startup_timeout_s: float = 120.0):
    if size < 1:
      raise ValueError(f'ProcessPool size={size} must be >= 1.')
    self.size = int(size)
    self.startup_timeout_s = startup_timeout_s
    self._ctx = multiprocessing.get_context('forkserver')
    if not _forkserver_running():
      self._ctx.set_forkserver_preload(_PRELOAD)
    self._workers: list[_Worker] = []
    self._lock = threading.Lock()
    self.restarts = 0  # Workers replaced so far (hung or crashed).

  def _replace(self, worker: _Worker) -> _Worker:
    worker.kill()
    self.restarts += 1
    fresh = _Worker(self._ctx)
    self._workers[self._workers.index(worker)] = fresh
    return fresh

  def run(self, fn: Callable[..., Any] | bytes,
          calls: Sequence[tuple[tuple, dict]],
          timeout_s: float | None = None) -> list[tuple[bool, Any]]:
    """Runs `fn(*args, **kwargs)` for each `(args, kwargs)` in `calls`.

    Args:
      fn: the function, or its pickle (`dumps`).
      calls: arguments per call; they must pickle.
      timeout_s: seconds a call may run once started (None: no limit).
    Returns:
      Per call, (True, float) or (False, error message).
    """
    blob = fn if isinstance(fn, bytes) else dumps(fn)
    files = {name: m.__file__ for name, m in list(sys.modules.items())
             if name.startswith(_USER_PREFIX) and getattr(m, '__file__', None)}
    results: list[tuple[bool, Any] | None] = [None] * len(calls)
    with self._lock:
      while len(self._workers) < self.size:
        self._workers.append(_Worker(self._ctx))
      pending = list(range(len(calls) - 1, -1, -1))  # Popped from the end.
      failed_starts = 0
      while pending or any(w.task is not None for w in self._workers):
        now = time.monotonic()
        for w in self._workers:
          if w.ready and w.task is None and pending:
            i = pending.pop()
            w.task, w.sent, w.started = i, now, None
            try:
              w.conn.send((i, blob, files, *calls[i]))
            except (OSError, ValueError):
              pass  # It died; its sentinel says so below.
        deadlines = []
        for w in self._workers:
          if not w.ready:
            deadlines.append(w.spawned + self.startup_timeout_s)
          elif w.task is not None and w.started is None:
            deadlines.append(w.sent + self.startup_timeout_s)
          elif w.task is not None and timeout_s is not None:
            deadlines.append(w.started + timeout_s)
        wait = max(min(deadlines) - now, 0.0) if deadlines else None
        waitables = {}
        for w in self._workers:
          waitables[w.conn] = w
          waitables[w.process.sentinel] = w
        ready = multiprocessing.connection.wait(list(waitables), wait)
        dead = set()
        for obj in ready:
          w = waitables[obj]
          if w in dead:
            continue
          try:
            while w.conn.poll():
              message = w.conn.recv()
              if message[0] == 'ready':
                w.ready, failed_starts = True, 0
              elif message[0] == 'started':
                w.started = time.monotonic()
              else:
                _, i, ok, value = message
                results[i] = (ok, value)
                w.task = None
          except (EOFError, OSError):
            dead.add(w)
            continue
          if obj is w.process.sentinel:
            dead.add(w)
        now = time.monotonic()
        for w in list(self._workers):
          why = None
          if w in dead:
            why = w.exit_description()
          elif not w.ready and now - w.spawned >= self.startup_timeout_s:
            why = (f'its worker did not start within '
                   f'{self.startup_timeout_s} s')
          elif w.task is not None and w.started is None and (
              now - w.sent >= self.startup_timeout_s):
            why = f'it did not start within {self.startup_timeout_s} s'
          elif (w.task is not None and timeout_s is not None
                and w.started is not None and now - w.started >= timeout_s):
            why = f'timed out after {timeout_s} s'
          if why is None:
            continue
          if w.task is not None:
            results[w.task] = (False, why)
          if not w.ready:
            failed_starts += 1
          self._replace(w)
        if failed_starts > 3 * self.size:
          for i in pending:
            results[i] = (False, 'the reward workers fail to start')
          pending = []
    return [r if r is not None else (False, 'not run') for r in results]

  def close(self):
    """Stops the workers (a closed pool starts new ones if run again)."""
    with self._lock:
      for w in self._workers:
        w.kill()
      self._workers = []

  def pids(self) -> list[int]:
    return [w.process.pid for w in self._workers]


def _forkserver_running() -> bool:
  from multiprocessing import forkserver  # pylint: disable=g-import-not-at-top
  return getattr(forkserver._forkserver, '_forkserver_pid', None) is not None  # pylint: disable=protected-access


_POOLS: dict[int, ProcessPool] = {}
_POOLS_LOCK = threading.Lock()


def pool(size: int | None = None) -> ProcessPool:
  """The shared pool of `size` workers (None: one per CPU core)."""
  size = int(size or os.cpu_count() or 1)
  with _POOLS_LOCK:
    if size not in _POOLS:
      _POOLS[size] = ProcessPool(size)
    return _POOLS[size]


@atexit.register
def close_all():
  """Stops every shared pool's workers."""
  with _POOLS_LOCK:
    for p in _POOLS.values():
      p.close()
