"""V-trace against NumPy: the paper's sum formula with truncation active, and
its reduction to TD(lambda) returns on-policy."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core import vtrace

B, T = 5, 6
# Prefix masks of lengths 6 (cut off: bootstraps), 4, 1, 0 and 3.
LENGTHS = np.array([6, 4, 1, 0, 3])
MASK = np.arange(T)[None, :] < LENGTHS[:, None]


def random_inputs(seed, log_rho_scale=1.0):
  rng = np.random.default_rng(seed)
  values = rng.normal(size=(B, T)).astype(np.float32)
  rewards = rng.normal(size=(B, T)).astype(np.float32)
  log_rhos = (log_rho_scale * rng.normal(size=(B, T))).astype(np.float32)
  bootstrap = rng.normal(size=(B,)).astype(np.float32)
  return values, rewards, log_rhos, bootstrap


def np_vtrace(values, rewards, log_rhos, lengths, bootstrap, discount,
              lambda_, rho_bar, c_bar):
  """Espeholt et al. 2018, eq. (1), summed term by term (float64)."""
  vs = np.zeros((B, T))
  adv = np.zeros((B, T))
  for b, n in enumerate(lengths):
    v = values[b].astype(np.float64)
    # V(x_n) after the last valid step: a bootstrap if the array cut the
    # trajectory off, 0 if it ended.
    v_ext = np.append(v[:n], bootstrap[b] if n == T else 0.0)
    rho = np.exp(log_rhos[b].astype(np.float64))
    clipped = np.minimum(rho_bar, rho)
    c = lambda_ * np.minimum(c_bar, rho)
    delta = [clipped[t] * (rewards[b, t] + discount * v_ext[t + 1] - v_ext[t])
             for t in range(n)]
    for s in range(n):
      total, trace = 0.0, 1.0
      for t in range(s, n):
        total += discount ** (t - s) * trace * delta[t]
        trace *= c[t]
      vs[b, s] = v_ext[s] + total
    vs_ext = np.append(vs[b, :n], v_ext[n])
    for s in range(n):
      adv[b, s] = clipped[s] * (rewards[b, s] + discount * vs_ext[s + 1]
                                - v_ext[s])
  return vs, adv


def np_lambda_returns(values, rewards, lengths, bootstrap, discount, lambda_):
  """G_s = r_s + gamma ((1 - lambda) V(x_{s+1}) + lambda G_{s+1}) (Sutton &
  Barto 12.3), recursively from the end (float64)."""
  out = np.zeros((B, T))
  for b, n in enumerate(lengths):
    g = bootstrap[b] if n == T else 0.0
    next_v = g
    for s in reversed(range(n)):
      g = rewards[b, s] + discount * ((1 - lambda_) * next_v + lambda_ * g)
      out[b, s] = g
      next_v = values[b, s]
  return out


class VTraceTest(parameterized.TestCase):

  @parameterized.product(
      hyper=[dict(discount=1.0, lambda_=1.0, rho_bar=1.0, c_bar=1.0),
             dict(discount=0.9, lambda_=0.8, rho_bar=1.5, c_bar=0.7),
             dict(discount=0.95, lambda_=1.0, rho_bar=0.8, c_bar=0.5)],
      jit=[False, True])
  def test_matches_paper_sum_with_truncation(self, hyper, jit):
    values, rewards, log_rhos, bootstrap = random_inputs(0)
    rho = np.exp(log_rhos)[MASK]
    # The inputs do exercise both truncations.
    self.assertGreater(np.mean(rho > hyper['rho_bar']), 0.2)
    self.assertGreater(np.mean(rho > hyper['c_bar']), 0.2)
    fn = functools.partial(vtrace.vtrace, **hyper)
    if jit:
      fn = jax.jit(fn)
    out = fn(jnp.asarray(values), jnp.asarray(rewards), jnp.asarray(log_rhos),
             jnp.asarray(MASK), bootstrap_value=jnp.asarray(bootstrap))
    vs, adv = np_vtrace(values, rewards, log_rhos, LENGTHS, bootstrap, **hyper)
    np.testing.assert_allclose(out.vs, vs, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.pg_advantages, adv, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        out.clipped_rhos, np.where(MASK, np.minimum(hyper['rho_bar'],
                                                    np.exp(log_rhos)), 0),
        rtol=1e-6)

  @parameterized.product(lambda_=[1.0, 0.7, 0.0], discount=[1.0, 0.9],
                         rho_c_bar=[(1.0, 1.0), (2.0, 1.5)])
  def test_on_policy_is_td_lambda(self, lambda_, discount, rho_c_bar):
    values, rewards, _, bootstrap = random_inputs(1)
    out = vtrace.vtrace(jnp.asarray(values), jnp.asarray(rewards),
                        jnp.zeros((B, T)), jnp.asarray(MASK),
                        bootstrap_value=jnp.asarray(bootstrap),
                        discount=discount, lambda_=lambda_,
                        rho_bar=rho_c_bar[0], c_bar=rho_c_bar[1])
    returns = np_lambda_returns(values, rewards, LENGTHS, bootstrap, discount,
                                lambda_)
    np.testing.assert_allclose(out.vs, returns, rtol=1e-5, atol=1e-5)
    # A_s = r_s + gamma G_{s+1} - V(x_s); G after the end is V(x_n).
    next_returns = np.zeros((B, T))
    for b, n in enumerate(LENGTHS):
      tail = bootstrap[b] if n == T else 0.0
      next_returns[b, :n] = np.append(returns[b, 1:n], tail)
    adv = np.where(MASK, rewards + discount * next_returns - values, 0.0)
    np.testing.assert_allclose(out.pg_advantages, adv, rtol=1e-5, atol=1e-5)
    if lambda_ == 1.0 and discount == 1.0:
      # The n-step return to the end: the sum of the remaining rewards.
      tails = np.cumsum((rewards * MASK)[:, ::-1], axis=1)[:, ::-1]
      tails = tails + np.where(LENGTHS == T, bootstrap, 0.0)[:, None]
      np.testing.assert_allclose(out.vs, np.where(MASK, tails, 0.0),
                                 rtol=1e-5, atol=1e-5)

  def test_masked_steps_are_ignored_and_zero(self):
    values, rewards, log_rhos, bootstrap = random_inputs(2)
    garbage = lambda x, v: jnp.where(jnp.asarray(MASK), jnp.asarray(x), v)
    clean = vtrace.vtrace(garbage(values, 0.0), garbage(rewards, 0.0),
                          garbage(log_rhos, 0.0), jnp.asarray(MASK))
    dirty = vtrace.vtrace(garbage(values, jnp.nan), garbage(rewards, jnp.inf),
                          garbage(log_rhos, 1e4), jnp.asarray(MASK))
    for a, b in zip(clean, dirty):
      np.testing.assert_array_equal(a, b)
      self.assertTrue(np.all(np.asarray(a)[~MASK] == 0))

  def test_targets_stop_gradients(self):
    values, rewards, log_rhos, _ = random_inputs(3)

    def total(values, log_rhos, stop):
      out = vtrace.vtrace(values, jnp.asarray(rewards), log_rhos,
                          jnp.asarray(MASK), stop_target_gradients=stop)
      return jnp.sum(out.vs) + jnp.sum(out.pg_advantages)

    args = (jnp.asarray(values), jnp.asarray(log_rhos))
    stopped = jax.grad(total, argnums=(0, 1))(*args, True)
    flowing = jax.grad(total, argnums=(0, 1))(*args, False)
    for g in stopped:
      self.assertTrue(np.all(np.asarray(g) == 0))
    for g in flowing:
      self.assertGreater(float(jnp.sum(jnp.abs(g))), 0.0)
      self.assertTrue(np.all(np.isfinite(g)))
