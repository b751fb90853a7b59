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
from jaxrlgen.models import lstm

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
    model: the policy's LSTM module.
    length: T, tokens per sequence.
    sample_block: block size of `core.sampling.sample_categorical`.
    logprob_chunk: time steps per chunk in `evaluate` (bounds the [B, c, V]
      logits that exist at once).
  """

  model: lstm.LSTM
  length: int
  sample_block: int = 128
  logprob_chunk: int = 128

  def __post_init__(self):
    if self.length < 1:
      raise ValueError(f'RecurrentEnv.length={self.length} must be >= 1.')

  def reset(self, params: Params, batch_size: int) -> lstm.LSTMState:
    """The state after the start token, for `batch_size` sequences."""
    return self.model.apply({'params': params}, batch_size,
                            method=lstm.LSTM.initial_state)

  def step(self, params: Params, state: lstm.LSTMState,
           key: jax.Array) -> tuple[lstm.LSTMState, Transition]:
    """Samples the next token from `state` and feeds it back in."""
    apply = lambda method, *args: self.model.apply({'params': params}, *args,
                                                   method=method)
    logits = apply(lstm.LSTM.logits, state.h)
    token, logp = sampling.sample_categorical(
        key, logits, block_size=self.sample_block)
    state = apply(lstm.LSTM.cell, state, apply(lstm.LSTM.embed, token))
    return state, Transition(token=token, logp=logp)

  def rollout(self, params: Params, batch_size: int,
              key: jax.Array) -> Rollout:
    """Samples `batch_size` sequences of `length` tokens.

    Returns:
      A Rollout with `actions` i32[B, T], `logp` f32[B, T], an all-true
      `mask` and an empty `context` (generation is unconditional).
    """
    state = self.reset(params, batch_size)
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
    tokens = jax.lax.map(lambda k: self.rollout(params, chunk, k).actions,
                         keys)
    return tokens.reshape(num_chunks * chunk, self.length)[:num_samples]

  def evaluate(self, params: Params, rollout: Rollout) -> PolicyOutputs:
    """Teacher-forced log-probs and entropies f32[B, T] of stored actions."""
    chex.assert_rank(rollout.actions, 2)
    logp, entropy = lstm.token_logprobs(self.model, params, rollout.actions,
                                        chunk_size=self.logprob_chunk)
    return PolicyOutputs(logp=logp, entropy=entropy)

  def prefix_states(self, params: Params, tokens: jax.Array) -> lstm.LSTMState:
    """States after every prefix: leaves f32[B, T, H], index t holding the
    state after the start token and tokens[:, :t] (the one that samples
    position t)."""
    return self.model.apply({'params': params}, tokens,
                            method=lstm.LSTM.states)


def supervised_rollout(tokens: jax.Array) -> Rollout:
  """Sequences i32[B, T] as the Rollout whose actions they are (for MLE)."""
  return Rollout(context={}, actions=tokens,
                 logp=jnp.zeros(tokens.shape, jnp.float32),
                 mask=jnp.ones(tokens.shape, jnp.bool_))
