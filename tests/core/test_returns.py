"""Returns and advantages against NumPy loops on a hand-made masked batch."""

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core import returns

# Three trajectories of T = 5: one runs to the horizon, one ends at step 2,
# one ends at its first step. Padded values are NaN: they must not leak.
MASK = np.array([[1, 1, 1, 1, 1],
                 [1, 1, 1, 0, 0],
                 [1, 0, 0, 0, 0]], bool)
REWARDS = np.array([[0.1, -0.2, 0.0, 0.3, 1.0],
                    [0.0, 0.5, -1.0, 9.0, 9.0],
                    [2.0, 9.0, 9.0, 9.0, 9.0]], np.float32)
VALUES = np.array([[0.4, 0.1, -0.3, 0.2, 0.6],
                   [0.2, -0.4, 0.7, np.nan, np.nan],
                   [-0.5, np.nan, np.nan, np.nan, np.nan]], np.float32)
BOOTSTRAP = np.array([0.8, 5.0, 5.0], np.float32)  # Used by row 0 only.
T = MASK.shape[1]


def np_discounted(r, mask, gamma, bootstrap=None):
  out = np.zeros_like(r, np.float64)
  for b, length in enumerate(mask.sum(1)):
    for t in range(length):
      g = sum(gamma**k * r[b, t + k] for k in range(length - t))
      if bootstrap is not None and length == T:
        g += gamma**(T - t) * bootstrap[b]
      out[b, t] = g
  return out


def np_n_step(r, v, mask, n, gamma, bootstrap=None):
  """The definition: n rewards, then gamma^n V(s_{t+n}), cut at the end."""
  out = np.zeros_like(r, np.float64)
  for b, length in enumerate(mask.sum(1)):
    for t in range(length):
      g = sum(gamma**k * r[b, t + k] for k in range(min(n, length - t)))
      if t + n < length:
        g += gamma**n * v[b, t + n]
      elif bootstrap is not None and length == T:
        g += gamma**(T - t) * bootstrap[b]
      out[b, t] = g
  return out


def np_gae(r, v, mask, gamma, lambda_, bootstrap=None):
  out = np.zeros_like(r, np.float64)
  for b, length in enumerate(mask.sum(1)):
    advantage = 0.0
    for t in reversed(range(length)):
      if t + 1 < length:
        v_next, cont = v[b, t + 1], 1.0
      elif bootstrap is not None and length == T:
        v_next, cont = bootstrap[b], 1.0
      else:
        v_next, cont = 0.0, 0.0
      delta = r[b, t] + gamma * cont * v_next - v[b, t]
      advantage = delta + gamma * lambda_ * cont * advantage
      out[b, t] = advantage
  return out


def _bootstrap(use):
  return jnp.asarray(BOOTSTRAP) if use else None


