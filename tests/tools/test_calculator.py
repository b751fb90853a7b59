"""The calculator against Python's own arithmetic, and what it refuses."""

import math
import random

import pytest

from jaxrlgen.tools import calculator


def _expression(rng: random.Random, depth: int) -> str:
  if depth == 0 or rng.random() < 0.3:
    if rng.random() < 0.7:
      return str(rng.randrange(0, 1000))
    return repr(round(rng.uniform(0, 100), rng.randrange(0, 4)))
  kind = rng.random()
  if kind < 0.15:
    return f'-{_expression(rng, depth - 1)}'
  if kind < 0.25:
    return f'({_expression(rng, depth - 1)})'
  if kind < 0.35:  # Powers with small exponents (big ones are refused).
    return f'({_expression(rng, depth - 1)}) ** {rng.randrange(-3, 4)}'
  op = rng.choice(['+', '-', '*', '/', '//', '%'])
  return f'{_expression(rng, depth - 1)} {op} {_expression(rng, depth - 1)}'


def test_random_expressions_match_python():
  rng = random.Random(0)
  errors = 0
  for _ in range(600):
    text = _expression(rng, 5)
    try:
      expected = eval(text, {'__builtins__': {}})  # pylint: disable=eval-used
    except (ZeroDivisionError, OverflowError):
      expected = None
    if isinstance(expected, complex) or (
        isinstance(expected, float) and not math.isfinite(expected)):
      expected = None
    if expected is None:
      errors += 1
      with pytest.raises(ValueError):
        calculator.calculate(text)
    else:
      assert calculator.calculate(text) == repr(expected), text
  assert 0 < errors < 300  # Both paths were exercised.


@pytest.mark.parametrize('text,value', [
    ('12 * (3 + 4) ** 2', '588'), ('7 / 2', '3.5'), ('6 / 3', '2.0'),
    ('-2 ** 2', '-4'), ('2 ** -2', '0.25'), ('1_000 + 0x10', '1016'),
    ('  123456 * 789  ', '97406784'), ('-7 // 2', '-4'), ('-7 % 3', '2'),
    ('2 ** 4000', repr(2 ** 4000)), ('1e3', '1000.0'),
])
def test_values(text, value):
  assert calculator.calculate(text) == value


@pytest.mark.parametrize('text,message', [
    ('__import__("os").system("true")', 'Call is not allowed'),
    ('(1).real', 'Attribute is not allowed'),
    ('x + 1', 'Name is not allowed'),
    ('[1, 2][0]', 'Subscript is not allowed'),
    ('().__class__', 'Attribute is not allowed'),
    ('lambda: 1', 'Lambda is not allowed'),
    ('1 if 1 else 2', 'IfExp is not allowed'),
    ('1 < 2', 'Compare is not allowed'),
    ('True + 1', 'True is not a number'),
    ("'a' * 3", "'a' is not a number"),
    ('1j * 1j', 'not a number'),
    ('2 ^ 3', 'use ** for powers'),
    ('1 << 1000000', 'LShift is not allowed'),
    ('9 ** 9 ** 9', 'exponent'),
    ('2 ** 100000', 'exponent'),
    ('10 ** 5000', 'more than 4096 bits'),
    ('(2 ** 4000) * (2 ** 4000)', 'more than 4096 bits'),
    ('2.0 ** 5000', 'too large'),
    ('1e308 * 10', 'not finite'),
    ('(-8) ** 0.5', 'complex'),
    ('1 / 0', 'division by zero'), ('0 ** -1', 'division by zero'),
    ('5 % 0', 'division by zero'),
    ('', 'empty'), ('1 +', 'not an arithmetic expression'),
    ('import os', 'not an arithmetic expression'),
    ('1' * 2000, 'longer than 1000'),
    ('-' * 500 + '1', 'nested deeper'),
])
def test_refusals(text, message):
  with pytest.raises(ValueError, match=message.replace('*', r'\*')):
    calculator.calculate(text)
