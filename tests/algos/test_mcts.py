"""MCTS expert iteration: loss and gradient against NumPy; a learning test."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.algos import mcts
from jaxrlgen.envs import search
from jaxrlgen.train import step as step_lib
from tests.algos import toy

_RNG = np.random.default_rng(0)
B, T, V = 3, 4, 5
LOGITS = _RNG.normal(size=(B, T, V)).astype(np.float32)
# Search distributions, some tokens never visited (weight exactly 0).
_W = _RNG.uniform(size=(B, T, V)) * (_RNG.uniform(size=(B, T, V)) > 0.3)
_W[..., 0] += 0.1
TARGETS = (_W / _W.sum(-1, keepdims=True)).astype(np.float32)
VALUES = _RNG.normal(size=(B, T)).astype(np.float32)
REWARDS = np.array([1.0, 0.0, 0.5], np.float32)
MASK = np.array([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]], bool)


def np_loss(logits, values, targets, returns, mask, policy_coef, value_coef):
  z = logits - logits.max(-1, keepdims=True)
  log_probs = z - np.log(np.exp(z).sum(-1, keepdims=True))
  ce = -(targets * log_probs).sum(-1)
  policy = (ce * mask).sum() / mask.sum()
  value = ((values - returns) ** 2 * mask).sum() / mask.sum()
  return policy_coef * policy + value_coef * value, policy, value


def test_sequence_returns():
  want = np.where(MASK, REWARDS[:, None], 0.0)
  np.testing.assert_allclose(mcts.sequence_returns(jnp.asarray(REWARDS),
                                                   jnp.asarray(MASK)), want)


def test_search_targets():
  actions = jnp.asarray(_RNG.integers(0, V, size=(B, T)))
  np.testing.assert_array_equal(
      mcts.search_targets(TARGETS, actions, V, 'tree_policy'), TARGETS)
  np.testing.assert_array_equal(
      mcts.search_targets(TARGETS, actions, V, 'chosen_action'),
      np.eye(V)[np.asarray(actions)])


@pytest.mark.parametrize('jit', [False, True])
@pytest.mark.parametrize('coefs', [(1.0, 1.0), (0.5, 2.0)])
def test_loss_and_gradient(coefs, jit):
  policy_coef, value_coef = coefs
  returns = np.where(MASK, REWARDS[:, None], 0.0).astype(np.float32)
  fn = functools.partial(mcts.expert_iteration_loss, policy_coef=policy_coef,
                         value_coef=value_coef)
  fn = jax.jit(fn) if jit else fn
  loss, metrics = fn(jnp.asarray(LOGITS), jnp.asarray(TARGETS),
                     jnp.asarray(VALUES), jnp.asarray(returns),
                     jnp.asarray(MASK))
  want, want_policy, want_value = np_loss(
      LOGITS.astype(np.float64), VALUES.astype(np.float64), TARGETS, returns,
      MASK, policy_coef, value_coef)
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(metrics['policy_loss'], want_policy, rtol=1e-5)
  np.testing.assert_allclose(metrics['value_loss'], want_value, rtol=1e-5)
  grad_logits, grad_values = jax.grad(
      lambda l, v: fn(l, jnp.asarray(TARGETS), v, jnp.asarray(returns),
                      jnp.asarray(MASK))[0], argnums=(0, 1))(
                          jnp.asarray(LOGITS), jnp.asarray(VALUES))
  ref = lambda l, v: np_loss(l, v, TARGETS, returns, MASK, policy_coef,
                             value_coef)[0]
  np.testing.assert_allclose(
      grad_logits, toy.finite_difference(lambda l: ref(l, VALUES), LOGITS),
      atol=1e-5)
  np.testing.assert_allclose(
      grad_values, toy.finite_difference(lambda v: ref(LOGITS, v), VALUES),
      atol=1e-5)


def test_config_errors_name_the_field():
  config = algos.default_config('mcts_expert_iteration')
  config.policy_target = 'visits'
  with pytest.raises(ValueError, match='config.algo.policy_target'):
    algos.make(config)


@pytest.mark.slow
def test_expert_iteration_raises_greedy_reward_on_toy_task():
  """A tiny policy distils Gumbel MuZero searches (8 simulations per token)
  on the fives task; margin: the greedy decode of the distilled policy gains
  +0.4 reward (it starts at 1/3, the optimum is 1)."""
  env, params, batch = toy.setup(num_samples=1, num_prompts=8,
                                 max_new_tokens=3, value_head=True)
  reward_fn = toy.fives_reward
  sampler = search.MCTSSampler(env, reward_fn, search.MCTSConfig(
      policy='gumbel_muzero', num_simulations=8, max_num_considered_actions=4))
  algo = algos.make(algos.default_config('mcts_expert_iteration'))
  tx = optax.adam(3e-3)
  state = toy.train_state(algo, env, params, batch, tx)

  rl_step = jax.jit(lambda state, key: step_lib.rl_step(
      state, batch, key, env=env, reward_fn=reward_fn, algo=algo, tx=tx,
      actor=functools.partial(step_lib.sample, env=sampler,
                              reward_fn=reward_fn)))

  @jax.jit
  def greedy_reward(params):
    rollout = env.greedy().rollout(params, batch, jax.random.key(0))
    return jnp.mean(reward_fn(rollout, batch))

  before = float(greedy_reward(state.params))
  for i in range(20):
    state, metrics = rl_step(state, jax.random.key(i))
  after = float(greedy_reward(state.params))
  assert before < 0.4
  assert after > before + 0.4, (before, after)
  assert float(metrics['value_loss']) >= 0.0
  assert 'search/entropy' in metrics
