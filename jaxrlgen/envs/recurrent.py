"""Fixed-length generation from an LSTM language model as a token-level MDP.

State: the LSTM's (h, c) after the tokens so far (`reset` gives the state
after the start token). Action: the next token, drawn from softmax(logits(h)).
`step` samples a token and feeds it through one `cell` update; `rollout` is a
`lax.scan` of `step` and returns core's `Rollout`; `evaluate` recomputes
log-probs and entropies of a stored rollout with one teacher-forced pass, so
the library's policy-gradient losses (`algos.reinforce.pg_loss_fn`, SFT's
loss) train this policy unchanged. Sequences have exactly `length` tokens
(SeqGAN's synthetic benchmark has no end token), so every mask is all true.

`prefix_states` gives the state after every prefix of given sequences; the
Monte-Carlo prefix completions of `rewards.montecarlo` start from them.
"""

import dataclasses
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core import sampling
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout
from jaxrlgen.policies.recurrent import RecurrentPolicy
from jaxrlgen.policies.recurrent import State

Params = Any


@flax.struct.dataclass
class Transition:
  """One generated token per sequence: token i32[B], logp f32[B]."""

  token: jax.Array
  logp: jax.Array


@dataclasses.dataclass(frozen=True)
class RecurrentEnv:
  """Static description of fixed-length LSTM generation (hashable).

  Attributes:
    policy: the LSTM that acts (`policies.RecurrentPolicy`).
    length: T, tokens per sequence.
    sample_block: block size of `core.sampling.sample_categorical`.
    logprob_chunk: time steps per chunk in `evaluate` (bounds the [B, c, V]
      logits that exist at once).
  """

  policy: RecurrentPolicy
  length: int
  sample_block: int = 128
  logprob_chunk: int = 128

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'RecurrentEnv.length={self.length} must be >= 1.')

  def reset(self, params: Params, batch_size: int) -> State:
    """The state after the start token, for `batch_size` sequences."""
    return self.policy.initial_state(params, batch_size)

  def step(self, params: Params, state: State,
           key: jax.Array) -> tuple[State, Transition]:
    """Samples the next token from `state` and feeds it back in."""
    logits = self.policy.logits(params, state.h)
    token, logp = sampling.sample_categorical(
        key, logits, block_size=self.sample_block)
    return (self.policy.advance(params, state, token),
            Transition(token=token, logp=logp))

  def rollout(self, params: Params, batch, key: jax.Array) -> Rollout:
    """Samples one sequence of `length` tokens per row of `batch`.

    Args:
      params: policy parameters.
      batch: per-sequence data; generation is unconditional, so only the
        leading axis B of `batch['prompt']` is read (`unconditional(B)`).
      key: PRNG key.
    Returns:
      A Rollout with `actions` i32[B, T], `logp` f32[B, T], an all-true
      `mask` and an empty `context`.
    """
    state = self.reset(params, batch['prompt'].shape[0])
    _, transitions = rollout_lib.unroll(
        lambda s, k: self.step(params, s, k), state, key, self.length)
    return Rollout(context={}, actions=transitions.token,
                   logp=transitions.logp,
                   mask=jnp.ones(transitions.token.shape, jnp.bool_))

  def sample(self, params: Params, num_samples: int, key: jax.Array, *,
             chunk: int = 1000) -> jax.Array:
    """i32[num_samples, T] sequences, generated `chunk` at a time.

    Chunks bound the [chunk, V] logits of a step; `lax.map` runs them in one
    compiled loop.
    """
    chunk = min(chunk, num_samples)
    num_chunks = -(-num_samples // chunk)
    keys = jax.random.split(key, num_chunks)
    batch = unconditional(chunk)
    tokens = jax.lax.map(lambda k: self.rollout(params, batch, k).actions,
                         keys)
    return tokens.reshape(num_chunks * chunk, self.length)[:num_samples]

  def evaluate(self, params: Params, rollout: Rollout) -> PolicyOutputs:
    """Teacher-forced log-probs and entropies f32[B, T] of stored actions."""
    chex.assert_rank(rollout.actions, 2)
    logp, entropy = self.policy.token_logprobs(
        params, rollout.actions, chunk_size=self.logprob_chunk)
    return PolicyOutputs(logp=logp, entropy=entropy)

  def prefix_states(self, params: Params, tokens: jax.Array) -> State:
    """States after every prefix: leaves f32[B, T, H], index t holding the
    state after the start token and tokens[:, :t] (the one that samples
    position t)."""
    return self.policy.prefix_states(params, tokens)


def unconditional(batch_size: int) -> dict[str, jax.Array]:
  """The batch of `batch_size` unconditional sequences: empty prompts
  (`prompt` i32[B, 0], `prompt_mask` bool[B, 0])."""
  return {'prompt': jnp.zeros((batch_size, 0), jnp.int32),
          'prompt_mask': jnp.zeros((batch_size, 0), jnp.bool_)}


def supervised_rollout(tokens: jax.Array) -> Rollout:
  """Sequences i32[B, T] as the Rollout whose actions they are (for MLE)."""
  return Rollout(context={}, actions=tokens,
                 logp=jnp.zeros(tokens.shape, jnp.float32),
                 mask=jnp.ones(tokens.shape, jnp.bool_))
