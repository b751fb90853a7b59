"""Rewards computed by ordinary Python on the host, usable inside jit.

A math-answer checker, a regex, a compiler or a molecule toolkit is not JAX.
`host_reward` turns a per-item Python function into a jit-callable batch
function through `jax.pure_callback`: the batch is copied to the host, the
function runs once per item, and each item's float comes back with a flag
that says whether it failed. An item whose function raises, returns
something that is not a finite number, or runs past `timeout_s` gets
`penalty` and `failed=True`; the step goes on.

`text_reward` decodes completions with the tokenizer first, so that
`fn(text, **fields)` can be used as a reward `(rollout, batch) -> f32[B]`.

A `TextReward` can be passed as `reward_fn` to `train.step.rl_step` as it
is; `jaxrlgen.train.host_step` has the step variants that also log the
failure count (`reward/host_failures`), in one jit or in two jitted halves
with the reward computed between them.

Two backends run the items (`backend=`):

- 'thread' (the default): one thread per item (at most `max_workers`).
  Cheapest, and right for rewards that release the GIL (regex, NumPy, a
  subprocess such as the sandbox) or are quick. A thread cannot be killed:
  a timed-out item is abandoned and lives on as a daemon thread until it
  returns (for good, if it never does), a loop holding the GIL slows the
  whole run, and a crash of the interpreter (`os._exit`, a segfault) ends
  it.
- 'process': a shared pool of worker processes (`workers.pool`, one per
  CPU core unless `max_workers`), reused across calls. A worker whose item
  runs past `timeout_s` is killed and replaced, as is one that dies; the
  item gets its penalty and nothing is left behind (after 1,000 hanging
  items: the same threads and child processes as after the first call,
  see `workers`). The function must pickle: a module-level function or a
  partial of one. A cheap item costs about as much as in a thread
  (0.1-0.25 ms: two pipe messages and a pickle against a thread start).
"""

import functools
import math
import threading
import time
from typing import Any, Callable, Sequence

from absl import logging
import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core.types import Rollout
from jaxrlgen.rewards import fields as fields_lib
from jaxrlgen.rewards import workers


def _as_reward(value) -> float:
  """`value` as a finite Python float, or ValueError."""
  out = float(np.asarray(value).reshape(()))  # A 1-element array is fine.
  if not math.isfinite(out):
    raise ValueError(f'the reward is {out}, not a finite number')
  return out


BACKENDS = ('thread', 'process')


def _check_options(timeout_s, max_workers, backend):
  if timeout_s is not None and not timeout_s > 0:
    raise ValueError(f'host_reward timeout_s={timeout_s} must be > 0 or None.')
  if max_workers is not None and max_workers < 1:
    raise ValueError(f'host_reward max_workers={max_workers} must be >= 1 or '
                     'None.')
  if backend not in BACKENDS:
    raise ValueError(f'host_reward backend={backend!r} must be one of '
                     f'{BACKENDS}.')


def _run_threads(fn, calls, timeout_s, max_workers) -> list[tuple[bool, Any]]:
  """Per call (True, float) or (False, message), one thread per call."""
  b = len(calls)
  slots = b if max_workers is None else max(int(max_workers), 1)
  finished = threading.Condition()
  results: dict[int, tuple[bool, Any]] = {}  # Item -> (ok, value or error).

  def work(i):
    try:
      args, kwargs = calls[i]
      outcome = (True, _as_reward(fn(*args, **kwargs)))
    except Exception as e:  # Any failure of user code is a penalty.
      outcome = (False, f'{type(e).__name__}: {e}')
    with finished:
      results[i] = outcome
      finished.notify()

  out = [None] * b
  waiting = list(range(b - 1, -1, -1))  # Popped from the end: item 0 first.
  running: dict[int, float] = {}  # Item -> start time.
  with finished:
    while waiting or running:
      while waiting and len(running) < slots:
        i = waiting.pop()
        running[i] = time.monotonic()
        threading.Thread(target=work, args=(i,), daemon=True,
                         name=f'host_reward_{i}').start()
      wait = None
      if timeout_s is not None and running:
        wait = max(min(running.values()) + timeout_s - time.monotonic(), 0.0)
      if not any(i in results for i in running):
        finished.wait(wait)
      now = time.monotonic()
      for i in list(running):
        if i in results:
          del running[i]
          out[i] = results[i]
        elif timeout_s is not None and now - running[i] >= timeout_s:
          del running[i]  # Abandoned: its late result is ignored.
          out[i] = (False, f'timed out after {timeout_s} s')
  return out


