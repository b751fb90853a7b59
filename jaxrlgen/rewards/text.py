"""Pure rewards over generated text: `(rollout, batch) -> f32[B]`.

`rollout.actions` are byte tokens (see `jaxrlgen.data.ByteTokenizer`);
`batch` holds per-sequence data (already repeated over each prompt's group),
e.g. `batch['answer']: i32[B]`. Everything runs inside jit.

A subword tokenizer's ids are not characters, so for released models' tokenizers
the same rewards are computed on decoded text on the host (`*_text`, wrapped
by `jaxrlgen.rewards.host.text_reward`).
"""

import re

import jax
import jax.numpy as jnp

from jaxrlgen.core.types import Rollout

_ZERO, _MINUS = ord('0'), ord('-')
MAX_DIGITS = 9  # 10**9 overflows int32.


def completion_length(rollout: Rollout) -> jax.Array:
  """i32[B] number of generated tokens, EOS included."""
  return jnp.sum(rollout.mask, axis=1, dtype=jnp.int32)


def ended_with_eos(rollout: Rollout, eos_id: int) -> jax.Array:
  """bool[B] whether the sequence emitted EOS within its budget."""
  return jnp.any(rollout.mask & (rollout.actions == eos_id), axis=1)


def parse_integer(tokens: jax.Array, mask: jax.Array,
                  eos_id: int) -> tuple[jax.Array, jax.Array]:
  """Parses each completion as a decimal integer (optional leading '-').

  Args:
    tokens: i32[B, T] byte tokens.
    mask: bool[B, T] valid steps.
    eos_id: the EOS token, which ends the text and is not part of it.
  Returns:
    (value i32[B], ok bool[B]): `ok` is false unless the text before EOS is
    1 to 9 digits with an optional leading minus; `value` is 0 then.
  """
  content = mask & (tokens != eos_id)
  n = jnp.sum(content, axis=1)
  digit = tokens - _ZERO
  is_digit = (digit >= 0) & (digit <= 9)
  minus = (tokens[:, 0] == _MINUS) & content[:, 0]
  index = jnp.arange(tokens.shape[1])
  allowed = is_digit | ((index == 0)[None] & minus[:, None])
  num_digits = n - minus
  ok = (jnp.all(allowed | ~content, axis=1) & (num_digits >= 1)
        & (num_digits <= MAX_DIGITS))
  powers = 10 ** jnp.arange(MAX_DIGITS, dtype=jnp.int32)
  exponent = jnp.clip(n[:, None] - 1 - index[None], 0, MAX_DIGITS - 1)
  terms = jnp.where(content & is_digit, digit * powers[exponent], 0)
  value = jnp.sum(terms, axis=1) * jnp.where(minus, -1, 1)
  return jnp.where(ok, value, 0), ok


def exact_match(rollout: Rollout, batch, *, eos_id: int) -> jax.Array:
  """1.0 where the completion parses to exactly `batch['answer']`."""
  value, ok = parse_integer(rollout.actions, rollout.mask, eos_id)
  return (ok & (value == batch['answer'])).astype(jnp.float32)


def target_match(rollout: Rollout, batch) -> jax.Array:
  """1.0 where the completion is token for token the task's reference
  completion `batch['target']` (masked by `batch['target_mask']`), EOS
  included: exact match for any task whose records carry a 'completion'."""
  actions = jnp.where(rollout.mask, rollout.actions, -1)
  target = jnp.where(batch['target_mask'], batch['target'], -1)
  width = max(actions.shape[1], target.shape[1])
  pad = lambda x: jnp.pad(x, ((0, 0), (0, width - x.shape[1])),
                          constant_values=-1)
  return jnp.all(pad(actions) == pad(target), axis=1).astype(jnp.float32)


def integer_format(rollout: Rollout, batch, *, eos_id: int) -> jax.Array:
  """1.0 where the completion is an integer followed by EOS."""
  del batch
  _, ok = parse_integer(rollout.actions, rollout.mask, eos_id)
  return (ok & ended_with_eos(rollout, eos_id)).astype(jnp.float32)


def length_penalty(rollout: Rollout, batch, *, target_length: int = 0
                   ) -> jax.Array:
  """-(tokens beyond `target_length`) / T: 0 for short, -1 at most for long."""
  del batch
  excess = jnp.maximum(completion_length(rollout) - target_length, 0)
  return -excess.astype(jnp.float32) / rollout.num_steps


_INTEGER = re.compile(r'-?[0-9]{1,%d}' % MAX_DIGITS)


def parse_integer_text(text: str) -> int | None:
  """`parse_integer` of decoded text: an optional '-' and 1 to 9 digits,
  surrounding whitespace ignored (subword tokenizers attach spaces to
  tokens); None otherwise."""
  text = text.strip()
  return int(text) if _INTEGER.fullmatch(text) else None


def exact_match_text(text: str, answer) -> float:
  """`exact_match` of a decoded completion."""
  value = parse_integer_text(text)
  return float(value is not None and value == int(answer))


def is_integer_text(text: str) -> float:
  """1.0 where the decoded completion is an integer."""
  return float(parse_integer_text(text) is not None)
