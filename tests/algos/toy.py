"""Shared pieces of the algorithm tests: the toy reward and numerical gradients.

The learning tests' toy task rewards a tiny LM for the fraction of its valid
completion tokens that are TARGET: about 1/16 for a random 16-token policy,
1 for the optimal one.
"""

import jax.numpy as jnp
import numpy as np

TARGET = 5


def fives_reward(rollout, batch):
  """f32[B]: fraction of a completion's valid tokens that are TARGET."""
  del batch
  hits = jnp.sum((rollout.actions == TARGET) & rollout.mask, axis=1)
  return hits / jnp.maximum(jnp.sum(rollout.mask, axis=1), 1)


def finite_difference(f, x, h=1e-6):
  """Central-difference gradient of a float64 NumPy function f at x."""
  x = x.astype(np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[idx] += h
    minus[idx] -= h
    grad[idx] = (f(plus) - f(minus)) / (2 * h)
  return grad
