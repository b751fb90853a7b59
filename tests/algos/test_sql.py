"""Soft Q-learning: the PCL losses and their gradient against NumPy; learning
on the toy task from on-policy samples and from a fixed offline dataset."""

import pytest
import dataclasses
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import qlearning
from jaxrlgen.core import returns
from jaxrlgen.algos import sql
from jaxrlgen.data import scored
from jaxrlgen.train import step as step_lib
from tests.algos import toy

RNG = np.random.default_rng(0)
Q = RNG.normal(size=(3, 4, 3)).astype(np.float32) * 2.0
TARGET_V = RNG.normal(size=(3, 4)).astype(np.float32) + 1.0
ACTIONS = np.array([[0, 2, 1, 1], [2, 0, 0, 0], [1, 0, 0, 0]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
REWARDS = np.array([1.0, -0.5, 2.0], np.float32)
TARGET_ADV = -np.abs(RNG.normal(size=(3, 4))).astype(np.float32)


def np_pcl(adv, values, rewards, mask, objective, gamma):
  """Eq. 9 / eq. 11 of Guo et al. 2021 written step by step with loops:
  per-token losses of advantages `adv` against state values `values`."""
  length = mask.sum(1)
  out = np.zeros(mask.shape)
  for i in range(mask.shape[0]):
    last = length[i] - 1
    for s in range(length[i]):
      r_s = rewards[i] if s == last else 0.0
      next_v = values[i, s + 1] if s < last else 0.0
      single = 0.5 * (-values[i, s] + gamma * next_v + r_s - adv[i, s]) ** 2
      path = sum(gamma ** l * adv[i, s + l] for l in range(last - s + 1))
      multi = 0.5 * (-values[i, s] + gamma ** (last - s) * rewards[i]
                     - path) ** 2
      out[i, s] = {'single': single, 'multi': multi,
                   'mixed': (single + multi) / 2}[objective]
  return out


def np_sql_loss(q, target_v, actions, rewards, mask, objective, gamma, tau,
                reverse_weight=0.0, target_adv=TARGET_ADV):
  v = tau * np.log(np.exp(q / tau).sum(-1))
  adv = np.take_along_axis(q, actions[..., None], -1)[..., 0] - v
  per_token = np_pcl(adv, target_v, rewards, mask, objective, gamma)
  # The swapped roles: target advantages, online values.
  per_token = ((1 - reverse_weight) * per_token + reverse_weight
               * np_pcl(target_adv, v, rewards, mask, objective, gamma))
  return per_token[mask].mean()


class SQLLossTest(parameterized.TestCase):

  @parameterized.product(objective=['single', 'multi', 'mixed'],
                         gamma=[1.0, 0.9], tau=[1.0, 0.5],
                         reverse_weight=[0.0, 0.3])
  def test_loss_and_gradient(self, objective, gamma, tau, reverse_weight):
    rewards_t = returns.terminal_rewards(jnp.asarray(REWARDS),
                                           jnp.asarray(MASK))

    def f(q):
      return sql.sql_loss(q, jnp.asarray(TARGET_V), jnp.asarray(ACTIONS),
                          rewards_t, jnp.asarray(MASK), objective=objective,
                          discount=gamma, tau=tau,
                          target_adv=jnp.asarray(TARGET_ADV),
                          reverse_weight=reverse_weight)[0]

    if objective == 'mixed':  # Jitted too (it holds both objectives).
      f = jax.jit(f)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(Q))
    ref = functools.partial(np_sql_loss, target_v=TARGET_V, actions=ACTIONS,
                            rewards=REWARDS, mask=MASK, objective=objective,
                            gamma=gamma, tau=tau,
                            reverse_weight=reverse_weight)
    np.testing.assert_allclose(loss, ref(Q.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, Q),
                               atol=2e-5, rtol=1e-4)
    # Masked steps' logits get no gradient.
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_loss_is_invariant_to_a_per_state_logit_shift(self):
    # The online side enters only through A = Q - V = tau log pi.
    rewards_t = returns.terminal_rewards(jnp.asarray(REWARDS),
                                           jnp.asarray(MASK))
    shift = RNG.normal(size=(3, 4, 1)).astype(np.float32) * 5
    loss = lambda q: sql.sql_loss(q, jnp.asarray(TARGET_V),
                                  jnp.asarray(ACTIONS), rewards_t,
                                  jnp.asarray(MASK))[0]
    np.testing.assert_allclose(loss(jnp.asarray(Q)),
                               loss(jnp.asarray(Q + shift)), rtol=1e-5)

  def test_metrics(self):
    rewards_t = returns.terminal_rewards(jnp.asarray(REWARDS),
                                           jnp.asarray(MASK))
    _, m = sql.sql_loss(jnp.asarray(Q), jnp.asarray(TARGET_V),
                        jnp.asarray(ACTIONS), rewards_t, jnp.asarray(MASK),
                        objective='single')
    q_taken = np.take_along_axis(Q, ACTIONS[..., None], -1)[..., 0]
    np.testing.assert_allclose(m['q/mean'], q_taken[MASK].mean(), rtol=1e-6)
    targets = np.array([[TARGET_V[0, 1], TARGET_V[0, 2], TARGET_V[0, 3], 1.0],
                        [TARGET_V[1, 1], -0.5, 0, 0], [2.0, 0, 0, 0]])
    np.testing.assert_allclose(m['q/target_mean'], targets[MASK].mean(),
                               rtol=1e-6)
    self.assertGreater(float(m['entropy']), 0.0)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('sql')
    config.objective = 'both'
    with self.assertRaisesRegex(ValueError, 'config.algo.objective'):
      algos.make(config)


def test_sql_raises_reward_on_toy_task():
  """On-policy SQL learns to emit token 5; margin: mean reward +0.3."""
  env, params, batch = toy.setup()
  config = algos.default_config('sql')
  config.reward_scale, config.target_update = 30.0, 0.05
  config.reverse_weight = 0.5
  algo = algos.make(config)
  state, records = toy.learn(algo, env, params, batch, optax.adam(3e-3), 30)
  history = [r['reward/mean'] for r in records]
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.3, history
  # The target network moved towards the online one, but lags it.
  online = jax.tree.leaves(state.params)[0]
  target = jax.tree.leaves(state.algo_state['target_params'])[0]
  start = jax.tree.leaves(params)[0]
  assert 0 < float(jnp.abs(target - start).sum()) < float(
      jnp.abs(online - start).sum())


@pytest.mark.slow
def test_sql_learns_from_a_fixed_offline_dataset():
  """Offline SQL on 4 x 16 scored samples of the initial (near-uniform)
  policy improves on it; margin: the learned policy's sampled reward exceeds
  the dataset's by 0.1."""
  env, params, batch = toy.setup()
  prompts = {k: np.asarray(v) for k, v in batch.items()}
  behaviour = dataclasses.replace(env, num_samples=16)
  dataset = scored.generate(params, prompts, jax.random.key(1), env=behaviour,
                            reward_fn=toy.fives_reward, chunk_prompts=2)
  assert dataset['completion'].shape == (4, 16, 6)
  config = algos.default_config('sql')
  config.reward_scale, config.target_update = 30.0, 0.05
  config.reverse_weight = 0.5
  algo = algos.make(config)
  tx = optax.adam(3e-3)
  state = toy.train_state(algo, env, params, batch, tx)
  step = jax.jit(functools.partial(step_lib.rl_step, env=behaviour,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx, actor=step_lib.replay),
                 donate_argnums=0)
  data = {k: jnp.asarray(v) for k, v in dataset.items()}
  for i in range(150):
    # Two of the four prompts' groups per step, as text_rl iterates them.
    rows = jnp.array([(2 * i) % 4, (2 * i + 1) % 4])
    state, metrics = step(state, jax.tree.map(lambda x: x[rows], data),
                          jax.random.key(i))
  # The data are fixed: the batch reward stays the near-uniform policy's.
  assert float(metrics['reward/mean']) < 0.2
  rollout = behaviour.rollout(state.params, batch, jax.random.key(99))
  learned = float(jnp.mean(toy.fives_reward(rollout, batch)))
  assert learned > float(dataset['reward'].mean()) + 0.1, (
      learned, dataset['reward'].mean())