class ReturnsTest(parameterized.TestCase):

  @parameterized.product(bootstrap=[False, True], jit=[False, True])
  def test_discounted_returns(self, bootstrap, jit, gamma=0.9):
    fn = lambda r, m, bv: returns.discounted_returns(r, m, gamma=gamma,
                                                     bootstrap_value=bv)
    fn = jax.jit(fn) if jit else fn
    got = fn(jnp.asarray(REWARDS), jnp.asarray(MASK), _bootstrap(bootstrap))
    want = np_discounted(REWARDS, MASK, gamma,
                         BOOTSTRAP if bootstrap else None)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  @parameterized.product(n=[1, 3, 7], bootstrap=[False, True])
  def test_n_step_returns(self, n, bootstrap, gamma=0.9):
    got = returns.n_step_returns(
        jnp.asarray(REWARDS), jnp.asarray(VALUES), jnp.asarray(MASK), n=n,
        gamma=gamma, bootstrap_value=_bootstrap(bootstrap))
    want = np_n_step(REWARDS, VALUES, MASK, n, gamma,
                     BOOTSTRAP if bootstrap else None)
    self.assertFalse(np.any(np.isnan(got)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  @parameterized.parameters((0.9, 0.95, False, False), (0.9, 0.95, True, True),
                            (1.0, 0.95, False, True), (0.9, 0.0, True, False),
                            (0.9, 1.0, False, False))
  def test_gae(self, gamma, lambda_, bootstrap, jit):
    fn = lambda r, v, m, bv: returns.generalized_advantage_estimation(
        r, v, m, gamma=gamma, lambda_=lambda_, bootstrap_value=bv)
    fn = jax.jit(fn) if jit else fn
    got = fn(jnp.asarray(REWARDS), jnp.asarray(VALUES), jnp.asarray(MASK),
             _bootstrap(bootstrap))
    want = np_gae(REWARDS, VALUES, MASK, gamma, lambda_,
                  BOOTSTRAP if bootstrap else None)
    self.assertFalse(np.any(np.isnan(got)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

  def test_identities_between_estimators(self):
    r, v, m = jnp.asarray(REWARDS), jnp.asarray(VALUES), jnp.asarray(MASK)
    v0 = jnp.where(m, v, 0.0)
    gae = lambda lam: returns.generalized_advantage_estimation(
        r, v, m, gamma=0.9, lambda_=lam)
    # GAE(1) + V is the Monte-Carlo return; GAE(0) + V the one-step target.
    np.testing.assert_allclose(gae(1.0) + v0,
                               returns.discounted_returns(r, m, gamma=0.9),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        gae(0.0) + v0, returns.n_step_returns(r, v, m, n=1, gamma=0.9),
        rtol=1e-5, atol=1e-6)
    # n >= T reaches the end of every trajectory: Monte-Carlo again.
    np.testing.assert_allclose(
        returns.n_step_returns(r, v, m, n=T, gamma=0.9),
        returns.discounted_returns(r, m, gamma=0.9), rtol=1e-5, atol=1e-6)

  def test_terminal_rewards(self):
    got = returns.terminal_rewards(jnp.asarray([1.0, -2.0, 3.0]),
                                   jnp.asarray(MASK))
    want = np.zeros((3, T), np.float32)
    want[0, 4], want[1, 2], want[2, 0] = 1.0, -2.0, 3.0
    np.testing.assert_array_equal(got, want)

  def test_token_rewards_keep_step_rewards_and_the_rest_at_the_end(self):
    # A non-prefix mask (a multi-turn stream: model tokens around masked
    # observation slots); step rewards at masked slots are dropped.
    mask = np.array([[1, 1, 0, 0, 1], [1, 0, 1, 0, 0]], bool)
    steps = np.array([[0.0, 0.5, 7.0, 0.0, 0.25], [0.3, 0.0, 0.0, 0.0, 0.0]],
                     np.float32)
    scores = np.array([2.0, -1.0], np.float32)  # Include the step rewards.
    got = returns.token_rewards(jnp.asarray(scores), jnp.asarray(mask),
                                jnp.asarray(steps))
    want = np.where(mask, steps, 0.0)
    want[0, 4] += 2.0 - 0.75
    want[1, 2] += -1.0 - 0.3
    np.testing.assert_allclose(got, want, rtol=1e-6)
    np.testing.assert_allclose(np.sum(got, axis=1), scores, rtol=1e-6)
    np.testing.assert_array_equal(
        returns.token_rewards(jnp.asarray(scores), jnp.asarray(mask)),
        returns.terminal_rewards(jnp.asarray(scores), jnp.asarray(mask)))

  def test_explained_variance(self):
    targets = np.where(MASK, REWARDS, 0.0)
    values = np.where(MASK, VALUES, 0.0)
    want = 1 - np.var((targets - values)[MASK]) / np.var(targets[MASK])
    got = returns.explained_variance(jnp.asarray(VALUES), jnp.asarray(targets),
                                     jnp.asarray(MASK))
    np.testing.assert_allclose(got, want, rtol=1e-5)
    perfect = returns.explained_variance(jnp.asarray(targets),
                                         jnp.asarray(targets),
                                         jnp.asarray(MASK))
    np.testing.assert_allclose(perfect, 1.0)

  def test_bad_shapes_fail_at_the_call(self):
    with self.assertRaises(AssertionError):
      returns.generalized_advantage_estimation(
          jnp.asarray(REWARDS), jnp.asarray(VALUES)[:, :4], jnp.asarray(MASK),
          gamma=1.0, lambda_=0.9)
    with self.assertRaisesRegex(ValueError, 'n=0'):
      returns.n_step_returns(jnp.asarray(REWARDS), jnp.asarray(VALUES),
                             jnp.asarray(MASK), n=0, gamma=1.0)


if __name__ == '__main__':
  from absl.testing import absltest
  absltest.main()
