"""Token-level DQN: targets, loss and gradient against NumPy; the replay
buffer inside the step; a learning test on the toy task."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import dqn
from jaxrlgen.algos import qlearning
from jaxrlgen.core import returns
from tests.algos import toy

RNG = np.random.default_rng(1)
Q = RNG.normal(size=(3, 4, 3)).astype(np.float32) * 2.0
TARGET_Q = RNG.normal(size=(3, 4, 3)).astype(np.float32)
ACTIONS = np.array([[0, 2, 1, 1], [2, 0, 0, 0], [1, 0, 0, 0]])
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
REWARDS = np.array([1.0, -0.5, 2.0], np.float32)


def np_targets(target_q, online_q, rewards, mask, gamma, n, double):
  """y_t by loops: the sequence reward at the last valid step, bootstrap
  from Q_tbar(s_{t+n}, a*) while s_{t+n} is a valid state."""
  b, t, _ = target_q.shape
  out = np.zeros((b, t))
  for i in range(b):
    last = mask[i].sum() - 1
    for s in range(last + 1):
      y = sum(gamma ** k * rewards[i] for k in range(n) if s + k == last)
      if s + n <= last:
        nxt = s + n
        a = np.argmax(online_q[i, nxt] if double else target_q[i, nxt])
        y += gamma ** n * target_q[i, nxt, a]
      out[i, s] = y
  return out


def np_dqn_loss(q, actions, targets, mask, loss, delta):
  err = targets - np.take_along_axis(q, actions[..., None], -1)[..., 0]
  if loss == 'huber':
    a = np.abs(err)
    per = np.where(a <= delta, 0.5 * err ** 2, delta * (a - 0.5 * delta))
  else:
    per = 0.5 * err ** 2
  return per[mask].mean()


class DQNTest(parameterized.TestCase):

  @parameterized.product(double=[False, True], n=[1, 2, 4], gamma=[1.0, 0.9])
  def test_targets(self, double, n, gamma):
    values = dqn.bootstrap_values(jnp.asarray(TARGET_Q),
                                  jnp.asarray(Q) if double else None)
    got = returns.n_step_returns(
        returns.terminal_rewards(jnp.asarray(REWARDS), jnp.asarray(MASK)),
        values, jnp.asarray(MASK), n=n, gamma=gamma)
    np.testing.assert_allclose(
        got, np_targets(TARGET_Q, Q, REWARDS, MASK, gamma, n, double),
        rtol=1e-6, atol=1e-6)

  def test_double_differs_from_max(self):
    # Where the online argmax is not the target argmax, double DQN takes the
    # target's value of the online choice, which is lower.
    plain = dqn.bootstrap_values(jnp.asarray(TARGET_Q))
    double = dqn.bootstrap_values(jnp.asarray(TARGET_Q), jnp.asarray(Q))
    self.assertTrue(np.all(np.asarray(double) <= np.asarray(plain)))
    self.assertTrue(np.any(np.asarray(double) < np.asarray(plain)))

  @parameterized.product(loss=['huber', 'mse'], delta=[0.5, 2.0],
                         jit=[False, True])
  def test_loss_and_gradient(self, loss, delta, jit):
    targets = np_targets(TARGET_Q, Q, REWARDS, MASK, 1.0, 1, True)

    def f(q):
      return dqn.dqn_loss(q, jnp.asarray(ACTIONS), jnp.asarray(targets),
                          jnp.asarray(MASK), loss=loss, delta=delta)[0]

    if jit:
      f = jax.jit(f)
    value, grad = jax.value_and_grad(f)(jnp.asarray(Q))
    ref = functools.partial(np_dqn_loss, actions=ACTIONS, targets=targets,
                            mask=MASK, loss=loss, delta=delta)
    np.testing.assert_allclose(value, ref(Q.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, Q),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_metrics(self):
    targets = np_targets(TARGET_Q, Q, REWARDS, MASK, 1.0, 1, True)
    _, m = dqn.dqn_loss(jnp.asarray(Q), jnp.asarray(ACTIONS),
                        jnp.asarray(targets), jnp.asarray(MASK))
    q_taken = np.take_along_axis(Q, ACTIONS[..., None], -1)[..., 0]
    np.testing.assert_allclose(m['q/mean'], q_taken[MASK].mean(), rtol=1e-6)
    np.testing.assert_allclose(m['q/target_mean'], targets[MASK].mean(),
                               rtol=1e-6)
    np.testing.assert_allclose(m['td_error/abs_mean'],
                               np.abs(targets - q_taken)[MASK].mean(),
                               rtol=1e-6)
    mse = np.square(targets - q_taken)[MASK].mean()
    np.testing.assert_allclose(m['td/explained'],
                               1 - mse / targets[MASK].var(), rtol=1e-5)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('dqn')
    config.n_step = 0
    with self.assertRaisesRegex(ValueError, 'config.algo.n_step'):
      algos.make(config)
    config.n_step, config.replay_capacity = 1, 0
    with self.assertRaisesRegex(ValueError, 'config.algo.replay_capacity'):
      algos.make(config)


def test_dqn_raises_reward_on_toy_task():
  """Double DQN with replay learns to emit token 5; margin: mean reward +0.5
  in 20 steps; the buffer fills by 32 sequences a step up to its capacity."""
  env, params, batch = toy.setup()
  config = algos.default_config('dqn')
  config.update(reward_scale=30.0, target_update=0.1, loss='mse', n_step=6,
                num_epochs=4, replay_capacity=256, replay_batch_size=64)
  algo = algos.make(config)
  state, records = toy.learn(algo, env, params, batch, optax.adam(3e-3), 20)
  assert state.algo_state['replay'].capacity == 256
  history = [r['reward/mean'] for r in records]
  sizes = [int(r['replay/size']) for r in records]
  assert sizes[:3] == [32, 64, 96] and sizes[-1] == 256, sizes
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.5, history
  # Every stored sequence is one the policy generated: its actions are masked
  # exactly after EOS or run to the budget.
  buf = state.algo_state['replay'].items['rollout']
  ended = np.cumsum(np.asarray(buf.actions) == 1, axis=1)
  after_eos = (ended - (np.asarray(buf.actions) == 1)) > 0
  np.testing.assert_array_equal(np.asarray(buf.mask), ~after_eos)
