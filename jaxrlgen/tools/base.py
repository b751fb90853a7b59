"""Tools: what a tool is, what a call returns, and how a batch of calls runs.

A tool is a Python function `str -> str`. `ToolSet.run_calls(texts)` takes
one model turn per row (or None for a row that is not in a tool turn),
parses each with the call format, runs the calls of the whole batch
concurrently and returns one `ToolResult` per row: the observation text to
append, and a status the environment counts in its metrics.

Where a tool runs:

- inline, in the caller: tools that are cheap and bounded by construction
  (the calculator);
- in the shared host-reward process pool (`rewards.workers`), every other
  tool: a call that runs past its timeout has its worker killed
  (`SIGKILL`) and replaced, so a loop that holds the GIL or a C extension
  that never returns costs its timeout and nothing more, and a call that
  kills its interpreter (`os._exit`, a segfault) fails alone. The pool's
  workers are forked from a zygote that imports each tool's module once.

The pool carries a float per call (it was built for rewards), so a worker
writes the call's status and text to a file in a directory the caller made
for the batch and removes afterwards; what the pool returns says only
whether the call ended or why it did not.

A tool reports its own failure by raising: `ToolError(message)` gives the
observation `error: message`, `TimeoutError` a `timeout` status (a tool
that enforces its limits itself, as the Python tool does through the
sandbox), any other exception `error: ExceptionType: message`.
"""

import dataclasses
import functools
import json
import os
import pickle
import shutil
import tempfile
from typing import Any, Callable, Sequence

from jaxrlgen import registry

# A call's status: what the environment counts.
OK = 'ok'
ERROR = 'error'  # The tool raised, crashed, or returned something not a str.
TIMEOUT = 'timeout'  # It ran past its timeout (and was killed).
TRUNCATED = 'truncated'  # It returned more than max_output_chars.
UNKNOWN_TOOL = 'unknown_tool'  # The call names no configured tool.
BAD_CALL = 'bad_call'  # The turn holds a malformed call.
NO_CALL = 'no_call'  # The turn holds no call: nothing ran.
STATUSES = (OK, ERROR, TIMEOUT, TRUNCATED, UNKNOWN_TOOL, BAD_CALL, NO_CALL)

# Metric name per status, summed over a batch by `metrics`.
METRICS = {OK: 'tools/ok', ERROR: 'tools/errors', TIMEOUT: 'tools/timeouts',
           TRUNCATED: 'tools/truncated', UNKNOWN_TOOL: 'tools/unknown_tool',
           BAD_CALL: 'tools/bad_calls'}

# How long past `timeout_s` the pool waits for a tool that enforces its own
# limits (`Tool.limits`): the sandbox kills its program at `timeout_s` and
# needs about a second more to reap it and report.
LIMITS_GRACE_S = 3.0


class ToolError(Exception):
  """A tool's own failure; its message becomes the observation `error: ...`."""


@dataclasses.dataclass(frozen=True)
class Tool:
  """A tool and how it runs.

  Attributes:
    fn: `fn(argument: str) -> str`; with `limits`, `fn(argument, *,
      timeout_s, max_chars) -> str`.
    inline: run in the caller, not in a worker process. Only for tools that
      are cheap and end by construction: nothing can stop an inline tool.
    limits: `fn` takes `timeout_s` and `max_chars` and keeps to them itself
      (raising `TimeoutError` when it times out); the pool still kills it
      `LIMITS_GRACE_S` later.
    argument: the argument's name in a JSON call (`{"expression": "1+1"}`).
    description: one line for the model's instructions (default: the first
      line of `fn`'s docstring).
  """
  fn: Callable[..., str]
  inline: bool = False
  limits: bool = False
  argument: str = 'input'
  description: str = ''

  def __post_init__(self):
    if not callable(self.fn):
      raise ValueError(f'Tool.fn={self.fn!r} is not callable.')
    if not self.description:
      inner = self.fn
      while isinstance(inner, functools.partial):
        inner = inner.func
      doc = (getattr(inner, '__doc__', None) or '').strip()
      object.__setattr__(self, 'description', doc.split('\n')[0])


# Registered tools: name -> Tool, or a plain function `str -> str` (which
# runs in a worker process); an import path may name either.
TOOLS = registry.Registry('tool', 'config.tools.names')


@dataclasses.dataclass(frozen=True)
class Call:
  """A parsed tool call: the tool's name and its argument string."""
  name: str
  argument: str


@dataclasses.dataclass(frozen=True)
class BadCall:
  """A malformed call: what is wrong with it, for the model."""
  message: str


@dataclasses.dataclass(frozen=True)
class ToolResult:
  """What one row's tool turn gave.

  Attributes:
    status: one of `STATUSES`.
    output: the tool's output, or the error text (`error: ...`); '' for
      `no_call`.
    observation: `output` as the call format renders it: the text to append
      to the episode after the model's turn ('' for `no_call`).
    name: the tool called, when the call named one.
  """
  status: str
  output: str
  observation: str
  name: str | None = None

  @property
  def failed(self) -> bool:
    """A call was made and did not succeed."""
    return self.status not in (OK, NO_CALL)


