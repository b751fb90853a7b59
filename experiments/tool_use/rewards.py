"""A shaped reward for copying the calculator's result: digits in place.

  --config.reward.terms="{'exact_match': 1.0, 'experiments.tool_use.rewards:digits_in_place': 1.0}"

Exact match alone scores a 6-digit answer with one digit wrong as it scores
garbage, so a group whose samples are all wrong carries no signal (GRPO's
advantages are zero). Counting the digits written in their place gives
partial credit to near-copies; dividing by the longer of the two lengths
takes it back from a digit skipped or repeated, which shifts the rest.
"""

import jax
import jax.numpy as jnp

from jaxrlgen.core.types import Rollout
from jaxrlgen.rewards import text

_ZERO = ord('0')


def answer_digits(answer: jax.Array) -> tuple[jax.Array, jax.Array]:
  """The decimal digits of non-negative integers, most significant first.

  Args:
    answer: i32[B], 0 <= answer < 10**9.
  Returns:
    (digits i32[B, 9], length i32[B]): `digits[:, j]` is the j-th digit from
    the left for j < length, 0 beyond it.
  """
  powers = 10 ** jnp.arange(text.MAX_DIGITS, dtype=jnp.int32)  # [9]
  length = jnp.maximum(
      1, jnp.sum(answer[:, None] >= powers[None], axis=1, dtype=jnp.int32))
  j = jnp.arange(text.MAX_DIGITS)
  exponent = jnp.clip(length[:, None] - 1 - j[None], 0, text.MAX_DIGITS - 1)
  digits = (answer[:, None] // powers[exponent]) % 10
  return jnp.where(j[None] < length[:, None], digits, 0), length


def digits_in_place_score(tokens: jax.Array, mask: jax.Array,
                          answer: jax.Array, eos_id: int) -> jax.Array:
  """f32[B]: answer digits written at their place / max(lengths).

  Args:
    tokens: i32[B, T] byte tokens of the answer turn.
    mask: bool[B, T] its valid steps (a prefix, EOS included).
    answer: i32[B] the non-negative integer to write.
    eos_id: the EOS token, which ends the text and is not part of it.
  Returns:
    In [0, 1]: 1 exactly where the text before EOS is the answer's digits.
  """
  content = mask & (tokens != eos_id)
  # EOS ends the text even if the mask ran on (it does not, in this env).
  content &= jnp.cumsum(mask & (tokens == eos_id), axis=1) == 0
  written = jnp.sum(content, axis=1, dtype=jnp.int32)
  digits, length = answer_digits(answer)
  width = min(tokens.shape[1], text.MAX_DIGITS)
  hit = (content[:, :width] & (tokens[:, :width] - _ZERO == digits[:, :width])
         & (jnp.arange(width)[None] < length[:, None]))
  hits = jnp.sum(hit, axis=1, dtype=jnp.int32)
  return hits.astype(jnp.float32) / jnp.maximum(length, written)


def digits_in_place(*, tokenizer, **unused):
  """The reward factory: `digits_in_place_score` of `batch['answer']`."""
  eos_id = tokenizer.eos_id

  def reward(rollout: Rollout, batch) -> jax.Array:
    return digits_in_place_score(rollout.actions, rollout.mask,
                                 batch['answer'], eos_id)
  return reward
