"""Tools a model calls during an episode: a registry, call formats, and a
batch runner with timeouts.

A tool is a Python function `str -> str`. `make(config)` builds a `ToolSet`
from a `ToolsConfig` (the config section): the tools named by
`config.tools.names` (registered names, or import paths as for rewards:
`'pkg.mod:fn'`, `'path/file.py:fn'`, `'alias=pkg.mod:fn'`), the call format,
a timeout and an output cap. A multi-turn environment then, once per turn:

  tools = jaxrlgen.tools.make(config.tools)
  ...decode each row's turn until tools.stop_strings or its budget...
  results = tools.run_calls(turn_texts)      # None for rows that are done
  observations = [r.observation for r in results if r is not None]
  metrics = jaxrlgen.tools.metrics(results)  # tools/calls, tools/errors, ...

Built in (`TOOLS`): `calculator` (arithmetic evaluated from the syntax
tree, in the caller) and `python` (code run in the sandbox, from a worker
process). See docs/tools.md.
"""

import dataclasses
from typing import ClassVar

from jaxrlgen import registry
from jaxrlgen import schema
from jaxrlgen.tools import base
from jaxrlgen.tools import calculator
from jaxrlgen.tools import formats
from jaxrlgen.tools import python
from jaxrlgen.tools.base import BAD_CALL
from jaxrlgen.tools.base import BadCall
from jaxrlgen.tools.base import Call
from jaxrlgen.tools.base import ERROR
from jaxrlgen.tools.base import METRICS
from jaxrlgen.tools.base import metrics
from jaxrlgen.tools.base import NO_CALL
from jaxrlgen.tools.base import OK
from jaxrlgen.tools.base import STATUSES
from jaxrlgen.tools.base import TIMEOUT
from jaxrlgen.tools.base import Tool
from jaxrlgen.tools.base import ToolError
from jaxrlgen.tools.base import ToolResult
from jaxrlgen.tools.base import TOOLS
from jaxrlgen.tools.base import ToolSet
from jaxrlgen.tools.base import TRUNCATED
from jaxrlgen.tools.base import UNKNOWN_TOOL
from jaxrlgen.tools.formats import FORMATS

TOOLS.register('calculator', Tool(
    calculator.calculate, inline=True, argument='expression',
    description='Evaluates an arithmetic expression: numbers, + - * / // % '
    '**, parentheses.'))
TOOLS.register('python', python.PYTHON)


@dataclasses.dataclass(frozen=True)
class ToolsConfig:
  """The tools of an episode (`config.tools`)."""
  SPECIAL: ClassVar[schema.Special] = {
      'workers': schema.Means(zero='one worker process per CPU core')}
  names: tuple[str, ...] = ('calculator',)  # Registered names or import paths.
  format: str = 'tags'  # A FORMATS name, an import path, or 'auto'.
  timeout_s: float = 5.0  # Seconds a call may run before it is killed.
  max_output_chars: int = 2000  # Output kept; more is cut and an error.
  workers: int = 0  # Processes for tools not run inline; 0: one per core.

  def __post_init__(self):
    schema.positive(self, 'timeout_s', 'max_output_chars')
    schema.non_negative(self, 'workers')
    if not self.names:
      raise schema.FieldError('names', '=() must name at least one tool; '
                              f'registered: {TOOLS.names()}.')
    seen = set()
    for name in self.names:
      try:
        alias, _ = base.resolve(name)
      except ValueError as e:
        raise schema.FieldError('names', f'={self.names!r}: {e}') from None
      if alias in seen:
        raise schema.FieldError('names', f'={self.names!r} names the tool '
                                f'{alias!r} twice.')
      seen.add(alias)
    if registry.is_import_path(self.format):
      try:
        FORMATS.get(self.format)
      except ValueError as e:
        raise schema.FieldError('format', f'={self.format!r}: {e}') from None
    elif self.format != 'auto':
      schema.one_of(self, 'format', FORMATS.names() + ['auto'])


def make(config: ToolsConfig | dict | None = None, *,
         chat_template: str | None = None,
         path: str = 'config.tools') -> ToolSet:
  """The ToolSet a config section describes.

  Args:
    config: a ToolsConfig, or the section (ConfigDict or dict) to parse.
    chat_template: the model's chat template source, for `format='auto'`
      (`formats.detect`: `hermes` where it lays out `<tool_call>`s).
    path: where the section sits, for error messages.
  Raises:
    ValueError: naming the field, for an unknown tool or format or a tool
      that cannot run in a worker process.
  """
  config = schema.parse(ToolsConfig, config, path)
  tools = dict(base.resolve(name) for name in config.names)
  name = config.format
  if name == 'auto':
    name = formats.detect(chat_template)
  format_ = FORMATS.get(name)(tools)
  return ToolSet(tools, format_, timeout_s=config.timeout_s,
                 max_chars=config.max_output_chars,
                 workers=config.workers or None)


__all__ = [
    'BAD_CALL', 'BadCall', 'Call', 'ERROR', 'FORMATS', 'METRICS', 'NO_CALL',
    'OK', 'STATUSES', 'TIMEOUT', 'TOOLS', 'TRUNCATED', 'Tool', 'ToolError',
    'ToolResult', 'ToolSet', 'ToolsConfig', 'UNKNOWN_TOOL', 'base',
    'calculator', 'formats', 'make', 'metrics', 'python']