def resolve(name: str) -> tuple[str, Tool]:
  """(the name a model calls it by, the Tool) for a configured tool.

  `name` is a registered name, an import path (`'pkg.mod:fn'`,
  `'path/file.py:fn'`; the model calls it `fn`), or `'alias=path'`.

  Raises:
    ValueError: unknown name, missing module or attribute, or not a tool.
  """
  alias, sep, target = name.partition('=')
  if not sep:
    alias, target = name.rpartition(':')[2], name
  if not alias.isidentifier():
    raise ValueError(f'{TOOLS.field} entry {name!r}: the tool name {alias!r}'
                     ' must be an identifier (letters, digits, _).')
  value = TOOLS.get(target)
  if not isinstance(value, Tool):
    if not callable(value):
      raise ValueError(f'{TOOLS.field} entry {name!r} is a '
                       f'{type(value).__name__}, not a function str -> str '
                       'or a jaxrlgen.tools.Tool.')
    value = Tool(value)
  return alias, value


def _truncate(text: str, max_chars: int) -> tuple[str, bool]:
  if len(text) <= max_chars:
    return text, False
  return (text[:max_chars] +
          f'\nerror: output truncated at {max_chars} chars'), True


def _call(tool: Tool, argument: str, timeout_s: float,
          max_chars: int) -> tuple[str, str]:
  """(status, output) of one call, in whichever process runs it."""
  try:
    if tool.limits:
      out = tool.fn(argument, timeout_s=timeout_s, max_chars=max_chars)
    else:
      out = tool.fn(argument)
  except ToolError as e:
    return ERROR, _truncate(f'error: {e}', max_chars)[0]
  except TimeoutError as e:
    message = str(e) or f'timed out after {timeout_s:g} s'
    return TIMEOUT, f'error: {message}'
  except BaseException as e:  # pylint: disable=broad-except
    # SystemExit and KeyboardInterrupt from a tool are its failures too.
    return ERROR, _truncate(f'error: {type(e).__name__}: {e}', max_chars)[0]
  if not isinstance(out, str):
    return ERROR, (f'error: the tool returned a {type(out).__name__}, '
                   'not a string')
  out, truncated = _truncate(out, max_chars)
  return (TRUNCATED if truncated else OK), out


def _call_in_worker(tools: tuple[Tool, ...], timeout_s: float,
                    max_chars: int, index: int, argument: str,
                    path: str) -> float:
  """Runs one call in a pool worker; its result goes to the file `path`."""
  status, out = _call(tools[index], argument, timeout_s, max_chars)
  partial = path + '.part'
  with open(partial, 'w', encoding='utf-8') as f:
    json.dump([status, out], f)
  os.replace(partial, path)  # Whole or absent, whatever kills the worker.
  return 0.0


