"""The Python tool: runs a model's code in the sandbox and returns its output.

`run(code, timeout_s=, max_chars=)` runs `code` with
`rewards.sandbox.run_python` (a separate process under limits on time,
memory, processes and files, with no network and a read-only file system
where the OS allows: see that module) and returns what it printed, stdout
then stderr. As in an interactive interpreter, the value of a last line that
is an expression is printed too (`2 ** 10` gives `1024`), unless it is None.
A Markdown code fence around the code (```` ```python ... ``` ````) is
removed, and so is an indentation common to every line.

A program that ends with a non-zero status is an error (`error: exit
status 1`, then its output: the traceback); one that runs past `timeout_s`
raises `TimeoutError`, which the tool layer reports as a timeout. The
sandbox stops a program that writes more than about `4 * max_chars` bytes,
so a 1 GB print costs little; the layer truncates the output to
`max_chars`.
"""

import re
import textwrap

from jaxrlgen.rewards import sandbox
from jaxrlgen.tools import base

MEMORY_MB = 256

_FENCE = re.compile(r'^\s*```[\w+-]*[ \t]*\n(.*?)\n?```\s*$', re.DOTALL)


def clean(code: str) -> str:
  """`code` without a Markdown fence or a common indentation."""
  match = _FENCE.match(code)
  if match:
    code = match.group(1)
  return textwrap.dedent(code).strip('\n')


# The program the sandbox runs: the model's code as `<code>` (tracebacks
# show its own lines and line numbers, not this wrapper), with the value of
# a last expression printed as an interactive interpreter would.
_RUNNER = r"""
import ast, linecache, sys, traceback
source = %r
linecache.cache['<code>'] = (len(source), None, source.splitlines(True),
                             '<code>')
namespace = {'__name__': '__main__', '__builtins__': __builtins__}
try:
  tree = ast.parse(source, '<code>')
  last = None
  if tree.body and isinstance(tree.body[-1], ast.Expr):
    last = ast.Expression(tree.body.pop().value)
  exec(compile(tree, '<code>', 'exec'), namespace)
  if last is not None:
    value = eval(compile(last, '<code>', 'eval'), namespace)
    if value is not None:
      print(repr(value))
except SystemExit:
  raise
except BaseException as e:
  sys.stdout.flush()
  # Without this wrapper's frame; a syntax error needs none at all.
  tb = None if isinstance(e, SyntaxError) else e.__traceback__.tb_next
  traceback.print_exception(type(e), e, tb)
  sys.exit(1)
"""


def program(code: str) -> str:
  """The sandboxed program that runs `code` (see `_RUNNER`)."""
  return _RUNNER % (clean(code),)


def run(code: str, *, timeout_s: float = 5.0, max_chars: int = 2000,
        memory_mb: int = MEMORY_MB) -> str:
  """Runs Python code in the sandbox; returns its stdout and stderr.

  Args:
    code: the program (a fence and common indentation are removed).
    timeout_s: wall-clock limit.
    max_chars: the output the caller keeps; the sandbox stops the program
      once it has written well past it.
    memory_mb: address-space limit.
  Raises:
    TimeoutError: it ran past `timeout_s`.
    base.ToolError: it ended with a non-zero status or a signal.
  """
  result = sandbox.run_python(
      program(code), timeout_s=timeout_s, memory_mb=memory_mb,
      max_output_bytes=4 * max_chars + 4)
  out = result.stdout
  if result.stderr:
    if out and not out.endswith('\n'):
      out += '\n'
    out += result.stderr
  if result.timed_out:
    raise TimeoutError(f'timed out after {timeout_s:g} s')
  if result.truncated:
    # More than 4 * max_chars + 4 bytes: more than max_chars characters, so
    # the layer truncates it and says so.
    return out
  if result.signal is not None:
    raise base.ToolError(f'killed by signal {result.signal}\n{out}'.rstrip())
  if result.exit_code != 0:
    raise base.ToolError(f'exit status {result.exit_code}\n{out}'.rstrip())
  return out


PYTHON = base.Tool(run, limits=True, argument='code',
                   description='Runs Python code and returns what it prints '
                   '(and the value of a last expression).')
