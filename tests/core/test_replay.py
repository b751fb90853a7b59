"""The on-device replay ring buffer: writes, wrap-around, sampling, jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.core import replay


def _items(start, n):
  """n items whose value identifies them: x = start..start+n-1."""
  x = jnp.arange(start, start + n, dtype=jnp.int32)
  return {'x': x, 'y': {'z': jnp.stack([x, -x], axis=1).astype(jnp.float32)}}


def test_init_is_empty_and_shaped_like_example():
  buf = replay.init(_items(0, 2), capacity=5)
  assert buf.capacity == 5
  assert int(buf.size) == 0 and int(buf.position) == 0
  assert buf.items['x'].shape == (5,) and buf.items['y']['z'].shape == (5, 2)
  assert buf.items['y']['z'].dtype == jnp.float32
  # Shapes alone are enough to size it.
  spec = jax.eval_shape(lambda: _items(0, 3))
  assert replay.init(spec, capacity=4).items['y']['z'].shape == (4, 2)


@pytest.mark.parametrize('jit', [False, True])
def test_add_wraps_around_overwriting_the_oldest(jit):
  add = jax.jit(replay.add) if jit else replay.add
  buf = replay.init(_items(0, 1), capacity=5)
  buf = add(buf, _items(0, 3))  # slots 0..2
  np.testing.assert_array_equal(buf.items['x'], [0, 1, 2, 0, 0])
  assert (int(buf.size), int(buf.position)) == (3, 3)
  buf = add(buf, _items(3, 3))  # slots 3, 4, then 0
  np.testing.assert_array_equal(buf.items['x'], [5, 1, 2, 3, 4])
  np.testing.assert_array_equal(buf.items['y']['z'][:, 1], [-5, -1, -2, -3, -4])
  assert (int(buf.size), int(buf.position)) == (5, 1)
  buf = add(buf, _items(6, 5))  # a whole capacity: every slot, in order
  np.testing.assert_array_equal(buf.items['x'], [10, 6, 7, 8, 9])
  assert (int(buf.size), int(buf.position)) == (5, 1)


def test_add_rejects_more_than_capacity_and_other_structures():
  buf = replay.init(_items(0, 1), capacity=2)
  with pytest.raises(ValueError, match='capacity'):
    replay.add(buf, _items(0, 3))
  with pytest.raises(AssertionError):
    replay.add(buf, {'x': jnp.zeros(2, jnp.int32)})


def test_sample_only_filled_slots_uniformly_under_jit():
  buf = replay.init(_items(0, 1), capacity=8)
  buf = replay.add(buf, _items(100, 3))  # slots 0..2 hold 100..102
  sample = jax.jit(replay.sample, static_argnums=2)
  got = np.concatenate([np.asarray(sample(buf, jax.random.key(i), 64)['x'])
                        for i in range(8)])
  assert set(got.tolist()) == {100, 101, 102}  # never an empty (zero) slot
  counts = np.bincount(got - 100, minlength=3) / got.size
  np.testing.assert_allclose(counts, 1 / 3, atol=0.06)  # 512 draws
  # Items stay whole: each sampled row's fields belong together.
  s = sample(buf, jax.random.key(0), 16)
  np.testing.assert_array_equal(s['y']['z'][:, 0], s['x'])
  # Deterministic in the key.
  np.testing.assert_array_equal(sample(buf, jax.random.key(3), 16)['x'],
                                sample(buf, jax.random.key(3), 16)['x'])


def test_buffer_is_a_pytree_that_jit_carries():
  @jax.jit
  def add_and_sample(buf, items, key):
    buf = replay.add(buf, items)
    return buf, replay.sample(buf, key, 4)

  buf = replay.init(_items(0, 2), capacity=3)
  buf, s = add_and_sample(buf, _items(7, 2), jax.random.key(0))
  buf, s = add_and_sample(buf, _items(9, 2), jax.random.key(1))
  np.testing.assert_array_equal(buf.items['x'], [10, 8, 9])
  assert set(np.asarray(s['x']).tolist()) <= {8, 9, 10}
