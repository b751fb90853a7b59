"""Rewards computed by ordinary Python on the host, usable inside jit.

A math-answer checker, a regex, a compiler or a molecule toolkit is not JAX.
`host_reward` turns a per-item Python function into a jit-callable batch
function through `jax.pure_callback`: the batch is copied to the host, the
function runs once per item in a pool of threads, and each item's float comes
back with a flag that says whether it failed. An item whose function raises,
returns something that is not a finite number, or runs past `timeout_s` gets
`penalty` and `failed=True`; the step goes on.

`text_reward` decodes completions with the tokenizer first, so that
`fn(text, **fields)` can be used as a reward `(rollout, batch) -> f32[B]`.

A `TextReward` can be passed as `reward_fn` to `train.step.rl_step` as it
is; `jaxrlgen.train.host_step` has the step variants that also log the
failure count (`reward/host_failures`), in one jit or in two jitted halves
with the reward computed between them.

Threads, not processes, run the items: most host rewards either release the
GIL (regex, NumPy, a subprocess) or are cheap. A Python thread cannot be
killed, so a timed-out item is abandoned (it finishes in the background as a
daemon thread and its result is ignored); a function that can hang for good
(a program under test) should run it in a subprocess with its own timeout.
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


def _as_reward(value) -> float:
  """`value` as a finite Python float, or ValueError."""
  out = float(np.asarray(value).reshape(()))  # A 1-element array is fine.
  if not math.isfinite(out):
    raise ValueError(f'the reward is {out}, not a finite number')
  return out


def run_items(fn: Callable[..., Any], arrays: Sequence[np.ndarray], *,
              penalty: float = 0.0, timeout_s: float | None = None,
              max_workers: int | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Calls `fn(arrays[0][i], arrays[1][i], ...)` for every item i, in threads.

  Args:
    fn: per-item function returning a float.
    arrays: NumPy arrays sharing the leading axis B.
    penalty: the reward of an item that failed.
    timeout_s: seconds an item may run, counted from when it starts; None
      waits for ever.
    max_workers: items running at once (None: all B). An item abandoned on
      timeout frees its slot.
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
  slots = b if max_workers is None else max(int(max_workers), 1)
  rewards = np.full((b,), penalty, np.float32)
  failed = np.ones((b,), np.bool_)
  finished = threading.Condition()
  results: dict[int, tuple[bool, Any]] = {}  # Item -> (ok, value or error).

  def work(i):
    try:
      outcome = (True, _as_reward(fn(*(a[i] for a in arrays))))
    except Exception as e:  # Any failure of user code is a penalty.
      outcome = (False, e)
    with finished:
      results[i] = outcome
      finished.notify()

  waiting = list(range(b - 1, -1, -1))  # Popped from the end: item 0 first.
  running: dict[int, float] = {}  # Item -> start time.
  errors = []
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
          ok, value = results[i]
          if ok:
            rewards[i], failed[i] = value, False
          else:
            errors.append(f'item {i}: {type(value).__name__}: {value}')
        elif timeout_s is not None and now - running[i] >= timeout_s:
          del running[i]  # Abandoned: its late result is ignored.
          errors.append(f'item {i}: timed out after {timeout_s} s')
  if errors:
    logging.log_every_n_seconds(
        logging.WARNING, 'Host reward %s: %d of %d items failed (penalty %s), '
        'e.g. %s', 60, getattr(fn, '__name__', fn), len(errors), b, penalty,
        errors[0])
  return rewards, failed


def host_reward(fn: Callable[..., Any], *, penalty: float = 0.0,
                timeout_s: float | None = None,
                max_workers: int | None = None):
  """A jit-callable batch reward from a per-item Python function.

  Args:
    fn: called as `fn(x1[i], x2[i], ...)` with NumPy slices of item i of each
      argument; returns a float. It should be deterministic: JAX may call a
      pure callback more than once, or skip it if its result is unused.
    penalty: reward of an item whose `fn` raises, returns a non-finite value
      or times out.
    timeout_s: per-item time limit in seconds (None: none).
    max_workers: threads at once (None: one per item).
  Returns:
    `call(*arrays) -> (rewards f32[B], failed bool[B])` for arrays with a
    leading axis B; works inside jit (via `jax.pure_callback`), under vmap
    (one call per mapped element) and eagerly. `call.host` is the same
    computation on NumPy arrays without JAX.
  """
  if timeout_s is not None and timeout_s <= 0:
    raise ValueError(f'host_reward timeout_s={timeout_s} must be > 0 or None.')
  if max_workers is not None and max_workers < 1:
    raise ValueError(f'host_reward max_workers={max_workers} must be >= 1 or '
                     'None.')
  host = functools.partial(run_items, fn, penalty=penalty, timeout_s=timeout_s,
                           max_workers=max_workers)

  def callback(*arrays):
    return host(arrays)

  def call(*arrays):
    if not arrays:
      raise ValueError('A host reward needs at least one array argument.')
    b = jnp.shape(arrays[0])[0]
    out = (jax.ShapeDtypeStruct((b,), jnp.float32),
           jax.ShapeDtypeStruct((b,), jnp.bool_))
    return jax.pure_callback(callback, out, *arrays, vmap_method='sequential')

  call.host = lambda *arrays: host(arrays)
  call.__name__ = getattr(fn, '__name__', 'host_reward')
  return call


class TextReward:
  """A host reward over decoded completions: `(rollout, batch) -> f32[B]`.

  `fn(text, **kwargs)` is called per completion with `text` the decoded
  completion (up to EOS), `kwargs` the named `fields` of `batch` (item i of
  each: a Python number for a numeric field, e.g. `answer=12`, the string
  for a text field (`rewards.fields`), else the NumPy slice) and, with
  `with_prompt`, `prompt=` the decoded prompt. Calling the object gives the
  rewards; `with_failures` also gives which items failed.
  """

  def __init__(self, fn: Callable[..., Any], tokenizer, *,
               fields: Sequence[str] = (), with_prompt: bool = False,
               penalty: float = 0.0, timeout_s: float | None = None,
               max_workers: int | None = None):
    self.fn = fn
    self.tokenizer = tokenizer
    self.fields = tuple(fields)
    self.with_prompt = with_prompt
    self.__name__ = getattr(fn, '__name__', 'text_reward')
    self._batch_fn = host_reward(self._item, penalty=penalty,
                                 timeout_s=timeout_s, max_workers=max_workers)

  def _item(self, actions, mask, prompt, prompt_mask, *values):
    text = self.tokenizer.decode(actions[mask])
    kwargs = {f: fields_lib.item_value(v) for f, v in zip(self.fields, values)}
    if self.with_prompt:
      kwargs['prompt'] = self.tokenizer.decode(prompt[prompt_mask])
    return self.fn(text, **kwargs)

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
                max_workers: int | None = None) -> TextReward:
  """`TextReward(fn, tokenizer, ...)`: see its docstring."""
  return TextReward(fn, tokenizer, fields=fields, with_prompt=with_prompt,
                    penalty=penalty, timeout_s=timeout_s,
                    max_workers=max_workers)
