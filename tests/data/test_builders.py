"""A damaged prepared dataset: rebuilt once, or reported naming the file."""

import os
import pathlib
import shutil

import jax
import pytest

from jaxrlgen.data import arithmetic
from jaxrlgen.data import builders

_SETTING = dict(max_operand=9, num_train=50, num_test=20, seed=0)


def _version_dir(data_dir) -> pathlib.Path:
  config = arithmetic.ArithmeticConfig(**_SETTING)
  return (pathlib.Path(data_dir) / 'arithmetic' / config.name /
          str(arithmetic.ArithmeticBuilder.VERSION))


def _records(data_dir):
  splits = arithmetic.load_arithmetic(str(data_dir), **_SETTING)
  return {name: [source[i] for i in range(len(source))]
          for name, source in splits.items()}


@pytest.fixture(scope='module')
def built(tmp_path_factory):
  """A prepared copy (built once) and its records."""
  data_dir = tmp_path_factory.mktemp('data')
  return data_dir, _records(data_dir)


@pytest.fixture
def copy(built, tmp_path):
  data_dir, _ = built
  shutil.copytree(data_dir, tmp_path / 'data')
  return tmp_path / 'data'


def _shard(data_dir) -> pathlib.Path:
  [shard] = _version_dir(data_dir).glob('arithmetic-train.array_record-*')
  return shard


def _truncate(path, size=None):
  with open(path, 'r+b') as f:
    f.truncate(path.stat().st_size // 2 if size is None else size)


def _flip(path):
  data = bytearray(path.read_bytes())
  for i in range(200, 216):  # Inside the first chunk of records.
    data[i] ^= 0xff
  path.write_bytes(bytes(data))


_DAMAGE = {
    # Cut to half: still 64 KiB of the padded file, and TFDS would then
    # serve 50 records of None.
    'truncated shard': lambda d: _truncate(_shard(d)),
    'shard cut to 100 bytes': lambda d: _truncate(_shard(d), 100),
    'garbled shard': lambda d: _flip(_shard(d)),
    'missing shard': lambda d: _shard(d).unlink(),
    'garbled dataset_info.json': lambda d: (
        _version_dir(d) / 'dataset_info.json').write_text('{"name": '),
    'missing features.json': lambda d: (
        _version_dir(d) / 'features.json').unlink(),
}


@pytest.mark.parametrize('damage', sorted(_DAMAGE))
def test_a_damaged_copy_is_rebuilt_once(copy, built, damage):
  _DAMAGE[damage](copy)
  assert _records(copy) == built[1]
  # The damaged copy is kept aside for a look, never read again.
  aside = _version_dir(copy).with_name(_version_dir(copy).name + '.corrupt')
  assert aside.is_dir()


@pytest.mark.parametrize('damage', ['truncated shard', 'garbled shard',
                                    'garbled dataset_info.json'])
def test_a_damaged_copy_on_several_processes_is_reported(copy, monkeypatch,
                                                         damage):
  # Hosts may share the directory: none moves it while others read it.
  monkeypatch.setattr(jax, 'process_count', lambda: 2)
  _DAMAGE[damage](copy)
  version_dir = _version_dir(copy)
  with pytest.raises(builders.DataFileError, match=(
      rf'The prepared dataset {version_dir} is damaged: .*\n'
      rf'Delete {version_dir} \(on every host')) as e:
    _records(copy)
  if 'shard' in damage:  # The shard itself is named.
    assert str(_shard(copy)) in str(e.value)
  assert sorted(os.listdir(version_dir.parent)) == [version_dir.name]


def test_verify_names_the_shard_and_the_count(copy):
  version_dir = _version_dir(copy)
  builder = arithmetic.ArithmeticBuilder(
      data_dir=str(copy), config=arithmetic.ArithmeticConfig(**_SETTING),
      file_format='array_record')
  builders.verify(builder)  # Intact.
  # Another copy's shard of the test split: readable, 20 records, not 50.
  test_shard = next(version_dir.glob('arithmetic-test.array_record-*'))
  shutil.copy(test_shard, _shard(copy))
  with pytest.raises(builders.DataFileError, match=(
      rf'{_shard(copy)} \(train split\) holds 20 records; its '
      r'dataset_info.json counts 50')):
    builders.verify(builder)


def test_a_failed_rebuild_is_reported(copy, monkeypatch):
  _truncate(_shard(copy))
  real_verify = builders.verify

  def always_damaged(builder):
    real_verify(builder)
    raise builders.DataFileError('still damaged')

  monkeypatch.setattr(builders, 'verify', always_damaged)
  with pytest.raises(builders.DataFileError, match='still damaged'):
    _records(copy)
