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

Workers are forked from a zygote: a fresh interpreter (not a fork of the
caller, whose JAX threads make `fork` unsafe) that imports each reward
function's module once (JAX with it, for the library's own rewards), then
forks a worker on request, so a replacement costs milliseconds rather than
a new interpreter's imports. A worker connects back over a Unix socket and
is watched through a pidfd (a handle no reused pid can fool). It dies with
the zygote (`PR_SET_PDEATHSIG`), and the zygote exits when the caller's
end of its pipe closes, so nothing outlives the caller.

The pool runs in the calling thread (no helper threads) and is kept for
reuse: `pool(size)` returns the same pool on every call. Between calls its
processes are the zygote and `size` workers, whatever happened to the
items. Measured on 2 CPU cores with 2 workers
(`experiments/benchmarks/host_reward_processes.py`): after 1,000 items that
hang (timeout 0.01 s; 16-17 s, 1,002 restarts) the process had the same 1
Python thread, 2 OS threads and 3 descendant processes (zygote and 2
workers) as before; the thread backend left 50 live threads after 50 such
items. A cheap item costs about the same in both backends, 0.1-0.25 ms
(batches of 64; two runs on the shared machine: 107 and 241 us in threads,
118 and 167 us in processes). `tests/rewards/test_workers.py` asserts the counts
after 50 mixed bad items (and, marked slow, after 1,000 hanging ones).

