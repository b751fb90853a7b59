"""Tests for jaxrlgen/rewards/montecarlo.py: completions keep their prefixes
and continue from the right state (the pairing of lanes), the reward's shape,
and its masking."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.envs.recurrent import RecurrentEnv
from jaxrlgen.models import lstm
from jaxrlgen.rewards import montecarlo
from jaxrlgen.policies import RecurrentPolicy

_V = 7
_CFG = lstm.LSTMConfig(vocab_size=_V, embed_dim=4, hidden_dim=6, init_std=1.0)


def _greedy_params(seed):
  """Parameters whose sampling is argmax up to ~exp(-1000): the read-out is
  scaled so far that every step's top logit wins by a huge margin."""
  params = lstm.init_params(_CFG, jax.random.key(seed))
  return {**params, 'w_out': 1e4 * params['w_out'],
          'b_out': 1e4 * params['b_out']}


def _greedy_reference(env, params, prefix, length):
  """Greedy continuation of one prefix i32[B, t], one token at a time."""
  model = env.policy.model

  @jax.jit
  def feed(state, token):
    x = model.apply({'params': params}, token, method=lstm.LSTM.embed)
    state = model.apply({'params': params}, state, x, method=lstm.LSTM.cell)
    logits = model.apply({'params': params}, state.h, method=lstm.LSTM.logits)
    return state, jnp.argmax(logits, axis=-1)

  state = model.apply({'params': params}, prefix.shape[0],
                      method=lstm.LSTM.initial_state)
  greedy = jnp.argmax(model.apply({'params': params}, state.h,
                                  method=lstm.LSTM.logits), axis=-1)
  tokens = []
  for t in range(length):
    tokens.append(prefix[:, t] if t < prefix.shape[1] else greedy)
    state, greedy = feed(state, tokens[-1])
  return np.stack(tokens, axis=1)


@pytest.mark.parametrize('length, per_scan', [(5, None), (6, 2)])
def test_completions_keep_prefix_and_continue_from_its_state(length, per_scan):
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)),
                     length=length,
                     sample_block=3)
  params = _greedy_params(0)
  actions = jnp.asarray(
      np.random.default_rng(0).integers(0, _V, (3, length)), jnp.int32)
  completions = jax.jit(lambda p, a, k: montecarlo.prefix_completions(
      env, p, a, 4, k, rollouts_per_scan=per_scan))(
          params, actions, jax.random.key(1))
  assert completions.shape == (length - 1, 4, 3, length)
  for t in range(1, length):
    np.testing.assert_array_equal(
        completions[t - 1, :, :, :t],
        np.broadcast_to(actions[:, :t], (4, 3, t)))
    want = _greedy_reference(env, params, actions[:, :t], length)
    for n in range(4):
      np.testing.assert_array_equal(completions[t - 1, n], want,
                                    err_msg=f'prefix {t}, rollout {n}')


def test_completions_are_samples_of_the_policy():
  """With a stochastic policy the first completed token of each prefix is
  distributed as the policy's next-token distribution after that prefix."""
  length, n = 4, 3000
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)),
                     length=length,
                     sample_block=3)
  params = lstm.init_params(_CFG, jax.random.key(2))
  actions = jnp.asarray([[1, 5, 2, 6]], jnp.int32)
  completions = jax.jit(lambda p, a, k: montecarlo.prefix_completions(
      env, p, a, n, k))(params, actions, jax.random.key(3))
  states = env.prefix_states(params, actions)
  logits = env.policy.model.apply({'params': params}, states.h[0],
                           method=lstm.LSTM.logits)
  probs = np.asarray(jax.nn.softmax(logits))  # [T, V]: after t tokens.
  for t in range(1, length):
    freq = np.bincount(np.asarray(completions[t - 1, :, 0, t]),
                       minlength=_V) / n
    np.testing.assert_array_less(np.abs(freq - probs[t]),
                                 4.5 * np.sqrt(probs[t] / n) + 1e-9)


def test_rewards_from_scores_shape_and_masking():
  prefix_scores = jnp.asarray(np.arange(3 * 2 * 2, dtype=np.float32)
                              .reshape(3, 2, 2))  # [T-1=3, N=2, B=2]
  final = jnp.asarray([100.0, 200.0])
  mask = jnp.asarray([[True] * 4, [True, True, False, False]])
  rewards = montecarlo.rewards_from_scores(prefix_scores, final, mask)
  means = np.asarray(prefix_scores).mean(axis=1).T  # [B, T-1]
  np.testing.assert_allclose(rewards[0], [*means[0], 100.0])
  # Sequence 1 ends at position 1: its own score there, zeros after.
  np.testing.assert_allclose(rewards[1], [means[1, 0], 200.0, 0.0, 0.0])


def test_monte_carlo_rewards_against_a_direct_computation():
  length, n = 5, 3
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)),
                     length=length,
                     sample_block=3)
  params = lstm.init_params(_CFG, jax.random.key(4))
  actions = jnp.asarray(
      np.random.default_rng(1).integers(0, _V, (2, length)), jnp.int32)
  mask = jnp.ones(actions.shape, jnp.bool_)
  score = lambda x: jnp.mean((x == 2).astype(jnp.float32), axis=-1)
  key = jax.random.key(5)
  rewards, completions = jax.jit(lambda p, a, m, k: (
      montecarlo.monte_carlo_rewards(env, p, a, m, score, n, k),
      montecarlo.prefix_completions(env, p, a, n, k)))(
          params, actions, mask, key)
  assert rewards.shape == (2, length)
  want = np.concatenate([np.asarray(score(completions)).mean(axis=1).T,
                         np.asarray(score(actions))[:, None]], axis=1)
  np.testing.assert_allclose(rewards, want, rtol=1e-6)


def test_length_one_has_no_prefixes():
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)), length=1)
  params = lstm.init_params(_CFG, jax.random.key(6))
  actions = jnp.zeros((2, 1), jnp.int32)
  assert montecarlo.prefix_completions(
      env, params, actions, 3, jax.random.key(0)).shape == (0, 3, 2, 1)


def test_rollouts_per_scan_must_divide():
  env = RecurrentEnv(RecurrentPolicy(lstm.LSTM(_CFG)), length=4)
  with pytest.raises(ValueError, match='rollouts_per_scan'):
    montecarlo.prefix_completions(env, None, jnp.zeros((1, 4), jnp.int32), 4,
                                  jax.random.key(0), rollouts_per_scan=3)
