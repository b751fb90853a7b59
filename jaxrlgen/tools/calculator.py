"""The calculator tool: arithmetic on Python numbers, evaluated from the
expression's syntax tree, never by `eval`.

`calculate('12 * (3 + 4) ** 2')` returns `'588'`: the expression is parsed
with `ast` and only these nodes are evaluated, anything else is refused
before any arithmetic runs:

- numbers: integer and float literals (`12`, `0.5`, `1e3`, `1_000`, `0x1f`);
- binary `+ - * / // % **`, unary `-` and `+`, parentheses.

Names, attribute access, calls, subscripts, strings, comparisons, complex
numbers and every other node are errors, so the text a model writes cannot
reach anything but numbers. Every step is bounded: the expression's length
and nesting, the size of each integer (`MAX_BITS`) — checked before a
multiplication, power or shift of integers is computed, not after — and
the exponent. The result is Python's (`repr` of the number: `7 / 2` is
`'3.5'`, `6 / 3` is `'2.0'`); an error (division by zero, a result too
large, not finite, or complex) raises `ValueError`, which the tool layer
turns into an error observation.
"""

import ast
import math
import operator

MAX_LENGTH = 1000  # Characters of an expression.
MAX_DEPTH = 200  # Nesting of operators (a sum of n terms nests n deep).
MAX_BITS = 4096  # Bits of any integer, operand or result (~1,233 digits).
MAX_EXPONENT = 10_000  # |exponent| of a power.

_BINARY = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos}
# Operators a model may mean by a symbol Python reads otherwise.
_HINTS = {ast.BitXor: ' (use ** for powers)', ast.MatMult: ''}


def _check_size(value):
  if isinstance(value, int) and value.bit_length() > MAX_BITS:
    raise ValueError(f'the result has more than {MAX_BITS} bits')
  if isinstance(value, float) and not math.isfinite(value):
    raise ValueError('the result is not finite')
  return value


def _power(base, exponent):
  if abs(exponent) > MAX_EXPONENT:
    raise ValueError(f'the exponent {exponent} is beyond +-{MAX_EXPONENT}')
  if isinstance(base, int) and isinstance(exponent, int) and exponent > 0:
    # |base| ** e has about e * log2|base| bits: refuse before computing.
    if (abs(base) > 1 and
        exponent * (abs(base).bit_length() - 1) > MAX_BITS):
      raise ValueError(f'the result has more than {MAX_BITS} bits')
  try:
    value = base ** exponent
  except ZeroDivisionError as e:
    raise ValueError('division by zero') from e
  except OverflowError as e:
    raise ValueError('the result is too large') from e
  if isinstance(value, complex):
    raise ValueError('the result is complex')
  return value


def _evaluate(node, depth: int):
  if depth > MAX_DEPTH:
    raise ValueError(f'the expression is nested deeper than {MAX_DEPTH}')
  if isinstance(node, ast.Constant):
    # bool is an int subclass, but `True` is a name to the model: refuse it.
    if type(node.value) in (int, float):
      return _check_size(node.value)
    raise ValueError(f'{node.value!r} is not a number')
  if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
    return _UNARY[type(node.op)](_evaluate(node.operand, depth + 1))
  if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
    left = _evaluate(node.left, depth + 1)
    right = _evaluate(node.right, depth + 1)
    if isinstance(node.op, ast.Pow):
      return _check_size(_power(left, right))
    if (isinstance(node.op, ast.Mult) and isinstance(left, int)
        and isinstance(right, int)
        and left.bit_length() + right.bit_length() > MAX_BITS + 1):
      raise ValueError(f'the result has more than {MAX_BITS} bits')
    try:
      return _check_size(_BINARY[type(node.op)](left, right))
    except ZeroDivisionError as e:
      raise ValueError('division by zero') from e
    except OverflowError as e:
      raise ValueError('the result is too large') from e
  if isinstance(node, ast.BinOp):
    op = type(node.op).__name__
    raise ValueError(f'the operator {op} is not allowed'
                     f'{_HINTS.get(type(node.op), "")}')
  raise ValueError(f'{type(node).__name__} is not allowed: only numbers, '
                   '+ - * / // % **, unary minus and parentheses')


def evaluate(expression: str) -> int | float:
  """The value of an arithmetic expression (see the module docstring).

  Raises:
    ValueError: a malformed or disallowed expression, or an arithmetic
      error, with a message meant for the model.
  """
  if not isinstance(expression, str):
    raise ValueError(f'the expression is a {type(expression).__name__}, '
                     'not a string')
  text = expression.strip()
  if not text:
    raise ValueError('the expression is empty')
  if len(text) > MAX_LENGTH:
    raise ValueError(f'the expression is longer than {MAX_LENGTH} characters')
  try:
    tree = ast.parse(text, mode='eval')
  except (SyntaxError, ValueError, RecursionError, MemoryError) as e:
    # ValueError: an integer literal past Python's digit limit.
    raise ValueError(f'not an arithmetic expression ({type(e).__name__}: '
                     f'{getattr(e, "msg", e)})') from None
  return _evaluate(tree.body, 0)


def calculate(expression: str) -> str:
  """The calculator tool: `str -> str`, the value as Python writes it."""
  return repr(evaluate(expression))
