"""Config sections as frozen dataclasses: parsing, types and checks."""

import dataclasses
import re
import types
import typing

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


def _sections():
  """Every schema of the recipes' configs, as (path, class): the text
  recipe's and the RLHF study's sections, the digits experiment's config,
  every algorithm's and every task's, and the sections nested in them."""
  # pylint: disable=g-import-not-at-top
  from experiments.ddpo_digits import config as ddpo_config
  from experiments.rlhf_gold import recipe as rlhf_gold
  from experiments.seqgan import recipe as seqgan
  from jaxrlgen import algos
  from jaxrlgen import tasks
  from jaxrlgen import tools
  from jaxrlgen.envs import search
  from jaxrlgen.models import transformer
  from jaxrlgen.recipes import text_rl
  # pylint: enable=g-import-not-at-top
  roots = {'config': text_rl.RunConfig, 'config(rlhf_gold)': rlhf_gold.RunConfig,
           'config(ddpo_digits)': ddpo_config.Config,
           'config(seqgan)': seqgan.SeqGANConfig,
           'config.model': transformer.TransformerConfig,
           'config.offline': text_rl.OfflineConfig,
           'config.mcts': search.MCTSConfig,
           'config.tools': tools.ToolsConfig}
  roots.update({f'config.{k}': v for k, v in text_rl._SECTIONS.items()})
  roots.update({f'config.{k}(rlhf_gold)': v
                for k, v in rlhf_gold._SECTIONS.items()})
  roots.update({f'config.algo({n})': algos.ALGORITHMS.get(n).config_cls
                for n in algos.ALGORITHMS.names()})
  roots.update({f'config.task({n})': tasks.TASKS.get(n).config_cls
                for n in tasks.TASKS.names()})
  found, todo = {}, list(roots.items())
  while todo:
    path, cls = todo.pop()
    if cls in found.values():
      continue
    found[path] = cls
    for name, hint in schema._hints(cls).items():  # pylint: disable=protected-access
      if dataclasses.is_dataclass(hint):
        todo.append((f'{path}.{name}', hint))
  return found


def _bad_values(hint):
  """Values of the wrong type for `hint`, and NaN / inf for a number."""
  if hint is float:
    return ['fast', float('nan'), float('inf')]
  if hint in (int, bool):
    return ['fast', 1.5, float('nan')] if hint is int else ['fast', 3]
  if hint is str:
    return [3]
  return []  # Unions, tuples, mappings, Any: checked by their own tests.


def test_every_field_of_every_section_rejects_bad_values():
  """Generated from the schemas: each ill-typed or non-finite value of each
  field of each section fails in `parse`, before any compute, with an error
  that names the field. A new field (or section nested in one) is covered
  without a new test."""
  sections = _sections()
  assert len(sections) > 30, sorted(sections)
  tried, missed = 0, []
  for path, cls in sections.items():
    for name, hint in schema._hints(cls).items():  # pylint: disable=protected-access
      for value in _bad_values(hint):
        tried += 1
        try:
          schema.parse(cls, {name: value}, 'config.section')
        except ValueError as e:
          if f'config.section.{name}' not in str(e):
            missed.append((path, name, value, str(e)))
        else:
          missed.append((path, name, value, 'accepted'))
  assert tried > 300, tried
  assert not missed, missed


def _number(hint):
  """int or float when `hint` is one (or one or None), else None."""
  if typing.get_origin(hint) in (typing.Union, types.UnionType):
    options = [a for a in typing.get_args(hint) if a is not type(None)]
    hint = options[0] if len(options) == 1 else None
  return hint if hint in (int, float) else None


# Fields that the defaults of their section do not leave valid alone.
_BASE = {'FilesConfig': {'train_files': 'a.jsonl', 'eval_files': 'b.jsonl'}}

def test_every_number_field_rejects_zero_and_negatives_or_says_why():
  """Generated from the schemas: each int and float field of each section is
  given 0 and -1. Either its checks reject the value, with an error naming
  the field and what it allows, or the section declares in `SPECIAL`
  (`schema.Means`) what the value means, and then `parse` must accept it."""
  sections = _sections()
  tried, declared, missed = 0, 0, []
  for path, cls in sections.items():
    # 'config.algo(ppo)' -> 'config.algo'
    real_path = re.sub(r'\(.*?\)', '', path)
    section = real_path.rsplit('.', 1)[-1]
    base = _BASE.get(cls.__name__, {})
    means = schema.special(cls)
    for name, hint in schema._hints(cls).items():  # pylint: disable=protected-access
      kind = _number(hint)
      if kind is None:
        continue
      mean = means.get(name)
      for what, value in (('zero', kind(0)), ('negative', kind(-1))):
        tried += 1
        meaning = getattr(mean, what) if mean else ''
        try:
          schema.parse(cls, {**base, name: value}, real_path)
        except Exception as e:  # pylint: disable=broad-except
          # Library configs built inside a section name it 'env.eta'.
          if not isinstance(e, ValueError):
            missed.append((path, name, value, f'crashed: {e!r}'))
          elif meaning:
            missed.append((path, name, value, f'declared ({meaning}) but: {e}'))
          elif not re.search(rf'(^|\W){section}\.{name}\W', str(e)):
            missed.append((path, name, value, f'does not name it: {e}'))
          elif not re.search(r'must|allowed|known|need', str(e)):
            missed.append((path, name, value, f'no allowed values: {e}'))
        else:
          declared += 1
          if not meaning:
            missed.append((path, name, value, 'accepted: check it or declare '
                           'its meaning in SPECIAL'))
  assert tried > 400, tried
  assert not missed, '\n'.join(map(str, missed))