class ToolSet:
  """Configured tools with their call format: parses turns, runs calls.

  Attributes:
    names: the tools' names, as the model calls them.
    tools: name -> Tool.
    format: the call format (one of `formats.FORMATS`).
    timeout_s: seconds a call may run.
    max_chars: characters of a tool's output kept.
    workers: pool size for tools that run in processes (None: one per core).
  """

  def __init__(self, tools: dict[str, Tool], format_, *, timeout_s: float,
               max_chars: int, workers: int | None = None):
    self.tools = dict(tools)
    self.names = tuple(self.tools)
    self.format = format_
    self.timeout_s = float(timeout_s)
    self.max_chars = int(max_chars)
    self.workers = workers
    self._pool_index = {n: i for i, n in enumerate(
        n for n, t in self.tools.items() if not t.inline)}
    self._blob = None  # The worker's function, pickled on first use.
    self._check_pickles()

  def _check_pickles(self):
    for name, tool in self.tools.items():
      if tool.inline:
        continue
      inner = tool.fn
      while isinstance(inner, functools.partial):
        inner = inner.func
      try:
        if getattr(inner, '__module__', None) == '__main__':
          raise pickle.PicklingError('it is defined in __main__, which a '
                                     'worker process cannot import')
        pickle.dumps(tool)
      except Exception as e:
        raise ValueError(
            f'The tool {name!r} cannot run in a worker process: it does not '
            f'pickle ({type(e).__name__}: {e}). Define it at module level in '
            'an importable module or a file named by an import path '
            "('path/file.py:fn'); a functools.partial of such a function "
            'works.') from e

  @property
  def stop_strings(self) -> tuple[str, ...]:
    """Strings that end a model turn at a call (the format's close tags)."""
    return self.format.stop_strings

  def instructions(self) -> str:
    """Text for the system prompt: the tools and how to call them."""
    return self.format.instructions()

  def schemas(self) -> list[dict[str, Any]]:
    """The tools as JSON function schemas, for a chat template's `tools`."""
    return [schema(name, tool) for name, tool in self.tools.items()]

  def parse(self, text: str) -> Call | BadCall | None:
    """The call in a model turn's text (its stop string included), a
    BadCall, or None when it holds none."""
    return self.format.parse(text)

  def _result(self, status: str, output: str, name=None) -> ToolResult:
    return ToolResult(status, output, self.format.render(output), name)

  def run(self, name: str, argument: str) -> ToolResult:
    """One call of a configured tool (in a worker unless it is inline)."""
    return self.run_parsed([Call(name, argument)])[0]

  def run_calls(self, texts: Sequence[str | None]) -> list[ToolResult | None]:
    """Parses and runs the calls of a batch of model turns concurrently.

    Args:
      texts: per row, the text of the model's last turn (ending with a
        stop string when the turn stopped at a call), or None for a row
        that takes no tool turn (finished, say).
    Returns:
      Per row, None where `texts` has None, else a ToolResult: `no_call`
      (nothing ran; the turn ended otherwise), a failure (`bad_call`,
      `unknown_tool`, `error`, `timeout`, `truncated`), or `ok`. Every call
      ends within about `timeout_s` (a tool with its own limits:
      `timeout_s + LIMITS_GRACE_S`) of its start; with more calls than
      workers, calls queue.
    """
    calls = [None if t is None else self.format.parse(t) for t in texts]
    return self.run_parsed(calls, rows=[t is not None for t in texts])

  def run_parsed(self, calls: Sequence[Call | BadCall | None],
                 rows: Sequence[bool] | None = None
                 ) -> list[ToolResult | None]:
    """`run_calls` on calls parsed already (`parse`).

    Args:
      calls: per row, a Call, a BadCall, or None (no call).
      rows: per row, whether it takes a tool turn (default: all); a row
        that does not gets None.
    """
    results: list[ToolResult | None] = [None] * len(calls)
    pooled: dict[float, list[tuple[int, Call]]] = {}
    for row, call in enumerate(calls):
      if rows is not None and not rows[row]:
        continue
      if call is None:
        results[row] = ToolResult(NO_CALL, '', '')
      elif isinstance(call, BadCall):
        results[row] = self._result(BAD_CALL, f'error: {call.message}')
      elif call.name not in self.tools:
        results[row] = self._result(
            UNKNOWN_TOOL, f'error: unknown tool {call.name!r}; the tools are '
            f'{", ".join(self.names)}', call.name)
      elif self.tools[call.name].inline:
        status, out = _call(self.tools[call.name], call.argument,
                            self.timeout_s, self.max_chars)
        results[row] = self._result(status, out, call.name)
      else:
        # Tools that keep their own limits get a longer kill deadline; the
        # pool takes one timeout per run, so they run as a group of their own.
        grace = LIMITS_GRACE_S if self.tools[call.name].limits else 0.0
        pooled.setdefault(grace, []).append((row, call))
    for grace, group in pooled.items():
      self._run_pooled(group, grace, results)
    return results

  def _run_pooled(self, calls, grace: float, results):
    """Runs `calls` ((row, Call) pairs) in the pool, filling `results`."""
    from jaxrlgen.rewards import workers  # pylint: disable=g-import-not-at-top
    if self._blob is None:
      tools = tuple(t for t in self.tools.values() if not t.inline)
      self._blob = pickle.dumps(functools.partial(
          _call_in_worker, tools, self.timeout_s, self.max_chars))
    directory = tempfile.mkdtemp(prefix='jaxrlgen-tools-')
    try:
      paths = [os.path.join(directory, str(i)) for i in range(len(calls))]
      outcomes = workers.pool(self.workers).run(
          self._blob,
          [((self._pool_index[c.name], c.argument, p), {})
           for (_, c), p in zip(calls, paths)],
          timeout_s=self.timeout_s + grace)
      for (row, call), path, (ended, message) in zip(calls, paths, outcomes):
        if ended:
          with open(path, encoding='utf-8') as f:
            status, out = json.load(f)
        elif message.startswith('timed out'):
          status, out = TIMEOUT, f'error: timed out after {self.timeout_s:g} s'
        else:
          status, out = ERROR, f'error: the tool failed: {message}'
        results[row] = self._result(status, out, call.name)
    finally:
      shutil.rmtree(directory, ignore_errors=True)


def schema(name: str, tool: Tool) -> dict[str, Any]:
  """A tool as an OpenAI-style JSON function schema (one string argument)."""
  return {'type': 'function', 'function': {
      'name': name, 'description': tool.description,
      'parameters': {'type': 'object',
                     'properties': {tool.argument: {'type': 'string'}},
                     'required': [tool.argument]}}}


def metrics(results: Sequence[ToolResult | None]) -> dict[str, float]:
  """Counts over a batch of results, for the environment's metrics.

  Keys: `tools/calls` (rows that made a call, well-formed or not),
  `tools/failures` (calls that did not succeed), and one per status
  (`METRICS`: `tools/ok`, `tools/errors`, `tools/timeouts`,
  `tools/truncated`, `tools/unknown_tool`, `tools/bad_calls`). Sums, so
  that turns and steps add up; divide by rows for rates.
  """
  out = {'tools/calls': 0.0, 'tools/failures': 0.0}
  out.update({key: 0.0 for key in METRICS.values()})
  for r in results:
    if r is None or r.status == NO_CALL:
      continue
    out['tools/calls'] += 1
    out['tools/failures'] += r.failed
    out[METRICS[r.status]] += 1
  return out
