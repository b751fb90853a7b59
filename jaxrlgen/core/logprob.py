"""Log-probabilities of chosen tokens without a float32 [B, T, V] array."""

from typing import Callable

import jax
import jax.numpy as jnp


def token_logprobs(logits: jax.Array, targets: jax.Array,
                   temperature: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """log softmax(logits / temperature)[targets] and the entropy, in float32.

  Args:
    logits: [..., V].
    targets: i32[...].
    temperature: positive scale of the logits.
  Returns:
    (logp, entropy), both f32[...].
  """
  logits = logits.astype(jnp.float32) / temperature
  logz = jax.nn.logsumexp(logits, axis=-1)
  logp = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0] - logz
  probs = jnp.exp(logits - logz[..., None])
  entropy = logz - jnp.sum(probs * logits, axis=-1)
  return logp, entropy


def chunked_token_logprobs(
    logits_fn: Callable[[jax.Array], jax.Array], hidden: jax.Array,
    targets: jax.Array, *, temperature: float = 1.0,
    chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
  """`token_logprobs(logits_fn(hidden), targets)` one time-chunk at a time.

  Only [B, chunk_size, V] logits exist at once, in the forward and (thanks to
  rematerialisation of each chunk) in the backward pass.

  Args:
    logits_fn: hidden [B, c, E] -> logits [B, c, V].
    hidden: [B, T, E].
    targets: i32[B, T].
    temperature: positive scale of the logits.
    chunk_size: time steps per chunk; T is padded up to a multiple.
  Returns:
    (logp, entropy), both f32[B, T].
  """
  b, t = targets.shape
  chunk = min(chunk_size, t)
  num_chunks = -(-t // chunk)
  pad = num_chunks * chunk - t
  hidden = jnp.pad(hidden, ((0, 0), (0, pad), (0, 0)))
  targets = jnp.pad(targets, ((0, 0), (0, pad)))
  # [num_chunks, B, chunk, ...] so that lax.map walks over time chunks.
  hidden = hidden.reshape(b, num_chunks, chunk, -1).swapaxes(0, 1)
  targets = targets.reshape(b, num_chunks, chunk).swapaxes(0, 1)

  @jax.checkpoint
  def one_chunk(args):
    h, y = args
    return token_logprobs(logits_fn(h), y, temperature)

  logp, entropy = jax.lax.map(one_chunk, (hidden, targets))
  unchunk = lambda x: x.swapaxes(0, 1).reshape(b, num_chunks * chunk)[:, :t]
  return unchunk(logp), unchunk(entropy)
