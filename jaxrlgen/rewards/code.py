"""A reward for code: the fraction of a record's unit tests the completion
passes, run in the sandbox (`rewards.sandbox`).

`unit_tests(completion, tests=...)` takes the program from the completion
(the last ```python fence, else the last fence of any language, else the
whole text) and a record's `tests`: Python source whose top-level `assert`
statements are the tests and whose other top-level statements (imports,
helpers, assignments) are set-up run in order. One sandboxed process runs
the program, then each statement in its own try/except; the reward is the
number of asserts that passed over the number of asserts. A program that
raises (or exits) before the tests passes none; one that hangs or crashes
in a test keeps the passes before it (each is reported as it happens).

The harness prints each pass with a random per-run tag that the caller
checks; the program's own output is swallowed (its `print`s go nowhere) so
it cannot flood the output limit. A program that inspects its own
interpreter (frames, its file) can still find the tag and forge passes: the
tests run in the program's process, so this is a guard against accidents
and naive forgery, not against a program that sets out to cheat.

Registered as the reward `unit_tests`: a per-item host reward that reads the
text field named by `tests_field` (default 'tests').
"""

import ast
import functools
import re
import secrets

from jaxrlgen.rewards import functions
from jaxrlgen.rewards import host
from jaxrlgen.rewards import sandbox

FIELD_FLAG = 'config.reward.tests_field'
_FENCE = re.compile(r'```([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```', re.DOTALL)

# Runs as the sandboxed program: SOLUTION and STATEMENTS are literals.
_HARNESS = '''\
import os as _os, sys as _sys
_tag, _out = {tag!r}, _os.dup(1)
_sys.stdout = _sys.stdin = open(_os.devnull, 'r+')
def _run(_source, _ns):
  exec(compile(_source, '<solution>', 'exec'), _ns)
_ns = {{'__name__': '__main__'}}
try:
  _run({solution!r}, _ns)
except BaseException:
  _os._exit(0)
for _i, (_is_test, _source) in enumerate({statements!r}):
  try:
    _run(_source, _ns)
    if _is_test:
      _os.write(_out, ('%s %d\\n' % (_tag, _i)).encode())
  except BaseException:
    pass
'''


def extract_code(completion: str) -> str:
  """The program in a completion: the last ```python (or ```py, ```python3)
  fence, else the last fence, else the whole text."""
  fences = _FENCE.findall(completion)
  python = [body for lang, body in fences
            if lang.lower() in ('python', 'py', 'python3')]
  if python:
    return python[-1]
  if fences:
    return fences[-1][1]
  return completion


def split_tests(tests: str) -> list[tuple[bool, str]]:
  """`tests` as (is an assert, source) per top-level statement.

  Raises:
    ValueError: `tests` does not parse, or holds no assert.
  """
  try:
    tree = ast.parse(tests)
  except SyntaxError as e:
    raise ValueError(f'The unit tests do not parse ({e}): {tests[:200]!r}'
                     ) from e
  out = [(isinstance(node, ast.Assert), ast.get_source_segment(tests, node))
         for node in tree.body]
  if not any(is_test for is_test, _ in out):
    raise ValueError(f'The unit tests hold no top-level assert: '
                     f'{tests[:200]!r}')
  return out


def unit_tests(completion: str, *, tests: str, timeout_s: float = 5.0,
               memory_mb: int = 512) -> float:
  """The fraction of the asserts in `tests` that the completion's program
  passes, run in the sandbox (see the module docstring).

  Args:
    completion: the model's text; its code is `extract_code(completion)`.
    tests: Python source; each top-level assert is one test.
    timeout_s: the sandbox's wall-time limit for the program and all tests.
    memory_mb: its memory limit.
  Returns:
    passed / asserts, in [0, 1].
  Raises:
    ValueError: `tests` does not parse or has no assert (a bad record, not
      a bad completion: the bridge counts it as a failed item).
  """
  statements = split_tests(tests)
  tag = secrets.token_hex(16)
  program = _HARNESS.format(tag=tag, solution=extract_code(completion),
                            statements=statements)
  result = sandbox.run_python(program, timeout_s=timeout_s,
                              memory_mb=memory_mb)
  passed = set()
  for line in result.stdout.splitlines():
    got_tag, _, index = line.partition(' ')
    if got_tag == tag and index.isdigit():
      passed.add(int(index))
  asserts = [i for i, (is_test, _) in enumerate(statements) if is_test]
  return sum(i in passed for i in asserts) / len(asserts)


def _item(completion: str, *, field: str, timeout_s: float, memory_mb: int,
          **values) -> float:
  return unit_tests(completion, tests=values[field], timeout_s=timeout_s,
                    memory_mb=memory_mb)


def make_unit_tests(*, tokenizer, tests_field: str = 'tests', fields=None,
                    sandbox_timeout_s: float = 5.0,
                    sandbox_memory_mb: int = 512, **context):
  """The registered `unit_tests` reward: a host reward over the decoded
  completion and the record's `tests_field` text field."""
  if fields is not None and tests_field not in fields:
    raise ValueError(
        f"The reward 'unit_tests' reads the field {tests_field!r} "
        f'({FIELD_FLAG}), which the task\'s records lack; they have '
        f'{sorted(fields)}. Set {FIELD_FLAG} to one of them.')
  if not sandbox_timeout_s > 0 or not sandbox_memory_mb > 0:
    raise ValueError(f'unit_tests: sandbox_timeout_s={sandbox_timeout_s} and '
                     f'sandbox_memory_mb={sandbox_memory_mb} must be > 0.')
  options = {k: context[k] for k in functions.BRIDGE_OPTIONS
             if context.get(k) is not None}
  # The bridge's own limit must leave the sandbox time to report.
  options.setdefault('timeout_s', sandbox_timeout_s + 5.0)
  fn = functools.partial(_item, field=tests_field,
                         timeout_s=sandbox_timeout_s,
                         memory_mb=sandbox_memory_mb)
  fn.__name__ = 'unit_tests'
  return host.text_reward(fn, tokenizer, fields=(tests_field,), **options)
