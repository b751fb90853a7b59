"""Tests for jaxrlgen/core/rollout.py: segmented unrolls equal one unroll."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.core import rollout


def _step(state, key):
  """A counter with a history buffer that must be long enough for it."""
  t, history = state
  draw = jax.random.uniform(key, (2,))
  history = jax.lax.dynamic_update_index_in_dim(history, draw, t, axis=1)
  # The step reads the whole history, as attention reads the whole cache.
  out = draw + jnp.sum(history, axis=1)
  return (t + 1, history), out


def _grow(state, end):
  t, history = state
  return t, jnp.pad(history, ((0, 0), (0, end - history.shape[1])))


def test_segments_equal_unroll():
  key = jax.random.key(0)
  (t, history), want = rollout.unroll(
      _step, (jnp.int32(0), jnp.zeros((2, 7))), key, 7)
  (t2, history2), got = rollout.unroll_segments(
      _step, (jnp.int32(0), jnp.zeros((2, 0))), key, 7, bounds=(0, 2, 3, 7),
      grow=_grow)
  assert want.shape == got.shape == (2, 7)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert int(t2) == int(t) == 7
  np.testing.assert_array_equal(history2, history)


def test_segments_stop_like_unroll_until():
  stop = lambda state: state[0] >= 4
  fill = jnp.full((2,), -1.0)
  key = jax.random.key(1)
  _, want = rollout.unroll_until(
      _step, (jnp.int32(0), jnp.zeros((2, 7))), key, 7, stop=stop, fill=fill)
  (t, _), got = rollout.unroll_segments(
      _step, (jnp.int32(0), jnp.zeros((2, 0))), key, 7, bounds=(0, 3, 5, 7),
      grow=_grow, stop=stop, fill=fill)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert int(t) == 4
  assert (np.asarray(got)[:, 4:] == -1).all()


@pytest.mark.parametrize('bounds', [(0, 3), (1, 7), (0, 3, 3, 7), (0, 5, 2, 7)])
def test_bad_bounds_raise(bounds):
  with pytest.raises(ValueError, match='bounds'):
    rollout.unroll_segments(_step, (jnp.int32(0), jnp.zeros((2, 7))),
                            jax.random.key(0), 7, bounds=bounds, grow=_grow)
