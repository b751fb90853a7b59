"""jaxrlgen/train/loop.py: fused steps."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.train import loop


def toy_step(state, batch, key):
  """A stateful step whose result depends on the order of its inputs."""
  noise = jax.random.normal(key, state.shape)
  state = 0.9 * state + batch['x'] + 0.1 * noise
  return state, {'norm': jnp.linalg.norm(state), 'first': state[0]}


def test_fused_steps_equal_separate_steps():
  state = jnp.zeros(3)
  batches = {'x': jnp.arange(12.0).reshape(4, 3)}
  keys = jax.random.split(jax.random.key(0), 4)
  want = state
  for i in range(4):
    want, want_metrics = toy_step(want, {'x': batches['x'][i]}, keys[i])
  got, metrics = jax.jit(loop.fuse_steps(toy_step, 4))(state, batches, keys)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               metrics, want_metrics)