Functions travel by pickle, so they must be importable by the worker: a
module-level function or a `functools.partial` of one, in an importable
module (not `__main__`) or in a file loaded through an import path
(`registry.load`, which the worker repeats). A lambda or closure fails with
a clear error when the reward is built. Workers inherit the caller's
environment and are not a sandbox: untrusted code goes through
`rewards.sandbox`.
"""

import atexit
import functools
import json
import multiprocessing.connection
import os
import pickle
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Sequence

_USER_PREFIX = '_jaxrlgen_user_'  # registry.load's modules for .py files.
_MAX_ERROR = 1000
_SETTLE_S = 5.0


# The zygote: a fresh interpreter that imports only the standard library
# and, on request, reward modules; then forks workers. Its source is here
# rather than in an importable module because importing any jaxrlgen module
# imports JAX (the package's __init__), which a reward may not need.
_ZYGOTE = r'''
import ctypes, importlib, importlib.util, json, math, os, pickle, signal
import socket, sys
from multiprocessing.connection import Connection
sys.path[:] = json.loads(sys.argv[1])
address, max_error = sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGINT, signal.SIG_IGN)  # The caller handles ^C.
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # The kernel reaps workers.

def preload(spec):
  # 'package.module', or 'name=path/file.py' as registry.load names it.
  name, _, path = spec.partition('=')
  if name in sys.modules:
    return
  if path:
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[name] = module
    module_spec.loader.exec_module(module)
  else:
    importlib.import_module(name)

def as_reward(value):
  if hasattr(value, 'reshape'):
    value = value.reshape(())  # A 1-element array is fine.
  out = float(value)
  if not math.isfinite(out):
    raise ValueError('the reward is %s, not a finite number' % out)
  return out

def error(e):
  return ('%s: %s' % (type(e).__name__, e))[:max_error]

def worker():
  # Says ('ready', pid), then per task ('started', id) and
  # ('done', id, ok, float or error message).
  ctypes.CDLL(None).prctl(1, signal.SIGKILL, 0, 0, 0)  # PDEATHSIG: dies with
  if os.getppid() == 1:                                # the zygote.
    return
  sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
  sock.connect(address)
  conn = Connection(sock.detach())
  conn.send(('ready', os.getpid()))
  functions = {}
  while True:
    try:
      task_id, blob, files, args, kwargs = conn.recv()
    except (EOFError, OSError):
      return
    try:
      fn = functions.get(blob)
      if fn is None:
        for name, path in files.items():
          preload(name + '=' + path)
        fn = pickle.loads(blob)
        if len(functions) > 64:
          functions.clear()
        functions[blob] = fn
    except BaseException as e:
      conn.send(('done', task_id, False,
                 'the worker could not load the function: ' + error(e)))
      continue
    conn.send(('started', task_id))
    try:
      outcome = (True, as_reward(fn(*args, **kwargs)))
    except BaseException as e:
      outcome = (False, error(e))
    conn.send(('done', task_id) + outcome)

stdin = sys.stdin.buffer
while True:
  line = stdin.readline()
  if not line:
    break  # The caller closed the pipe or is gone.
  command, _, argument = line.decode().strip().partition(' ')
  if command == 'preload':
    try:
      preload(argument)
    except BaseException as e:
      sys.stderr.write('jaxrlgen reward workers: preloading %s failed: %s\\n'
                       % (argument, e))
  elif command == 'fork' and os.fork() == 0:
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)  # Rewards may wait.
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    code = 1
    try:
      worker()
      code = 0
    finally:
      os._exit(code)
'''


def dumps(fn: Callable[..., Any], name: str = 'reward') -> bytes:
  """`fn` pickled for a worker, or a ValueError that says how to fix it."""
  inner = fn
  while isinstance(inner, functools.partial):
    inner = inner.func
  try:
    if getattr(inner, '__module__', None) == '__main__':
      raise pickle.PicklingError('it is defined in __main__, which a worker '
                                 'cannot import')
    return pickle.dumps(fn)
  except Exception as e:
    raise ValueError(
        f'The host reward {name!r} cannot run in worker processes '
        f"(backend='process'): it does not pickle ({type(e).__name__}: {e}). "
        'Define it at module level in an importable module (a '
        'functools.partial of such a function works), or use '
        "backend='thread'.") from e


def _modules_of(fn) -> list[str]:
  """Modules to preload in the zygote for `fn` ('name' or 'name=path')."""
  out = []
  while isinstance(fn, functools.partial):
    fn = fn.func
  name = getattr(fn, '__module__', None)
  module = sys.modules.get(name) if name else None
  if module is None or name == '__main__':
    return out
  if name.startswith(_USER_PREFIX):
    out.append(f'{name}={module.__file__}')
  else:
    out.append(name)
  return out


class _Worker:
  """A connected worker: its pipe and a pidfd (a handle on the process that
  a reused pid cannot fool; readable once it has exited)."""

  def __init__(self, conn, pid: int):
    self.conn = conn
    self.pid = pid
    self.pidfd = os.pidfd_open(pid)
    self.task = None  # The call it runs.
    self.sent = self.started = None

  def kill(self):
    try:
      signal.pidfd_send_signal(self.pidfd, signal.SIGKILL)
    except ProcessLookupError:
      pass
    # Gone before we go on: the zygote reaps it.
    select.select([self.pidfd], [], [], 5.0)
    self.conn.close()
    os.close(self.pidfd)


class ProcessPool:
  """`size` worker processes that run calls with a timeout each.

  Attributes:
    size: workers.
    startup_timeout_s: how long a new worker may take to connect, and a
      call to start (load its function), before it counts as failed.
    restarts: workers replaced so far (hung or crashed).
  """

  def __init__(self, size: int, *, startup_timeout_s: float = 120.0):
    if size < 1:
      raise ValueError(f'ProcessPool size={size} must be >= 1.')
    self.size = int(size)
    self.startup_timeout_s = startup_timeout_s
    self.restarts = 0
    self._workers: list[_Worker] = []
    self._spawning: list[float] = []  # When each fork was asked for.
    self._preloaded: set[str] = set()
    self._zygote = None
    self._dir = self._listener = None
    self._lock = threading.Lock()

  def _start_zygote(self):
    self._dir = tempfile.mkdtemp(prefix='jaxrlgen-workers-')
    address = os.path.join(self._dir, 'socket')
    self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    self._listener.bind(address)
    self._listener.listen(64)
    self._zygote = subprocess.Popen(
        [sys.executable, '-c', _ZYGOTE, json.dumps(sys.path), address,
         str(_MAX_ERROR)],
        stdin=subprocess.PIPE, start_new_session=True)
    self._preloaded = set()
    self._spawning = []

  def _stop_zygote(self):
    if self._zygote is not None:
      try:
        self._zygote.stdin.close()
      except OSError:
        pass
      try:
        self._zygote.wait(timeout=5.0)
      except subprocess.TimeoutExpired:
        self._zygote.kill()
        self._zygote.wait(timeout=5.0)
      self._zygote = None
    if self._listener is not None:
      self._listener.close()
      self._listener = None
    if self._dir is not None:
      shutil.rmtree(self._dir, ignore_errors=True)
      self._dir = None

  def _tell(self, line: str) -> bool:
    if self._zygote is None or self._zygote.poll() is not None:
      self._stop_zygote()
      self._start_zygote()
    try:
      self._zygote.stdin.write(line.encode() + b'\n')
      self._zygote.stdin.flush()
      return True
    except OSError:
      self._stop_zygote()
      return False

  def _fill(self):
    """Asks the zygote for workers until `size` exist or are on their way."""
    while len(self._workers) + len(self._spawning) < self.size:
      if not self._tell('fork'):
        return
      self._spawning.append(time.monotonic())

  def _accept(self):
    conn, _ = self._listener.accept()
    conn = multiprocessing.connection.Connection(conn.detach())
    try:
      if not conn.poll(self.startup_timeout_s):
        raise TimeoutError('no hello')
      kind, pid = conn.recv()
      if kind != 'ready':
        raise ValueError(kind)
      worker = _Worker(conn, pid)
    except Exception:  # A worker that died at once, or a stray connection.
      conn.close()
      return
    if self._spawning:
      self._spawning.pop(0)
    self._workers.append(worker)

  def _replace(self, worker: _Worker):
    worker.kill()
    self._workers.remove(worker)
    self.restarts += 1
    self._fill()

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
    if isinstance(fn, bytes):
      blob, modules = fn, _modules_of(pickle.loads(fn))
    else:
      blob, modules = dumps(fn), _modules_of(fn)
    files = {name: m.__file__ for name, m in list(sys.modules.items())
             if name.startswith(_USER_PREFIX) and getattr(m, '__file__', None)}
    results: list[tuple[bool, Any] | None] = [None] * len(calls)
    with self._lock:
      if self._zygote is None:
        self._start_zygote()
      # The zygote also imports the user's modules loaded from files, which
      # every worker loads before it unpickles a function: forked after,
      # a worker finds them imported (a test file that imports JAX took
      # 2-3 s per restarted worker otherwise).
      wanted = modules + [f'{name}={path}' for name, path in files.items()]
      fresh = [m for m in dict.fromkeys(wanted) if m not in self._preloaded]
      for module in fresh:
        if self._tell(f'preload {module}'):
          self._preloaded.add(module)
      if fresh:
        # Workers forked before the zygote imported the new module would
        # each import it on their own (JAX, often): fork them again.
        for w in self._workers:
          w.kill()
        self._workers = []
      self._fill()
      pending = list(range(len(calls) - 1, -1, -1))  # Popped from the end.
      failed_starts = 0
      while pending or any(w.task is not None for w in self._workers):
        now = time.monotonic()
        for w in self._workers:
          if w.task is None and pending:
            i = pending.pop()
            w.task, w.sent, w.started = i, now, None
            try:
              w.conn.send((i, blob, files, *calls[i]))
            except OSError:
              pass  # It died; its pidfd says so below.
        deadlines = [t + self.startup_timeout_s for t in self._spawning]
        for w in self._workers:
          if w.task is not None and w.started is None:
            deadlines.append(w.sent + self.startup_timeout_s)
          elif w.task is not None and timeout_s is not None:
            deadlines.append(w.started + timeout_s)
        wait = max(min(deadlines) - now, 0.0) if deadlines else None
        waitables = {self._listener: None}
        for w in self._workers:
          waitables[w.conn] = w
          waitables[w.pidfd] = w
        ready = multiprocessing.connection.wait(list(waitables), wait)
        dead = set()
        for obj in ready:
          w = waitables[obj]
          if w is None:
            self._accept()
            failed_starts = 0
            continue
          if w in dead:
            continue
          try:
            while w.conn.poll():
              message = w.conn.recv()
              if message[0] == 'started':
                w.started = time.monotonic()
              else:
                _, i, ok, value = message
                results[i] = (ok, value)
                w.task = None
          except (EOFError, OSError):
            dead.add(w)
            continue
          if obj is w.pidfd:
            dead.add(w)
        now = time.monotonic()
        late = [t for t in self._spawning
                if now - t >= self.startup_timeout_s]
        if late:
          failed_starts += len(late)
          self._spawning = [t for t in self._spawning if t not in late]
          self._fill()
        for w in list(self._workers):
          why = None
          if w in dead:
            why = ('its worker process died (it exited, or a signal such '
                   'as a segfault killed it)')
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
          self._replace(w)
        if failed_starts > 3 * self.size or (not self._workers
                                              and not self._spawning):
          for i in pending:
            results[i] = (False, 'the reward workers fail to start')
          pending = []
      # Replacements forked near the end connect now, so that the pool is
      # whole (and its process count steady) between calls.
      settle = time.monotonic() + _SETTLE_S
      while self._spawning and time.monotonic() < settle:
        if multiprocessing.connection.wait(
            [self._listener], settle - time.monotonic()):
          self._accept()
    return [r if r is not None else (False, 'not run') for r in results]

  def close(self):
    """Stops the workers and the zygote (a closed pool starts again if run)."""
    with self._lock:
      for w in self._workers:
        w.kill()
      self._workers = []
      self._stop_zygote()

  def pids(self) -> list[int]:
    return [w.pid for w in self._workers]


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


def descendants(pid: int | str = 'self') -> int:
  """How many processes run below `pid` (children, theirs, ...), read from
  /proc (Linux); 0 where it cannot be read. What a test or a benchmark
  counts to show that hung or crashed items leave nothing behind."""
  n = 0
  try:
    tasks = os.listdir(f'/proc/{pid}/task')
  except OSError:  # It ended meanwhile, or no /proc.
    return 0
  for task in tasks:
    try:
      with open(f'/proc/{pid}/task/{task}/children') as f:
        children = f.read().split()
    except OSError:
      continue
    n += sum(1 + descendants(c) for c in children)
  return n


def counts() -> tuple[int, int, int]:
  """(Python threads, OS threads, descendant processes) of this process."""
  return (threading.active_count(), len(os.listdir('/proc/self/task')),
          descendants())