def run_calls(fn: Callable[..., Any], calls: Sequence[tuple[tuple, dict]], *,
              penalty: float = 0.0, timeout_s: float | None = None,
              max_workers: int | None = None, backend: str = 'thread',
              name: str | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Calls `fn(*args, **kwargs)` for each `(args, kwargs)` in `calls`.

  Args:
    fn: per-item function returning a float.
    calls: B argument pairs; an item whose pair is an Exception instead
      (its arguments could not be made) fails with it.
    penalty: the reward of an item that failed.
    timeout_s: seconds an item may run, counted from when it starts; None
      waits for ever.
    max_workers: items running at once: threads (None: all B) or worker
      processes (None: one per CPU core; the shared `workers.pool`).
    backend: 'thread' or 'process' (see the module docstring).
    name: the reward, for the log.
  Returns:
    (rewards f32[B], failed bool[B]).
  """
  _check_options(timeout_s, max_workers, backend)
  b = len(calls)
  rewards = np.full((b,), penalty, np.float32)
  failed = np.ones((b,), np.bool_)
  outcomes: list[tuple[bool, Any] | None] = [None] * b
  todo = []
  for i, call in enumerate(calls):
    if isinstance(call, Exception):
      outcomes[i] = (False, f'{type(call).__name__}: {call}')
    else:
      todo.append(i)
  if todo:
    chosen = [calls[i] for i in todo]
    if backend == 'process':
      done = workers.pool(max_workers).run(fn, chosen, timeout_s)
    else:
      done = _run_threads(fn, chosen, timeout_s, max_workers)
    for i, outcome in zip(todo, done):
      outcomes[i] = outcome
  errors = []
  for i, (ok, value) in enumerate(outcomes):
    if ok:
      rewards[i], failed[i] = value, False
    else:
      errors.append(f'item {i}: {value}')
  if errors:
    logging.log_every_n_seconds(
        logging.WARNING, 'Host reward %s: %d of %d items failed (penalty %s), '
        'e.g. %s', 60, name or getattr(fn, '__name__', fn), len(errors), b,
        penalty, errors[0])
  return rewards, failed


def run_items(fn: Callable[..., Any], arrays: Sequence[np.ndarray], *,
              penalty: float = 0.0, timeout_s: float | None = None,
              max_workers: int | None = None, backend: str = 'thread'
              ) -> tuple[np.ndarray, np.ndarray]:
  """Calls `fn(arrays[0][i], arrays[1][i], ...)` for every item i
  (`run_calls` on the rows of `arrays`, which share the leading axis B).

  Returns:
    (rewards f32[B], failed bool[B]).
  """
  arrays = [np.asarray(a) for a in arrays]
  if not arrays:
    raise ValueError('host_reward needs at least one array argument.')
  b = arrays[0].shape[0]
  for a in arrays:
    if a.ndim == 0 or a.shape[0] != b:
      raise ValueError('Every argument of a host reward needs the same leading '
                       f'batch axis; got shapes {[x.shape for x in arrays]}.')
  calls = [(tuple(a[i] for a in arrays), {}) for i in range(b)]
  return run_calls(fn, calls, penalty=penalty, timeout_s=timeout_s,
                   max_workers=max_workers, backend=backend)


def _batch_callable(host: Callable[..., tuple[np.ndarray, np.ndarray]],
                    name: str):
  """`call(*arrays) -> (f32[B], bool[B])` through `jax.pure_callback`, with
  `call.host` the NumPy computation `host(*arrays)`."""

  def call(*arrays):
    if not arrays:
      raise ValueError('A host reward needs at least one array argument.')
    b = jnp.shape(arrays[0])[0]
    out = (jax.ShapeDtypeStruct((b,), jnp.float32),
           jax.ShapeDtypeStruct((b,), jnp.bool_))
    return jax.pure_callback(host, out, *arrays, vmap_method='sequential')

  call.host = host
  call.__name__ = name
  return call


def host_reward(fn: Callable[..., Any], *, penalty: float = 0.0,
                timeout_s: float | None = None,
                max_workers: int | None = None, backend: str = 'thread'):
  """A jit-callable batch reward from a per-item Python function.

  Args:
    fn: called as `fn(x1[i], x2[i], ...)` with NumPy slices of item i of each
      argument; returns a float. It should be deterministic: JAX may call a
      pure callback more than once, or skip it if its result is unused.
      With backend='process' it must pickle (`workers.dumps`).
    penalty: reward of an item whose `fn` raises, returns a non-finite value,
      times out or (processes) crashes its worker.
    timeout_s: per-item time limit in seconds (None: none).
    max_workers: threads at once (None: one per item), or worker processes
      (None: one per CPU core).
    backend: 'thread' or 'process'.
  Returns:
    `call(*arrays) -> (rewards f32[B], failed bool[B])` for arrays with a
    leading axis B; works inside jit (via `jax.pure_callback`), under vmap
    (one call per mapped element) and eagerly. `call.host` is the same
    computation on NumPy arrays without JAX.
  """
  _check_options(timeout_s, max_workers, backend)
  if backend == 'process':
    workers.dumps(fn, getattr(fn, '__name__', 'host_reward'))
  host = functools.partial(run_items, fn, penalty=penalty, timeout_s=timeout_s,
                           max_workers=max_workers, backend=backend)
  return _batch_callable(lambda *arrays: host(arrays),
                         getattr(fn, '__name__', 'host_reward'))


class TextReward:
  """A host reward over decoded completions: `(rollout, batch) -> f32[B]`.

  `fn(text, **kwargs)` is called per completion with `text` the decoded
  completion (up to EOS), `kwargs` the named `fields` of `batch` (item i of
  each: a Python number for a numeric field, e.g. `answer=12`, the string
  for a text field (`rewards.fields`), else the NumPy slice) and, with
  `with_prompt`, `prompt=` the decoded prompt. Completions are decoded in
  the calling process; only `fn` runs in the threads or worker processes of
  `backend`. Calling the object gives the rewards; `with_failures` also
  gives which items failed.
  """

  def __init__(self, fn: Callable[..., Any], tokenizer, *,
               fields: Sequence[str] = (), with_prompt: bool = False,
               penalty: float = 0.0, timeout_s: float | None = None,
               max_workers: int | None = None, backend: str = 'thread'):
    _check_options(timeout_s, max_workers, backend)
    self.fn = fn
    self.tokenizer = tokenizer
    self.fields = tuple(fields)
    self.with_prompt = with_prompt
    self.__name__ = getattr(fn, '__name__', 'text_reward')
    self._options = dict(penalty=penalty, timeout_s=timeout_s,
                         max_workers=max_workers, backend=backend)
    # Pickled once; a function that cannot go to a worker fails here.
    self._fn = workers.dumps(fn, self.__name__) if backend == 'process' else fn
    self._batch_fn = _batch_callable(self._host, self.__name__)

  def _call(self, i, actions, mask, prompt, prompt_mask, values):
    try:
      text = self.tokenizer.decode(actions[i][mask[i]])
      kwargs = {f: fields_lib.item_value(v[i])
                for f, v in zip(self.fields, values)}
      if self.with_prompt:
        kwargs['prompt'] = self.tokenizer.decode(prompt[i][prompt_mask[i]])
      return (text,), kwargs
    except Exception as e:  # A bad item fails alone.
      return e

  def _host(self, actions, mask, prompt, prompt_mask, *values):
    actions, mask, prompt, prompt_mask, *values = (
        np.asarray(a) for a in (actions, mask, prompt, prompt_mask, *values))
    calls = [self._call(i, actions, mask, prompt, prompt_mask, values)
             for i in range(actions.shape[0])]
    return run_calls(self._fn, calls, name=self.__name__, **self._options)

  def _arguments(self, rollout: Rollout, batch):
    missing = [f for f in self.fields if f not in batch]
    if missing:
      raise ValueError(f'Host reward {self.__name__!r} reads batch field(s) '
                       f'{missing}, which the batch lacks; it has '
                       f'{sorted(batch)}. Fix `fields=`.')
    chex.assert_rank([rollout.actions, rollout.mask], 2)
    return (rollout.actions, rollout.mask, rollout.context['tokens'],
            rollout.context['mask'], *(batch[f] for f in self.fields))

  def with_failures(self, rollout: Rollout, batch
                    ) -> tuple[jax.Array, jax.Array]:
    """(rewards f32[B], failed bool[B]) inside or outside jit."""
    return self._batch_fn(*self._arguments(rollout, batch))

  def host(self, rollout: Rollout, batch) -> tuple[np.ndarray, np.ndarray]:
    """`with_failures` on host values, without a callback."""
    args = jax.device_get(self._arguments(rollout, batch))
    return self._batch_fn.host(*args)

  def __call__(self, rollout: Rollout, batch) -> jax.Array:
    return self.with_failures(rollout, batch)[0]


def text_reward(fn: Callable[..., Any], tokenizer, *,
                fields: Sequence[str] = (), with_prompt: bool = False,
                penalty: float = 0.0, timeout_s: float | None = None,
                max_workers: int | None = None,
                backend: str = 'thread') -> TextReward:
  """`TextReward(fn, tokenizer, ...)`: see its docstring."""
  return TextReward(fn, tokenizer, fields=fields, with_prompt=with_prompt,
                    penalty=penalty, timeout_s=timeout_s,
                    max_workers=max_workers, backend=backend)
