"""Config sections as frozen dataclasses: one schema per section.

An experiment config is an `ml_collections.ConfigDict` (absl flags override
any field); each section of it is read through a frozen dataclass that is
its one schema. The dataclass gives the defaults (`to_config`), its
`__post_init__` holds the section's checks, and `parse` builds it from the
config section before anything is computed:

  @dataclasses.dataclass(frozen=True)
  class RLConfig:
    batch_size: int = 256  # Sequences per step.
    group_size: int = 8  # Samples per prompt.

    def __post_init__(self):
      schema.positive(self, 'batch_size', 'group_size')
      schema.divisible(self, 'batch_size', 'group_size')

  rl = schema.parse(RLConfig, config.rl, 'config.rl')

Errors name the full field (`config.rl.batch_size=0 must be positive`), an
unknown field lists the known ones, and an ill-typed value names the type.
"""

import dataclasses
import math
import types
import typing
from typing import Any, Mapping, Sequence

import ml_collections


class FieldError(ValueError):
  """A bad value of one field; `parse` prefixes the section's path."""

  def __init__(self, field: str, message: str):
    # '=0 must be positive.' follows the name directly; words after a space.
    sep = '' if message.startswith('=') else ' '
    super().__init__(f'{field}{sep}{message}')
    self.field = field
    self.message = message


def _hints(cls) -> dict[str, Any]:
  """The annotated fields of `cls` (its ClassVars are not fields)."""
  return {k: v for k, v in typing.get_type_hints(cls).items()
          if typing.get_origin(v) is not typing.ClassVar
          and v is not typing.ClassVar}


@dataclasses.dataclass(frozen=True)
class Means:
  """What zero or a negative value of a number field means, where it means
  something (`checkpoint_every=0`: at the end only; `kl_coef=0`: no
  reference model).

  A schema lists such fields in its class attribute `SPECIAL`:

    SPECIAL: ClassVar[schema.Special] = {
        'checkpoint_every': schema.Means(zero='checkpoints at the end only')}

  Every other int or float field must reject 0 and negatives in its checks
  (`positive`, `non_negative`, `in_range`); tests/test_schema.py tries both
  on every field of every schema, so a new field is covered without a new
  test.
  """

  zero: str = ''  # What 0 means; '': 0 is rejected.
  negative: str = ''  # What a value < 0 means; '': negatives are rejected.


Special = Mapping[str, Means]


def special(cls) -> dict[str, Means]:
  """{field: Means} of schema `cls`: its `SPECIAL`, over its base classes'."""
  out = {}
  for klass in reversed(cls.__mro__):
    out.update(vars(klass).get('SPECIAL', {}))
  return out


def _coerce(value: Any, hint: Any, field: str) -> Any:
  """`value` as the annotated type, or a FieldError naming what was wanted."""
  origin = typing.get_origin(hint)
  if origin in (typing.Union, types.UnionType):
    options = typing.get_args(hint)
    if value is None and type(None) in options:
      return None
    errors = []
    for option in options:
      if option is type(None):
        continue
      try:
        return _coerce(value, option, field)
      except FieldError as e:
        errors.append(e.message)
    raise FieldError(field, f'={value!r}: {"; ".join(errors)}')
  if dataclasses.is_dataclass(hint):
    if isinstance(value, hint):
      return value
    if isinstance(value, (dict, ml_collections.ConfigDict)):
      return parse(hint, value, field)  # `field` is the full path here.
    raise FieldError(field, f'={value!r} must be a section of {hint.__name__}'
                     ' fields.')
  if origin is tuple:
    if not isinstance(value, (tuple, list)):
      raise FieldError(field, f'={value!r} must be a tuple.')
    args = typing.get_args(hint)
    if len(args) == 2 and args[1] is Ellipsis:
      return tuple(_coerce(v, args[0], field) for v in value)
    if args and len(args) != len(value):
      raise FieldError(field, f'={value!r} must have {len(args)} entries.')
    return tuple(_coerce(v, a, field) for v, a in zip(value, args)) \
        if args else tuple(value)
  if origin in (dict, typing.Mapping) or hint is dict:
    if not isinstance(value, (dict, ml_collections.ConfigDict)):
      raise FieldError(field, f'={value!r} must be a mapping.')
    items = value.items()
    args = typing.get_args(hint)
    if args:
      return {_coerce(k, args[0], field): _coerce(v, args[1], field)
              for k, v in items}
    return dict(items)
  if hint is Any:
    return value
  if hint is bool:
    if isinstance(value, bool):
      return value
    raise FieldError(field, f'={value!r} must be True or False.')
  if hint is int:
    if isinstance(value, int) and not isinstance(value, bool):
      return value
    if isinstance(value, float) and value.is_integer():
      return int(value)
    raise FieldError(field, f'={value!r} must be an integer.')
  if hint is float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      if not math.isfinite(value):  # No field means anything by NaN or inf.
        raise FieldError(field, f'={value!r} must be a finite number.')
      return float(value)
    raise FieldError(field, f'={value!r} must be a number.')
  if hint is str:
    if isinstance(value, str):
      return value
    raise FieldError(field, f'={value!r} must be a string.')
  return value


