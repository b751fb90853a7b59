"""A recurrent LM (SeqGAN's LSTM) as a policy."""

import dataclasses
from typing import Any

import jax

from jaxrlgen.models import lstm

Params = Any
State = lstm.LSTMState


@dataclasses.dataclass(frozen=True)
class RecurrentPolicy:
  """An LSTM generator (hashable: a static jit argument).

  Attributes:
    model: the Flax module.
  """

  model: lstm.LSTM

  @property
  def config(self) -> lstm.LSTMConfig:
    return self.model.config

  def init_params(self, key: jax.Array) -> Params:
    return lstm.init_params(self.model.config, key)

  def _apply(self, params: Params, method, *args):
    return self.model.apply({'params': params}, *args, method=method)

  def initial_state(self, params: Params, batch_size: int) -> State:
    """The state after the start token, for `batch_size` sequences."""
    return self._apply(params, lstm.LSTM.initial_state, batch_size)

  def logits(self, params: Params, h: jax.Array) -> jax.Array:
    """f32[..., V] next-token logits at hidden states f32[..., H]."""
    return self._apply(params, lstm.LSTM.logits, h)

  def advance(self, params: Params, state: State, token: jax.Array) -> State:
    """The state after feeding token i32[B]."""
    return self._apply(params, lstm.LSTM.cell, state,
                       self._apply(params, lstm.LSTM.embed, token))

  def prefix_states(self, params: Params, tokens: jax.Array) -> State:
    """States after every prefix of tokens i32[B, T]: leaves f32[B, T, H],
    index t the state that samples position t."""
    return self._apply(params, lstm.LSTM.states, tokens)

  def token_logprobs(self, params: Params, tokens: jax.Array, *,
                     chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
    """Teacher-forced (log-probs, entropies) f32[B, T] of tokens i32[B, T]."""
    return lstm.token_logprobs(self.model, params, tokens,
                               chunk_size=chunk_size)
