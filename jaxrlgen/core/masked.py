"""Masked reductions over padded [B, T] arrays.

Everything here is float32 and safe for all-false masks (the result is 0, not
NaN), because a batch may hold sequences that ended at their first step.
"""

import jax
import jax.numpy as jnp


def masked_sum(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def masked_mean(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  """Mean of `x` over the true entries of `mask` (0 where there are none)."""
  count = jnp.sum(mask, axis=axis, dtype=jnp.float32)
  return masked_sum(x, mask, axis) / jnp.maximum(count, 1.0)


def masked_var(x: jax.Array, mask: jax.Array, axis=None) -> jax.Array:
  mean = masked_mean(x, mask, axis)
  if axis is not None:
    mean = jnp.expand_dims(mean, axis)
  return masked_mean(jnp.square(x - mean), mask, axis)


def masked_whiten(x: jax.Array, mask: jax.Array, shift_mean: bool = True,
                  eps: float = 1e-8) -> jax.Array:
  """(x - mean) / std over the masked entries; masked-out entries become 0."""
  mean = masked_mean(x, mask)
  std = jnp.sqrt(masked_var(x, mask) + eps)
  out = (x - mean) / std if shift_mean else x / std
  return jnp.where(mask, out, 0.0)
