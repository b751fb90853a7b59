"""Chat templates: a released model's Jinja template rendered the way
Hugging Face transformers renders it (`apply_chat_template(tokenize=False)`).

A chat model was trained on conversations laid out by its own template
(`<|im_start|>user ... <|im_end|>` for SmolLM2, `[INST] ... [/INST]` for
Mistral); a prompt given in another layout is out of distribution. The
template is Jinja source shipped with the tokenizer (`tokenizer_config.json`'s
`chat_template`, a `chat_template.jinja` file, or a GGUF's
`tokenizer.chat_template`). It is untrusted code, so it runs in jinja2's
immutable sandbox, with the environment transformers gives it:

- `trim_blocks` and `lstrip_blocks` (a block tag eats its own line break and
  the indentation before it), and the `loopcontrols` extension;
- `raise_exception(message)`, which templates call to refuse a conversation
  (e.g. roles that do not alternate), `strftime_now(format)`, `dict(...)` and
  a `namespace` that refuses underscore attributes;
- a `tojson` filter that keeps non-ASCII characters and does not escape HTML;
- `{% generation %}` blocks (they mark the assistant's tokens) render their
  body;
- the variables `messages`, `add_generation_prompt`, `tools`, `documents`,
  the tokenizer's special tokens as strings (`bos_token`, `eos_token`, ...)
  and any keyword the caller adds.

A template that does not compile or refuses to render is a `ChatTemplateError`
naming the config field and where the template came from.
"""

import dataclasses
import datetime
import functools
import json
import os
from typing import Any, Mapping, Sequence

FIELD = 'config.task.chat_template'
# The special tokens a template may read, as transformers names them.
SPECIAL_TOKENS = ('bos_token', 'eos_token', 'unk_token', 'sep_token',
                  'pad_token', 'cls_token', 'mask_token')
# Names a message's reasoning goes under; templates read one or another.
_REASONING = ('reasoning_content', 'thinking', 'reasoning')

Message = Mapping[str, Any]


class ChatTemplateError(ValueError):
  """A chat template failed to compile or to render a conversation."""


def _jinja():
  try:
    import jinja2  # pylint: disable=g-import-not-at-top
    import jinja2.ext  # pylint: disable=g-import-not-at-top
    import jinja2.sandbox  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Chat templates need jinja2: pip install "jinja2>=3.1"'
                      f' ({e}).') from e
  return jinja2


@functools.lru_cache(maxsize=8)
def _environment():
  jinja2 = _jinja()

  class Generation(jinja2.ext.Extension):
    # `{% generation %}...{% endgeneration %}` marks the assistant's part of
    # a conversation (for training masks); rendering keeps its body as is.
    tags = {'generation'}

    def parse(self, parser):
      lineno = next(parser.stream).lineno
      body = parser.parse_statements(('name:endgeneration',), drop_needle=True)
      return jinja2.nodes.CallBlock(self.call_method('_body'), [], [],
                                    body).set_lineno(lineno)

    def _body(self, caller):
      return caller()

  class Namespace(jinja2.utils.Namespace):
    # Storing dunder attributes is the way out of a sandbox; refuse them.
    def __init__(*args, **kwargs):  # pylint: disable=no-method-argument
      self, args = args[0], args[1:]
      for name in dict(*args, **kwargs):
        Namespace.check(name)
      jinja2.utils.Namespace.__init__(self, *args, **kwargs)

    def __setitem__(self, name, value):
      Namespace.check(name)
      jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def check(name):
      if isinstance(name, str) and name.startswith('_'):
        raise jinja2.exceptions.SecurityError(
            f'a chat template may not set the attribute {name!r}')

  class Dict:
    # `dict(...)` and `dict.fromkeys(...)` without the type itself.
    def __call__(self, *args, **kwargs):
      return dict(*args, **kwargs)

    def fromkeys(self, *args, **kwargs):
      return dict.fromkeys(*args, **kwargs)

  def raise_exception(message):
    raise jinja2.exceptions.TemplateError(message)

  def tojson(value, ensure_ascii=False, indent=None, separators=None,
             sort_keys=False):
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent,
                      separators=separators, sort_keys=sort_keys)

  env = jinja2.sandbox.ImmutableSandboxedEnvironment(
      trim_blocks=True, lstrip_blocks=True,
      extensions=[Generation, jinja2.ext.loopcontrols])
  env.filters['tojson'] = tojson
  env.globals.update(
      raise_exception=raise_exception, dict=Dict(), namespace=Namespace,
      strftime_now=lambda fmt: datetime.datetime.now().strftime(fmt))
  return env


@functools.lru_cache(maxsize=16)
def _compile(template: str, source: str):
  jinja2 = _jinja()
  try:
    return _environment().from_string(template)
  except jinja2.exceptions.TemplateError as e:
    raise ChatTemplateError(
        f'{FIELD}: the chat template of {source} does not compile: '
        f'{type(e).__name__}: {e}') from e


def _plain(value: Any) -> Any:
  """`value` rebuilt from JSON types only: the sandbox sees no objects whose
  methods it does not know (NumPy scalars become numbers)."""
  if value is None or type(value) in (str, int, float, bool):
    return value
  if isinstance(value, Mapping):
    return {_plain(k): _plain(v) for k, v in value.items()}
  if isinstance(value, tuple):
    return tuple(_plain(v) for v in value)
  if isinstance(value, list):
    return [_plain(v) for v in value]
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if hasattr(value, 'item'):  # A NumPy scalar.
    return _plain(value.item())
  for kind in (str, bool, int, float):
    if isinstance(value, kind):
      return kind(value)
  return f'<{type(value).__name__}>'


