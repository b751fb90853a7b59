"""Tests for jaxrlgen/models/lstm.py: the oracle's likelihood against a NumPy
LSTM, the per-step cell against the scanned recurrence, the paper's init."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.models import lstm

_CFG = lstm.LSTMConfig(vocab_size=11, embed_dim=5, hidden_dim=6,
                       start_token=3, init_std=1.0)


def _numpy_logits(params, tokens, start_token):
  """Teacher-forced logits [B, T, V] of the LSTM written out in float64."""
  p = {k: np.asarray(v, np.float64) for k, v in params.items()}
  sigmoid = lambda x: 1.0 / (1.0 + np.exp(-x))
  b, t = tokens.shape
  hid = p['w_hidden'].shape[0]
  h, c = np.zeros((b, hid)), np.zeros((b, hid))
  previous = np.full((b,), start_token)
  out = []
  for step in range(t):
    x = p['embedding'][previous]
    z = x @ p['w_input'] + h @ p['w_hidden'] + p['b_gates']
    i, f, o, g = (z[:, k * hid:(k + 1) * hid] for k in range(4))
    c = sigmoid(f) * c + sigmoid(i) * np.tanh(g)
    h = sigmoid(o) * np.tanh(c)
    out.append(h @ p['w_out'] + p['b_out'])
    previous = tokens[:, step]
  return np.stack(out, axis=1)


def _log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


@pytest.mark.parametrize('chunk_size', [1, 3])  # 3 pads 7 steps to 9.
def test_oracle_nll_matches_numpy_lstm(chunk_size):
  params = lstm.init_params(_CFG, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, _CFG.vocab_size, (4, 7))
  logp_ref = np.take_along_axis(
      _log_softmax(_numpy_logits(params, tokens, _CFG.start_token)),
      tokens[..., None], -1)[..., 0]
  model = lstm.LSTM(_CFG)
  logp, entropy = jax.jit(lambda p, x: lstm.token_logprobs(
      model, p, x, chunk_size=chunk_size))(params, jnp.asarray(tokens))
  np.testing.assert_allclose(logp, logp_ref, rtol=1e-5, atol=1e-5)
  nll = lstm.mean_nll(model, params, jnp.asarray(tokens),
                      chunk_size=chunk_size)
  np.testing.assert_allclose(nll, -logp_ref.mean(), rtol=1e-5)
  probs = np.exp(_log_softmax(_numpy_logits(params, tokens, _CFG.start_token)))
  np.testing.assert_allclose(entropy, -(probs * np.log(probs)).sum(-1),
                             rtol=1e-4, atol=1e-5)


def test_cell_steps_equal_teacher_forced_states():
  model = lstm.LSTM(_CFG)
  params = lstm.init_params(_CFG, jax.random.key(1))
  tokens = jnp.asarray(
      np.random.default_rng(1).integers(0, _CFG.vocab_size, (3, 5)))
  apply = lambda method, *args: model.apply({'params': params}, *args,
                                            method=method)
  states = apply(lstm.LSTM.states, tokens)
  state = apply(lstm.LSTM.initial_state, 3)
  for t in range(5):
    np.testing.assert_allclose(state.h, states.h[:, t], atol=1e-6)
    np.testing.assert_allclose(state.c, states.c[:, t], atol=1e-6)
    state = apply(lstm.LSTM.cell, state, apply(lstm.LSTM.embed, tokens[:, t]))
  np.testing.assert_allclose(apply(lstm.LSTM.logits, states.h),
                             model.apply({'params': params}, tokens),
                             atol=1e-6)


def test_every_parameter_is_normal_with_the_configured_std():
  std = 1.0  # The oracle's.
  config = lstm.LSTMConfig(vocab_size=5000, init_std=std)
  params = lstm.init_params(config, jax.random.key(2))
  for name in ('embedding', 'w_out'):  # 160,000 draws each.
    values = np.asarray(params[name])
    assert abs(values.mean()) < 0.02 * std, name
    assert abs(values.std() / std - 1.0) < 0.02, name
  assert set(params) == {'embedding', 'w_input', 'w_hidden', 'b_gates',
                         'w_out', 'b_out'}
  assert params['w_input'].shape == (32, 128)


@pytest.mark.parametrize('kwargs, field', [
    ({'start_token': 11}, 'start_token'),
    ({'init_std': 0.0}, 'init_std'),
    ({'hidden_dim': 0}, 'hidden_dim'),
])
def test_bad_config(kwargs, field):
  with pytest.raises(ValueError, match=field):
    lstm.LSTMConfig(**{'vocab_size': 11, **kwargs})
