"""An LSTM language model: SeqGAN's generator and its synthetic oracle.

The model of SeqGAN's synthetic benchmark (Yu et al. 2017, "SeqGAN: Sequence
Generative Adversarial Nets with Policy Gradient", section 4): token
embeddings, one LSTM layer (Hochreiter & Schmidhuber 1997) without peepholes,
and a linear read-out to the vocabulary. Generation starts from a fixed
`start_token` fed as the first input with zero hidden and cell states:

  x_t            = embed(token_{t-1})            (token_0 = start_token)
  [i, f, o, g]   = x_t W + h_{t-1} U + b         (the four gates, fused)
  c_t            = sigmoid(f) c_{t-1} + sigmoid(i) tanh(g)
  h_t            = sigmoid(o) tanh(c_t)
  logits_t       = h_t W_out + b_out             (predicts token_t)

Every parameter, biases included, is drawn from N(0, init_std^2) as in the
paper's released code: init_std 0.1 for the generator and 1.0 for the oracle,
whose sharp, random next-token distributions define the "true" data.

`cell` is the per-step update, so samplers can carry an `LSTMState` through
`lax.scan`; `states` runs the teacher-forced recurrence over a whole sequence
(the input projections of all steps in one matmul, only h U in the scan).
"""

import dataclasses

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen.core import logprob


@dataclasses.dataclass(frozen=True)
class LSTMConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  vocab_size: int = 5000
  embed_dim: int = 32
  hidden_dim: int = 32
  start_token: int = 0  # The first input; also an ordinary vocabulary token.
  init_std: float = 0.1  # Std of the normal init of every parameter.

  def __post_init__(self):
    for name in ('vocab_size', 'embed_dim', 'hidden_dim'):
      if getattr(self, name) < 1:
        raise ValueError(f'LSTMConfig.{name}={getattr(self, name)} must be '
                         'positive.')
    if not 0 <= self.start_token < self.vocab_size:
      raise ValueError(f'LSTMConfig.start_token={self.start_token} must be a '
                       f'token id in [0, {self.vocab_size}).')
    if self.init_std <= 0:
      raise ValueError(f'LSTMConfig.init_std={self.init_std} must be > 0.')


@flax.struct.dataclass
class LSTMState:
  """Hidden and cell state: h, c: f32[..., H]."""

  h: jax.Array
  c: jax.Array


def zero_state(batch_size: int, hidden_dim: int) -> LSTMState:
  zeros = jnp.zeros((batch_size, hidden_dim), jnp.float32)
  return LSTMState(h=zeros, c=zeros)


def lstm_update(state: LSTMState, gates: jax.Array) -> LSTMState:
  """The LSTM state update from pre-activations `gates`: f32[..., 4H]
  ordered [input, forget, output, candidate]."""
  i, f, o, g = jnp.split(gates, 4, axis=-1)
  c = jax.nn.sigmoid(f) * state.c + jax.nn.sigmoid(i) * jnp.tanh(g)
  return LSTMState(h=jax.nn.sigmoid(o) * jnp.tanh(c), c=c)


class LSTM(nn.Module):
  """The LSTM language model; see the module docstring."""

  config: LSTMConfig

  def setup(self):
    cfg = self.config
    init = nn.initializers.normal(cfg.init_std)
    v, e, h = cfg.vocab_size, cfg.embed_dim, cfg.hidden_dim
    self.embedding = self.param('embedding', init, (v, e))
    self.w_input = self.param('w_input', init, (e, 4 * h))
    self.w_hidden = self.param('w_hidden', init, (h, 4 * h))
    self.b_gates = self.param('b_gates', init, (4 * h,))
    self.w_out = self.param('w_out', init, (h, v))
    self.b_out = self.param('b_out', init, (v,))

  def embed(self, tokens: jax.Array) -> jax.Array:
    """i32[...] -> f32[..., E]."""
    return jnp.take(self.embedding, tokens, axis=0)

  def initial_state(self, batch_size: int) -> LSTMState:
    """The state after consuming the start token: it predicts token 1."""
    start = jnp.full((batch_size,), self.config.start_token, jnp.int32)
    return self.cell(zero_state(batch_size, self.config.hidden_dim),
                     self.embed(start))

  def cell(self, state: LSTMState, x: jax.Array) -> LSTMState:
    """One step: state h, c f32[B, H], input embedding x f32[B, E]."""
    gates = x @ self.w_input + state.h @ self.w_hidden + self.b_gates
    return lstm_update(state, gates)

  def logits(self, h: jax.Array) -> jax.Array:
    """f32[..., H] -> next-token logits f32[..., V]."""
    return h @ self.w_out + self.b_out

  def states(self, tokens: jax.Array) -> LSTMState:
    """Teacher-forced states over a sequence.

    Args:
      tokens: i32[B, T].
    Returns:
      LSTMState with f32[B, T, H] leaves; index t holds the state after
      consuming the start token and tokens[:, :t], i.e. the one that predicts
      tokens[:, t].
    """
    chex.assert_rank(tokens, 2)
    b = tokens.shape[0]
    start = jnp.full((b, 1), self.config.start_token, tokens.dtype)
    inputs = jnp.concatenate([start, tokens[:, :-1]], axis=1)
    # Input projections do not depend on the recurrence: one [B*T, E] matmul.
    gates_x = self.embed(inputs) @ self.w_input + self.b_gates
    w_hidden = self.w_hidden

    def step(state, gx):
      state = lstm_update(state, gx + state.h @ w_hidden)
      return state, state

    _, states = jax.lax.scan(step, zero_state(b, self.config.hidden_dim),
                             jnp.swapaxes(gates_x, 0, 1))
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1), states)

  def __call__(self, tokens: jax.Array) -> jax.Array:
    """Teacher-forced logits f32[B, T, V] (small vocabularies and tests)."""
    return self.logits(self.states(tokens).h)


def init_params(config: LSTMConfig, key: jax.Array):
  """The model's parameters (a dict), every leaf ~ N(0, init_std^2)."""
  tokens = jnp.zeros((1, 1), jnp.int32)
  # One compiled program instead of one per initializer call.
  init = jax.jit(lambda k: LSTM(config).init(k, tokens, method=LSTM.states))
  return init(key)['params']


def token_logprobs(model: LSTM, params, tokens: jax.Array, *,
                   chunk_size: int = 128) -> tuple[jax.Array, jax.Array]:
  """Teacher-forced log p(tokens[:, t] | start, tokens[:, :t]) and entropies.

  The [B, T, V] logits never exist at once: they are computed `chunk_size`
  time steps at a time (see `core.logprob.chunked_token_logprobs`).

  Args:
    model: the module.
    params: its parameters.
    tokens: i32[B, T].
    chunk_size: time steps per chunk.
  Returns:
    (logp, entropy), both f32[B, T].
  """
  chex.assert_rank(tokens, 2)
  hidden = model.apply({'params': params}, tokens, method=LSTM.states).h
  logits_fn = lambda h: model.apply({'params': params}, h, method=LSTM.logits)
  return logprob.chunked_token_logprobs(logits_fn, hidden, tokens,
                                        chunk_size=chunk_size)


def mean_nll(model: LSTM, params, tokens: jax.Array, *,
             chunk_size: int = 128) -> jax.Array:
  """f32[] mean negative log-likelihood per token of `tokens` i32[B, T].

  With the oracle's parameters and a model's samples this is SeqGAN's
  NLL-oracle.
  """
  logp, _ = token_logprobs(model, params, tokens, chunk_size=chunk_size)
  return -jnp.mean(logp)
