"""Shared value-based target math against NumPy loops."""

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.algos import base
from jaxrlgen.algos import qlearning
from jaxrlgen.core import returns

# Three sequences of four steps: full length, ended after two, after one.
MASK = np.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
REWARDS_T = np.array([[0.1, -0.2, 0.3, 1.0], [0.5, 2.0, 9.0, 9.0],
                      [-1.0, 9.0, 9.0, 9.0]], np.float32)
VALUES_T = np.array([[1.0, 2.0, 3.0, 4.0], [-1.0, -2.0, 7.0, 7.0],
                     [5.0, 7.0, 7.0, 7.0]], np.float32)


def np_n_step(r, v, mask, gamma, n):
  """Loop reference: rewards of valid steps, bootstrap only from valid ones."""
  b, t = r.shape
  out = np.zeros((b, t))
  for i in range(b):
    for s in range(t):
      if not mask[i, s]:
        continue
      total = 0.0
      for k in range(n):
        if s + k < t and mask[i, s + k]:
          total += gamma ** k * r[i, s + k]
      if s + n < t and mask[i, s + n]:
        total += gamma ** n * v[i, s + n]
      out[i, s] = total
  return out


class QLearningTest(parameterized.TestCase):

  def test_values(self):
    q = np.random.default_rng(0).normal(size=(2, 3, 5)).astype(np.float32) * 3
    np.testing.assert_allclose(qlearning.hard_value(q), q.max(-1))
    for tau in (1.0, 0.5):
      ref = tau * np.log(np.exp(q.astype(np.float64) / tau).sum(-1))
      np.testing.assert_allclose(qlearning.soft_value(jnp.asarray(q), tau),
                                 ref, rtol=1e-5)
    # The soft value tends to the hard one as tau -> 0, from above.
    soft = qlearning.soft_value(jnp.asarray(q), 1e-3)
    np.testing.assert_allclose(soft, q.max(-1), atol=1e-2)
    self.assertTrue(np.all(np.asarray(qlearning.soft_value(q, 1.0))
                           >= q.max(-1)))
    actions = np.array([[0, 4, 2], [1, 1, 3]])
    np.testing.assert_array_equal(
        qlearning.action_values(jnp.asarray(q), jnp.asarray(actions)),
        np.take_along_axis(q, actions[..., None], -1)[..., 0])

  def test_sequence_rewards_land_on_the_last_valid_step(self):
    got = returns.terminal_rewards(jnp.array([1.0, 2.0, 3.0]),
                                     jnp.asarray(MASK))
    want = np.zeros((3, 4))
    want[0, 3], want[1, 1], want[2, 0] = 1.0, 2.0, 3.0
    np.testing.assert_array_equal(got, want)
    # An all-masked row (a batch filler) gets no reward anywhere.
    empty = returns.terminal_rewards(jnp.array([5.0]),
                                       jnp.zeros((1, 4), bool))
    np.testing.assert_array_equal(empty, np.zeros((1, 4)))

  @parameterized.product(n=[1, 2, 3, 4, 6], gamma=[1.0, 0.9], jit=[False, True])
  def test_n_step_targets(self, n, gamma, jit):
    f = lambda r, v, m: returns.n_step_returns(r, v, m, n=n, gamma=gamma)
    if jit:
      f = jax.jit(f)
    got = f(jnp.asarray(REWARDS_T), jnp.asarray(VALUES_T), jnp.asarray(MASK))
    np.testing.assert_allclose(got, np_n_step(REWARDS_T, VALUES_T, MASK,
                                              gamma, n), rtol=1e-6, atol=1e-6)

  def test_one_step_terminal_handling_by_hand(self):
    got = np.asarray(returns.n_step_returns(
        jnp.asarray(REWARDS_T), jnp.asarray(VALUES_T), jnp.asarray(MASK), n=1,
        gamma=0.5))
    # Row 1 ends at step 1: its target there is the bare reward, not
    # bootstrapped from the (garbage) value 7 after it.
    np.testing.assert_allclose(got[1], [0.5 + 0.5 * -2.0, 2.0, 0.0, 0.0])
    np.testing.assert_allclose(got[2], [-1.0, 0.0, 0.0, 0.0])
    np.testing.assert_allclose(got[0], [0.1 + 1.0, -0.2 + 1.5, 0.3 + 2.0, 1.0],
                               rtol=1e-6)

  @parameterized.parameters(1.0, 0.8)
  def test_discounted_suffix_sum(self, gamma):
    got = returns.discounted_returns(jnp.asarray(REWARDS_T),
                                     jnp.asarray(MASK), gamma=gamma)
    # A suffix sum is the n-step target with n >= T and zero values.
    want = np_n_step(REWARDS_T, np.zeros_like(VALUES_T), MASK, gamma, 4)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)

  def test_td_fit_against_a_constant_predictor(self):
    q = VALUES_T * 0.5 + 0.25
    got = qlearning.td_fit_metrics(jnp.asarray(q), jnp.asarray(REWARDS_T),
                                   jnp.asarray(MASK))
    last = np.zeros_like(MASK)
    last[[0, 1, 2], [3, 1, 0]] = True
    for prefix, where in (('td/', MASK), ('td/last_', last)):
      mse = np.mean((REWARDS_T - q)[where] ** 2)
      var = np.var(REWARDS_T[where])
      np.testing.assert_allclose(got[prefix + 'mse'], mse, rtol=1e-6)
      np.testing.assert_allclose(got[prefix + 'target_var'], var, rtol=1e-6)
      np.testing.assert_allclose(got[prefix + 'explained'], 1 - mse / var,
                                 rtol=1e-5)
    # The targets' own mean explains nothing; the targets themselves all.
    mean = np.full_like(q, REWARDS_T[MASK].mean())
    fit = qlearning.td_fit_metrics(jnp.asarray(mean), jnp.asarray(REWARDS_T),
                                   jnp.asarray(MASK))
    np.testing.assert_allclose(fit['td/explained'], 0.0, atol=1e-6)
    exact = qlearning.td_fit_metrics(jnp.asarray(REWARDS_T),
                                     jnp.asarray(REWARDS_T), jnp.asarray(MASK))
    np.testing.assert_allclose(exact['td/explained'], 1.0)

  def test_init_algo_state_passes_what_is_asked(self):
    params = {'w': jnp.ones(2)}
    plain = base.Algorithm(name='x', prepare=None, loss=None)
    self.assertEqual(base.init_algo_state(plain, params), {})
    wants = base.Algorithm(name='y', prepare=None, loss=None,
                           init_state=lambda params: {'t': params})
    self.assertIs(base.init_algo_state(wants, params)['t'], params)
    needs_rollout = base.Algorithm(name='z', prepare=None, loss=None,
                                   init_state=lambda params, rollout: {})
    with self.assertRaisesRegex(ValueError, 'rollout'):
      base.init_algo_state(needs_rollout, params)
