"""Tests for jaxrlgen/data/arithmetic.py."""

import dataclasses
import os

import numpy as np
import pytest

from jaxrlgen.data import arithmetic
from jaxrlgen.data.arithmetic import ArithmeticConfig
from jaxrlgen.data.arithmetic import load_arithmetic

_SETTING = dict(max_operand=30, num_train=200, num_test=50, seed=3)


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp('tfds'))
  return data_dir, load_arithmetic(data_dir, **_SETTING)


def _records(source):
  return [source[i] for i in range(len(source))]


def _pairs(source):
  return {(int(r['a']), int(r['b'])) for r in _records(source)}


def _files(data_dir):
  out = {}
  for root, _, names in os.walk(data_dir):
    for name in names:
      path = os.path.join(root, name)
      out[path] = os.stat(path).st_mtime_ns
  return out


def test_config_name_is_deterministic_and_distinct():
  c = ArithmeticConfig(max_operand=9, num_train=5, num_test=3, seed=1)
  assert c.name == 'max9_train5_test3_seed1'
  assert c == ArithmeticConfig(max_operand=9, num_train=5, num_test=3, seed=1)
  assert hash(c) == hash(
      ArithmeticConfig(max_operand=9, num_train=5, num_test=3, seed=1))
  names = {
      dataclasses.replace(c, **{field: getattr(c, field) + 1}).name
      for field in ('max_operand', 'num_train', 'num_test', 'seed')
  }
  assert len(names) == 4 and c.name not in names


def test_config_is_frozen():
  c = ArithmeticConfig(max_operand=9, num_train=5, num_test=3)
  with pytest.raises(dataclasses.FrozenInstanceError):
    c.seed = 2
  assert dataclasses.replace(c, seed=2).name.endswith('seed2')


def test_config_rejects_more_examples_than_pairs():
  # 4 x 4 = 16 distinct pairs.
  ArithmeticConfig(max_operand=3, num_train=10, num_test=6)
  with pytest.raises(ValueError, match=r'17 exceeds the 16 distinct'):
    ArithmeticConfig(max_operand=3, num_train=10, num_test=7)


@pytest.mark.parametrize('kwargs', [
    dict(max_operand=-1), dict(num_train=0), dict(num_test=0),
    dict(max_operand=2**30)
])
def test_config_rejects_bad_values(kwargs):
  base = dict(max_operand=9, num_train=5, num_test=3)
  with pytest.raises(ValueError):
    ArithmeticConfig(**{**base, **kwargs})


def test_draw_pairs_disjoint_and_in_range():
  c = ArithmeticConfig(max_operand=3, num_train=10, num_test=6, seed=0)
  pairs = arithmetic.draw_pairs(c)
  train = {tuple(p) for p in pairs['train'].tolist()}
  test = {tuple(p) for p in pairs['test'].tolist()}
  assert len(train) == 10 and len(test) == 6 and not train & test
  assert train | test == {(a, b) for a in range(4) for b in range(4)}
  # A huge operand range does not materialise all pairs.
  big = arithmetic.draw_pairs(
      ArithmeticConfig(max_operand=2**30 - 1, num_train=5, num_test=5))
  assert big['train'].max() <= 2**30 - 1


def test_build_sizes_and_content(built):
  _, sources = built
  assert set(sources) == {'train', 'test'}
  assert len(sources['train']) == 200 and len(sources['test']) == 50
  for split in ('train', 'test'):
    for r in _records(sources[split]):
      a, b, answer = int(r['a']), int(r['b']), int(r['answer'])
      assert 0 <= a <= 30 and 0 <= b <= 30
      assert answer == a + b
      assert r['prompt'].decode() == f'{a}+{b}='
      assert r['completion'].decode() == str(answer)


def test_splits_are_disjoint(built):
  _, sources = built
  train, test = _pairs(sources['train']), _pairs(sources['test'])
  assert len(train) == 200 and len(test) == 50  # No duplicates either.
  assert not train & test


def test_second_load_reuses_files(built, monkeypatch):
  data_dir, sources = built
  before = _files(data_dir)
  assert any(p.endswith('.array_record-00000-of-00001') for p in before)

  def fail(*args, **kwargs):
    raise AssertionError('the dataset was rebuilt')

  monkeypatch.setattr(arithmetic.ArithmeticBuilder, '_split_generators', fail)
  again = load_arithmetic(data_dir, **_SETTING)
  assert _files(data_dir) == before
  assert _records(again['train']) == _records(sources['train'])


def test_settings_build_apart_and_deterministically(built, tmp_path):
  data_dir, sources = built
  other = load_arithmetic(data_dir, **{**_SETTING, 'seed': 4})
  assert _pairs(other['train']) != _pairs(sources['train'])
  config_dirs = os.listdir(os.path.join(data_dir, 'arithmetic'))
  assert sorted(config_dirs) == [
      'max30_train200_test50_seed3', 'max30_train200_test50_seed4'
  ]
  # Same setting in another directory (another host's local disk): the very
  # same records in the same order.
  copy = load_arithmetic(str(tmp_path), **_SETTING)
  for split in ('train', 'test'):
    assert _records(copy[split]) == _records(sources[split])


def test_dtypes(built):
  _, sources = built
  r = sources['train'][0]
  assert isinstance(r['prompt'], bytes) and isinstance(r['completion'], bytes)
  for key in ('a', 'b', 'answer'):
    assert np.asarray(r[key]).dtype.kind == 'i'
