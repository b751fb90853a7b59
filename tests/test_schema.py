"""Config sections as frozen dataclasses: parsing, types and checks."""

import dataclasses

import ml_collections
import pytest

from jaxrlgen import schema


@dataclasses.dataclass(frozen=True)
class Inner:
  rate: float = 0.1

  def __post_init__(self):
    schema.positive(self, 'rate')


@dataclasses.dataclass(frozen=True)
class Section:
  size: int = 4
  group: int = 2
  name: str = 'a'
  flag: bool = False
  widths: tuple[int, ...] = (1, 2)
  terms: dict[str, float] = dataclasses.field(default_factory=dict)
  limit: int | None = None
  inner: Inner = Inner()

  def __post_init__(self):
    schema.positive(self, 'size', 'group')
    schema.divisible(self, 'size', 'group')
    schema.one_of(self, 'name', ('a', 'b'))


def test_defaults_round_trip():
  config = schema.to_config(Section())
  assert isinstance(config.inner, ml_collections.ConfigDict)
  assert schema.parse(Section, config, 'config.s') == Section()
  assert schema.parse(Section, None, 'config.s') == Section()


def test_coercion():
  parsed = schema.parse(Section, {'size': 8.0, 'widths': [3, 4],
                                  'terms': {'x': 1}, 'limit': 3,
                                  'inner': {'rate': 2}}, 'config.s')
  assert parsed.size == 8 and parsed.widths == (3, 4)
  assert parsed.terms == {'x': 1.0} and parsed.inner == Inner(2.0)


@pytest.mark.parametrize('given, message', [
    ({'sise': 3}, r'Unknown field\(s\) config\.s\.sise; known fields'),
    ({'size': 0}, r'config\.s\.size=0 must be positive'),
    ({'size': 5}, r'config\.s\.size=5 must be divisible by group=2'),
    ({'name': 'c'}, r"config\.s\.name='c'; allowed: \['a', 'b'\]"),
    ({'size': 'big'}, r"config\.s\.size='big' must be an integer"),
    ({'flag': 1}, r'config\.s\.flag=1 must be True or False'),
    ({'size': 2.5}, r'config\.s\.size=2\.5 must be an integer'),
    ({'inner': {'rate': float('nan')}}, r'config\.s\.inner\.rate=nan must be'),
    ({'inner': {'speed': 1}}, r'config\.s\.inner\.speed'),
    ({'limit': 'x'}, r'config\.s\.limit'),
])
def test_errors_name_the_field(given, message):
  with pytest.raises(ValueError, match=message):
    schema.parse(Section, given, 'config.s')
