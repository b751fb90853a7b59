"""Built-in verifiers: the decoded completion against a field of its record.

Each is a per-item function `(completion, answer) -> float` run on the host
through the reward bridge (`host.text_reward`), registered under a name
with a factory that reads the field named by `answer_field` (default
'answer', a text or numeric field):

- `exact_string`: the completion is the answer, whitespace runs collapsed
  and the ends stripped;
- `numeric_answer`: the completion's last number is the answer's within
  `tolerance`;
- `math_answer`: math-verify finds the completion's answer (`\\boxed{}` or
  plain) equal to the gold one;
- `regex_format`: `format_pattern` matches somewhere in the completion
  (`re.search`, `.` matching newlines); it reads no field.
"""

import functools
import re

from jaxrlgen.rewards import functions
from jaxrlgen.rewards import host

FIELD_FLAG = 'config.reward.answer_field'
PATTERN_FLAG = 'config.reward.format_pattern'
# A decimal number: optional sign, thousands separators, fraction, exponent.
_NUMBER = re.compile(
    r'[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?(?:[eE][-+]?\d+)?'
    r'|[-+]?\.\d+(?:[eE][-+]?\d+)?')


def normalize(text: str) -> str:
  """Whitespace runs as one space, ends stripped."""
  return ' '.join(str(text).split())


def exact_string(completion: str, answer) -> float:
  """1.0 where the completion is the answer, up to whitespace."""
  return float(normalize(completion) == normalize(answer))


def last_number(text: str) -> float | None:
  """The last decimal number in `text` ('1,234.5' -> 1234.5), or None."""
  found = _NUMBER.findall(str(text))
  return float(found[-1].replace(',', '')) if found else None


def numeric_answer(completion: str, answer, *, tolerance: float = 1e-6
                   ) -> float:
  """1.0 where the completion's last number is the answer's within
  `tolerance` (absolute up to |answer| = 1, relative beyond).

  A text answer is read as its own last number (GSM8K's '... #### 72')."""
  gold = (float(answer) if isinstance(answer, (int, float))
          else last_number(answer))
  if gold is None:
    raise ValueError(f'the answer {answer!r} holds no number')
  got = last_number(completion)
  return float(got is not None and
               abs(got - gold) <= tolerance * max(1.0, abs(gold)))


@functools.lru_cache(maxsize=4096)
def _parse_gold(answer: str):
  import math_verify  # pylint: disable=g-import-not-at-top
  gold = math_verify.parse(answer, parsing_timeout=None)
  if not gold and '$' not in answer and '\\boxed' not in answer:
    # A bare LaTeX answer ('\frac12') is found only between dollars.
    gold = math_verify.parse(f'${answer}$', parsing_timeout=None)
  return gold


def math_answer(completion: str, answer) -> float:
  """1.0 where math-verify finds the completion's answer equal to the gold
  `answer` (a number or LaTeX: '0.5', '\\frac{1}{2}', '\\boxed{1/2}').

  math-verify's own timeouts use signals, which threads cannot; the bridge's
  `timeout_s` bounds an item instead."""
  import math_verify  # pylint: disable=g-import-not-at-top
  gold = _parse_gold(str(answer))
  if not gold:
    raise ValueError(f'math-verify finds no answer in the gold {answer!r}')
  got = math_verify.parse(completion, parsing_timeout=None)
  return float(bool(got) and math_verify.verify(gold, got,
                                                timeout_seconds=None))


def regex_format(completion: str, *, pattern: re.Pattern) -> float:
  """1.0 where `pattern` matches somewhere in the completion."""
  return float(pattern.search(completion) is not None)


def _bridge_options(context) -> dict:
  return {k: context[k] for k in functions.BRIDGE_OPTIONS
          if context.get(k) is not None}


def _with_field(fn, field: str, completion: str, **values) -> float:
  return fn(completion, values[field])


def _answer_reward(fn, name: str, *, tokenizer, answer_field: str = 'answer',
                   fields=None, **context):
  if fields is not None and answer_field not in fields:
    raise ValueError(
        f"The reward {name!r} reads the field {answer_field!r} "
        f'({FIELD_FLAG}), which the task\'s records lack; they have '
        f'{sorted(fields)}. Set {FIELD_FLAG} to one of them.')

  # A partial of module-level functions, not a closure: it pickles, so it
  # can run in worker processes (backend='process').
  item = functools.partial(_with_field, fn, answer_field)
  item.__name__ = name
  return host.text_reward(item, tokenizer, fields=(answer_field,),
                          **_bridge_options(context))


def make_exact_string(**context):
  return _answer_reward(exact_string, 'exact_string', **context)


def make_numeric_answer(*, tolerance: float = 1e-6, **context):
  if not tolerance >= 0:
    raise ValueError(f'config.reward.tolerance={tolerance} must be >= 0.')
  return _answer_reward(
      functools.partial(numeric_answer, tolerance=tolerance),
      'numeric_answer', **context)


def make_math_answer(**context):
  try:
    import math_verify  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError as e:
    raise ImportError('The math_answer reward needs the math-verify package: '
                      f'pip install math-verify ({e}).') from e
  return _answer_reward(math_answer, 'math_answer', **context)


def make_regex_format(*, tokenizer, format_pattern: str = '', **context):
  if not format_pattern:
    raise ValueError(f'The regex_format reward needs a pattern: set '
                     f'{PATTERN_FLAG}.')
  try:
    pattern = re.compile(format_pattern, re.DOTALL)
  except re.error as e:
    raise ValueError(f'{PATTERN_FLAG}={format_pattern!r} is not a regular '
                     f'expression: {e}.') from e
  fn = functools.partial(regex_format, pattern=pattern)
  fn.__name__ = 'regex_format'
  return host.text_reward(fn, tokenizer, **_bridge_options(context))


FACTORIES = {'exact_string': make_exact_string,
             'numeric_answer': make_numeric_answer,
             'math_answer': make_math_answer,
             'regex_format': make_regex_format}
