"""Tests for jaxrlgen.train.recovery: resuming past a damaged checkpoint."""

import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen.core.types import TrainState
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import recovery

_STEPS = (10, 20, 30)


def _state(step: int) -> TrainState:
  """A small TrainState whose every leaf depends on `step`."""
  # 'w' is large enough to be stored apart from OCDBT's index (in
  # ocdbt.process_0/d/), 'b' small enough to be stored within it (in d/).
  params = {'w': jnp.arange(2048.0).reshape(32, 64) * step,
            'b': jnp.full((4,), step, jnp.bfloat16)}
  state = TrainState.create(params, optax.adam(1e-2))
  return state.replace(step=jnp.array(step, jnp.int32))


@pytest.fixture(scope='module')
def written(tmp_path_factory) -> pathlib.Path:
  """Three real checkpoints, steps 10, 20 and 30, written once."""
  directory = tmp_path_factory.mktemp('written') / 'checkpoints'
  with checkpoint_lib.Checkpointer(directory, max_to_keep=None) as ckpt:
    for step in _STEPS:
      ckpt.save(step, _state(step))
  return directory


@pytest.fixture
def copy(written, tmp_path) -> pathlib.Path:
  """A fresh copy of the three checkpoints for one test to damage."""
  directory = tmp_path / 'checkpoints'
  shutil.copytree(written, directory)
  return directory


def _data_files(step_dir: pathlib.Path) -> list[pathlib.Path]:
  """The array data files of a step: OCDBT's index with small arrays in
  `default/d/`, the larger arrays in `default/ocdbt.process_0/d/`."""
  item = step_dir / 'default'
  files = sorted([*(item / 'd').iterdir(),
                  *(item / 'ocdbt.process_0' / 'd').iterdir()])
  assert len(files) >= 2, files
  return files


def _truncate(path: pathlib.Path) -> None:
  with open(path, 'r+b') as f:
    f.truncate(path.stat().st_size // 2)


def _garble(path: pathlib.Path) -> None:
  path.write_bytes(b'\x00not what was written{' * 8)


def _truncate_data(step_dir):
  for path in _data_files(step_dir):
    _truncate(path)


def _delete_data(step_dir):
  for path in _data_files(step_dir):
    path.unlink()


def _garble_data(step_dir):
  for path in _data_files(step_dir):
    _garble(path)


def _largest(step_dir):
  """The file holding 'w' (the largest array's chunk)."""
  return max((step_dir / 'default' / 'ocdbt.process_0' / 'd').iterdir(),
             key=lambda p: p.stat().st_size)


_DAMAGE = {
    'truncated array data': _truncate_data,
    'truncated largest array': lambda d: _truncate(_largest(d)),
    'deleted largest array': lambda d: _largest(d).unlink(),
    'deleted array data': _delete_data,
    'garbage array data': _garble_data,
    'garbage _METADATA': lambda d: _garble(d / 'default' / '_METADATA'),
    'truncated _METADATA': lambda d: _truncate(d / 'default' / '_METADATA'),
    'deleted _METADATA': lambda d: (d / 'default' / '_METADATA').unlink(),
    'garbage array metadata': lambda d: _garble(
        d / 'default' / 'array_metadatas' / 'process_0'),
    'truncated manifest': lambda d: _truncate(
        d / 'default' / 'manifest.ocdbt'),
    'deleted item directory': lambda d: shutil.rmtree(d / 'default'),
}


def _assert_state_of(restored: TrainState, step: int) -> None:
  expected = _state(step)
  assert jax.tree.structure(restored) == jax.tree.structure(expected)
  for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(expected)):
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(want))


@pytest.mark.parametrize('damage', sorted(_DAMAGE))
def test_a_damaged_newest_checkpoint_falls_back_to_the_previous(copy, damage):
  _DAMAGE[damage](copy / '30')
  # Orbax itself fails on it: the damage is real (a manager of its own: one
  # that read a step without its item directory misreads every later one).
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    with pytest.raises(Exception):  # pylint: disable=broad-exception-raised
      ckpt.restore(30, _state(0))
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    # The guard falls back to step 20, exactly.
    restored, step = recovery.restore_latest_good(ckpt, _state(0))
    assert step == 20
    _assert_state_of(restored, 20)
    # The bad step is set aside: never listed again, and saving it anew works.
    assert ckpt.all_steps() == [10, 20]
    assert (copy / '30.corrupt').is_dir() and not (copy / '30').exists()
    assert ckpt.save(30, _state(31))
    ckpt.wait_until_finished()
    _assert_state_of(ckpt.restore(30, _state(0)), 31)


def test_two_damaged_checkpoints_fall_back_to_the_oldest(copy):
  _truncate_data(copy / '30')
  _garble(copy / '20' / 'default' / '_METADATA')
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    restored, step = recovery.restore_latest_good(ckpt, _state(0))
    assert step == 10
    _assert_state_of(restored, 10)
    assert ckpt.all_steps() == [10]
  assert sorted(p.name for p in copy.iterdir()) == ['10', '20.corrupt',
                                                    '30.corrupt']


def test_a_step_set_aside_twice_gets_a_new_name(copy):
  (copy / '30.corrupt').mkdir()
  _delete_data(copy / '30')
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    assert recovery.restore_latest_good(ckpt, _state(0))[1] == 20
  assert (copy / '30.corrupt-1').is_dir()


def test_no_good_checkpoint_names_the_directory_and_renames_nothing(copy):
  for step in _STEPS:
    _garble(copy / str(step) / 'default' / '_METADATA')
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    with pytest.raises(recovery.NoGoodCheckpointError,
                       match=rf'No checkpoint in {copy} restores') as e:
      recovery.restore_latest_good(ckpt, _state(0))
  for step in _STEPS:
    assert f'step {step}: ' in str(e.value)
  assert sorted(p.name for p in copy.iterdir()) == ['10', '20', '30']


def test_a_state_of_another_shape_sets_nothing_aside(copy):
  """Every step fails alike: the state is at fault, not the checkpoints."""
  other = _state(0).replace(params={'w': jnp.zeros((5, 4)),
                                    'b': jnp.zeros((4,), jnp.bfloat16)})
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    with pytest.raises(recovery.NoGoodCheckpointError):
      recovery.restore_latest_good(ckpt, other)
    assert ckpt.all_steps() == list(_STEPS)


def test_no_checkpoint_returns_the_state(tmp_path):
  state = _state(5)
  with checkpoint_lib.Checkpointer(tmp_path / 'none') as ckpt:
    restored, step = recovery.restore_latest_good(ckpt, state)
  assert step == -1 and restored is state


def test_an_intact_directory_restores_the_newest(copy):
  with checkpoint_lib.Checkpointer(copy, max_to_keep=None) as ckpt:
    restored, step = recovery.restore_latest_good(ckpt, _state(0))
  assert step == 30
  _assert_state_of(restored, 30)