def _message(message: Message) -> dict:
  if not isinstance(message, Mapping):
    raise ChatTemplateError(f'{FIELD}: a chat message must be a dict with '
                            f"'role' and 'content', not {message!r}.")
  # Keys whose value is None are dropped: templates test for a key, and would
  # otherwise print "None".
  out = {k: v for k, v in _plain(message).items() if v is not None}
  reasoning = next((out[k] for k in _REASONING if k in out), None)
  if reasoning is not None:
    out = {'thinking': reasoning, **out, 'reasoning_content': reasoning}
  return out


@dataclasses.dataclass(frozen=True)
class ChatTemplate:
  """A model's chat template with the special tokens it reads.

  Attributes:
    template: the Jinja source.
    special_tokens: e.g. {'bos_token': '<s>', 'eos_token': '</s>'}.
    source: where the template came from (a path), for messages.
  """

  template: str
  special_tokens: Mapping[str, str] = dataclasses.field(default_factory=dict)
  source: str = 'the tokenizer'

  def render(self, messages: Sequence[Message], *,
             add_generation_prompt: bool = True, **kwargs: Any) -> str:
    """The conversation as the model's text.

    Args:
      messages: dicts with 'role' and 'content' (and whatever else the
        template reads).
      add_generation_prompt: end with the header of the assistant's turn, so
        that the model's continuation is its reply.
      **kwargs: further template variables (`tools=`, `documents=`, ...);
        they override special tokens of the same name.
    Raises:
      ChatTemplateError: the template does not compile, calls
        `raise_exception`, or fails otherwise; names config.task.chat_template
        and the template's source.
    """
    jinja2 = _jinja()
    compiled = _compile(self.template, self.source)
    conversation = [_message(m) for m in messages]
    variables = {'tools': None, 'documents': None,
                 **_plain(dict(self.special_tokens)), **_plain(kwargs)}
    try:
      return compiled.render(messages=conversation,
                             add_generation_prompt=add_generation_prompt,
                             **variables)
    except jinja2.exceptions.TemplateError as e:
      raise ChatTemplateError(
          f'{FIELD}: the chat template of {self.source} failed to render '
          f'{_preview(conversation)}: {type(e).__name__}: {e}. Fix the '
          f'prompt (or {FIELD.rsplit(".", 1)[0]}.system_prompt), or set '
          f'{FIELD}=False.') from e
    except Exception as e:  # A template's own bug: not the run's.
      raise ChatTemplateError(
          f'{FIELD}: the chat template of {self.source} raised '
          f'{type(e).__name__}: {e} on {_preview(conversation)}.') from e


def _preview(conversation: list[dict]) -> str:
  text = json.dumps(conversation, ensure_ascii=False)
  return text if len(text) <= 200 else text[:197] + '...'


def conversation(prompt: str | Sequence[Message], system_prompt: str = ''
                 ) -> list[dict]:
  """The messages of one prompt: the system prompt (if any) then the user's
  turn; a prompt that is already a list of messages is kept, with the system
  prompt put first unless it has one."""
  if isinstance(prompt, (str, bytes)):
    text = prompt.decode('utf-8') if isinstance(prompt, bytes) else prompt
    messages = [{'role': 'user', 'content': text}]
  else:
    messages = [dict(m) for m in prompt]
  if system_prompt and not (messages and messages[0].get('role') == 'system'):
    messages.insert(0, {'role': 'system', 'content': system_prompt})
  return messages


def _token_text(value) -> str | None:
  if isinstance(value, Mapping):  # {"content": "</s>", ...}
    return value.get('content')
  return value if isinstance(value, str) else None


def from_dir(path: str | os.PathLike[str]) -> ChatTemplate | None:
  """The chat template of a Hugging Face tokenizer directory, or None.

  Read from `chat_template.jinja`, else `chat_template.json`, else
  `tokenizer_config.json`'s `chat_template` (a string, or a list of named
  templates of which 'default' is taken); the special tokens from
  `special_tokens_map.json` and `tokenizer_config.json`.
  """
  path = os.fspath(path)

  def read(name):
    file = os.path.join(path, name)
    if not os.path.exists(file):
      return None
    with open(file, encoding='utf-8') as f:
      return f.read() if name.endswith('.jinja') else json.load(f)

  config = read('tokenizer_config.json') or {}
  template, source = read('chat_template.jinja'), 'chat_template.jinja'
  if template is None:
    template, source = (read('chat_template.json') or {}).get(
        'chat_template'), 'chat_template.json'
  if template is None:
    template, source = config.get('chat_template'), 'tokenizer_config.json'
  if isinstance(template, list):  # [{'name': 'default', 'template': ...}]
    named = {t.get('name'): t.get('template') for t in template}
    template = named.get('default')
  if not template:
    return None
  special = {**(read('special_tokens_map.json') or {}), **config}
  tokens = {k: _token_text(special.get(k)) for k in SPECIAL_TOKENS}
  return ChatTemplate(template, {k: v for k, v in tokens.items()
                                 if v is not None},
                      source=os.path.join(path, source))


def of_tokenizer(tokenizer) -> ChatTemplate | None:
  """The chat template a tokenizer carries, or None.

  Read from `tokenizer.chat_template`: a `ChatTemplate`, or the Jinja source
  as a string (then the special tokens come from the tokenizer's
  `special_tokens` mapping or its `bos_token` / `eos_token` strings).
  """
  template = getattr(tokenizer, 'chat_template', None)
  if template is None or isinstance(template, ChatTemplate):
    return template
  tokens = dict(getattr(tokenizer, 'special_tokens', None) or {})
  for name in SPECIAL_TOKENS:
    value = _token_text(getattr(tokenizer, name, None))
    if value is not None:
      tokens.setdefault(name, value)
  return ChatTemplate(str(template), tokens,
                      source=f'the {type(tokenizer).__name__}')
