"""Tests for jaxrlgen.train.checkpoint."""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen.train import checkpoint as checkpoint_lib


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: Any
  opt_state: Any
  ref_params: Any = None
  algo_state: Any = flax.struct.field(default_factory=dict)


def _make_state(seed=0, step=0):
  key = jax.random.key(seed)
  params = {
      'w': jax.random.normal(key, (3, 4)),
      'b': jnp.arange(4, dtype=jnp.bfloat16),
  }
  tx = optax.adam(1e-2)
  opt_state = tx.init(params)
  # One update so the moments are non-zero and the count is 1.
  grads = jax.tree.map(jnp.ones_like, params)
  _, opt_state = tx.update(grads, opt_state, params)
  return _State(step=jnp.array(step, jnp.int32), params=params,
                opt_state=opt_state, algo_state={'baseline': jnp.array(0.5)})


def _assert_trees_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(np.asarray(x, np.float32),
                                  np.asarray(y, np.float32))


def test_save_restore_roundtrip_with_none_field_and_adam(tmp_path):
  state = _make_state(step=7)
  with checkpoint_lib.Checkpointer(tmp_path / 'checkpoints') as ckpt:
    assert ckpt.latest_step() is None
    assert ckpt.save(7, state)
    ckpt.wait_until_finished()
    assert ckpt.latest_step() == 7
  # A new instance, as after a restart, finds the checkpoint.
  with checkpoint_lib.Checkpointer(tmp_path / 'checkpoints') as ckpt:
    assert ckpt.latest_step() == 7
    restored = ckpt.restore(7, _make_state(seed=1))
  assert isinstance(restored, _State)
  assert restored.ref_params is None
  assert isinstance(restored.opt_state[0], optax.ScaleByAdamState)
  _assert_trees_equal(restored, state)


def test_restore_onto_shape_dtype_structs_with_sharding(tmp_path):
  state = _make_state(step=3)
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
      jax.eval_shape(lambda: _make_state(step=3)))
  with checkpoint_lib.Checkpointer(tmp_path, enabled_async=True) as ckpt:
    ckpt.save(3, state)
    ckpt.wait_until_finished()
    restored = ckpt.restore(None, abstract)
  assert isinstance(restored, _State) and restored.ref_params is None
  for leaf in jax.tree.leaves(restored):
    assert isinstance(leaf, jax.Array)
    assert leaf.sharding == sharding
  assert restored.params['b'].dtype == jnp.bfloat16
  _assert_trees_equal(restored, state)


def test_max_to_keep_prunes_and_existing_step_is_skipped(tmp_path):
  state = _make_state()
  with checkpoint_lib.Checkpointer(tmp_path, max_to_keep=2) as ckpt:
    for step in (1, 2, 3, 4):
      assert ckpt.save(step, state.replace(step=jnp.array(step)))
    assert ckpt.all_steps() == [3, 4]
    # Saving the step just restored (as a resumed run does) is a no-op.
    assert not ckpt.save(4, state, force=True)
    assert ckpt.latest_step() == 4
    restored = ckpt.restore(3, state)
  assert int(restored.step) == 3
  assert sorted(p.name for p in tmp_path.iterdir() if p.name.isdigit()) == [
      '3', '4']


def test_relative_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with checkpoint_lib.Checkpointer('ckpts') as ckpt:
    ckpt.save(0, {'a': jnp.ones(2)})
    restored = ckpt.restore(0, {'a': jnp.zeros(2)})
  np.testing.assert_array_equal(restored['a'], np.ones(2))
  assert (tmp_path / 'ckpts' / '0').is_dir()