def parse(cls, section, path: str):
  """The dataclass `cls` built from a config section, checks included.

  Args:
    cls: a frozen dataclass (the section's schema).
    section: ConfigDict or dict of the section's fields; missing fields take
      their defaults.
    path: where the section sits in the config ('config.rl'), for messages.
  Raises:
    ValueError: naming `path.field` for an unknown, ill-typed or
      out-of-range field.
  """
  if isinstance(section, cls):
    return section
  if section is None:
    section = {}
  hints = _hints(cls)
  known = [f.name for f in dataclasses.fields(cls) if f.init]
  given = dict(section.items())
  unknown = sorted(set(given) - set(known))
  if unknown:
    raise ValueError(f'Unknown field(s) {", ".join(f"{path}.{k}" for k in unknown)}'
                     f'; known fields of {path}: {sorted(known)}.')
  try:
    values = {k: _coerce(v, hints[k], f'{path}.{k}') for k, v in given.items()}
  except FieldError as e:  # Already named by its full path.
    raise ValueError(str(e)) from None
  try:
    return cls(**values)
  except FieldError as e:  # From __post_init__: relative to this section.
    raise ValueError(f'{path}.{e}') from None


def parse_sections(config, sections: Mapping[str, type],
                   elsewhere: Sequence[str] = ()) -> tuple[dict, dict]:
  """A whole config through its sections' schemas.

  Args:
    config: the experiment's ConfigDict.
    sections: section name -> its schema (`config.rl` -> RLConfig).
    elsewhere: sections that other code parses (`model`, `algo`, `mesh`).
  Returns:
    (the top-level fields, neither sections nor `elsewhere`, as a dict for
    the run's own schema; {section name: parsed section}).
  """
  top = {k: v for k, v in config.items()
         if k not in sections and k not in elsewhere}
  return top, {name: parse(cls, config.get(name), f'config.{name}')
               for name, cls in sections.items()}


def to_config(value) -> ml_collections.ConfigDict:
  """The ConfigDict of a dataclass instance (a section's defaults)."""
  out = {}
  for f in dataclasses.fields(value):
    v = getattr(value, f.name)
    out[f.name] = to_config(v) if dataclasses.is_dataclass(v) else v
  return ml_collections.ConfigDict(out)


# Checks for `__post_init__`: each names the offending field.

def positive(obj, *names: str) -> None:
  """Each field is a finite number > 0."""
  for name in names:
    value = getattr(obj, name)
    if not (math.isfinite(value) and value > 0):
      raise FieldError(name, f'={value!r} must be positive.')


def non_negative(obj, *names: str) -> None:
  """Each field is a finite number >= 0."""
  for name in names:
    value = getattr(obj, name)
    if not (math.isfinite(value) and value >= 0):
      raise FieldError(name, f'={value!r} must be >= 0.')


def in_range(obj, name: str, low: float, high: float) -> None:
  """low <= field <= high (and not NaN)."""
  value = getattr(obj, name)
  if not low <= value <= high:
    raise FieldError(name, f'={value!r} must be in [{low}, {high}].')


def one_of(obj, name: str, allowed: Sequence[Any]) -> None:
  """The field is one of `allowed`."""
  value = getattr(obj, name)
  if value not in allowed:
    raise FieldError(name, f'={value!r}; allowed: {list(allowed)}.')


def divisible(obj, name: str, by: str) -> None:
  """Field `name` is a multiple of field `by`."""
  value, divisor = getattr(obj, name), getattr(obj, by)
  if value % divisor:
    raise FieldError(name, f'={value} must be divisible by {by}={divisor}.')
