"""Tests for jaxrlgen/envs/recurrent.py: the exact sampler, sampled =
teacher-forced log-probs, prefix states, and the library's losses on it."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.algos import base
from jaxrlgen.algos import reinforce
from jaxrlgen.core import sampling
from jaxrlgen.envs import recurrent
from jaxrlgen.models import lstm
from jaxrlgen.policies import RecurrentPolicy

_CFG = lstm.LSTMConfig(vocab_size=13, embed_dim=4, hidden_dim=5,
                       init_std=1.0)
_ENV = recurrent.RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)),
                              length=6,
                              sample_block=4,
                              logprob_chunk=4)


def test_sampler_draws_from_the_softmax():
  # V = 7 with blocks of 3 tokens: the last block is padded with zero mass.
  logits = jnp.asarray([[0.5, -1.0, 2.0, 0.0, 1.0, -3.0, 0.3],
                        [-1e9, 0.0, -1e9, 1.0, -1e9, -1e9, 2.0]])
  n = 20_000
  tokens, logp = jax.jit(jax.vmap(
      lambda k: sampling.sample_categorical(k, logits, block_size=3)))(
          jax.random.split(jax.random.key(0), n))
  probs = np.exp(np.asarray(jax.nn.log_softmax(logits)))
  for row in range(2):
    freq = np.bincount(np.asarray(tokens[:, row]), minlength=7) / n
    # 4.5 standard errors of a frequency estimate.
    np.testing.assert_array_less(
        np.abs(freq - probs[row]), 4.5 * np.sqrt(probs[row] / n) + 1e-9)
  assert not np.isin(np.asarray(tokens[:, 1]), [0, 2, 4, 5]).any()
  np.testing.assert_allclose(
      logp, np.log(probs[np.arange(2)[None], np.asarray(tokens)]),
      rtol=1e-5, atol=1e-5)


def test_sampled_logp_equals_teacher_forced():
  params = lstm.init_params(_CFG, jax.random.key(1))
  rollout = jax.jit(_ENV.rollout)(params, recurrent.unconditional(8),
                                                    jax.random.key(2))
  assert rollout.actions.shape == (8, 6) and bool(rollout.mask.all())
  out = jax.jit(_ENV.evaluate)(params, rollout)
  np.testing.assert_allclose(out.logp, rollout.logp, rtol=1e-5, atol=1e-5)
  assert out.entropy.shape == (8, 6)
  np.testing.assert_array_less(0.0, np.asarray(out.entropy))


def test_sample_in_chunks():
  params = lstm.init_params(_CFG, jax.random.key(3))
  sample = jax.jit(lambda p, k: _ENV.sample(p, 10, k, chunk=4))
  tokens = sample(params, jax.random.key(4))
  assert tokens.shape == (10, 6) and tokens.dtype == jnp.int32
  np.testing.assert_array_equal(tokens, sample(params, jax.random.key(4)))
  assert int(tokens.min()) >= 0 and int(tokens.max()) < 13


def test_prefix_states_continue_like_the_cell():
  params = lstm.init_params(_CFG, jax.random.key(5))
  tokens = jnp.asarray(np.random.default_rng(0).integers(0, 13, (3, 6)))
  states = _ENV.prefix_states(params, tokens)
  state = _ENV.reset(params, 3)
  model = _ENV.policy.model
  for t in range(6):
    np.testing.assert_allclose(states.h[:, t], state.h, atol=1e-6)
    x = model.apply({'params': params}, tokens[:, t], method=lstm.LSTM.embed)
    state = model.apply({'params': params}, state, x, method=lstm.LSTM.cell)


def test_reinforce_loss_applies_unchanged():
  """The library's REINFORCE loss trains the LSTM policy: per-token rewards
  for token 0 make a few gradient steps sample it more often."""
  config = lstm.LSTMConfig(vocab_size=13, embed_dim=4, hidden_dim=5)
  params = lstm.init_params(config, jax.random.key(6))
  env = recurrent.RecurrentEnv(RecurrentPolicy(lstm.LSTM(config)), length=6)
  loss_fn = reinforce.pg_loss_fn('sequence_sum', 0.0, 0.0)

  @jax.jit
  def step(params, key):
    rollout = env.rollout(params, recurrent.unconditional(64), key)
    rewards = (rollout.actions == 0).astype(jnp.float32)  # Per token.
    grads, _ = jax.grad(
        lambda p: loss_fn(env, p, base.PolicyGradientExperience(
            rollout=rollout, advantages=rewards)),
        has_aux=True)(params)
    return jax.tree.map(lambda p, g: p - 0.5 * g, params, grads), jnp.mean(
        rewards)

  rates = []
  for i in range(30):
    params, rate = step(params, jax.random.key(i))
    rates.append(float(rate))
  assert np.mean(rates[-5:]) > np.mean(rates[:5]) + 0.2


def test_bad_length():
  with pytest.raises(ValueError, match='length'):
    recurrent.RecurrentEnv(_ENV.policy, length=0)
