"""Discrete SAC: critic targets, actor and temperature losses against NumPy
(values and finite-difference gradients); the critics' initialisation; a
learning test on the toy task."""

import pytest
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import base
from jaxrlgen.algos import sac
from jaxrlgen.core.types import Rollout
from tests.algos import toy

# Three sequences of three steps over a 4-token vocabulary; the second ends
# at step 1, the third at step 0.
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
REWARDS = np.array([1.0, -0.5, 2.0], np.float32)
RNG = np.random.default_rng(0)
LOGITS = RNG.normal(size=(3, 3, 4)).astype(np.float32)
Q = RNG.normal(size=(3, 3, 4)).astype(np.float32)
Q_TAKEN = RNG.normal(size=(2, 3, 3)).astype(np.float32)
TARGETS = RNG.normal(size=(3, 3)).astype(np.float32)


def np_log_softmax(x):
  x = x - x.max(-1, keepdims=True)
  return x - np.log(np.exp(x).sum(-1, keepdims=True))


def np_soft_values(q, logp, alpha):
  return (np.exp(logp) * (q - alpha * logp)).sum(-1)


def np_targets(q, logp, rewards, mask, alpha, gamma, n=1):
  """y_t by explicit loops over sequences and steps."""
  v = np_soft_values(q, logp, alpha)
  y = np.zeros(mask.shape)
  for b in range(mask.shape[0]):
    length = mask[b].sum()
    for t in range(length):
      if t + n >= length:  # The terminal reward arrives within n steps.
        y[b, t] = gamma ** (length - 1 - t) * rewards[b]
      else:
        y[b, t] = gamma ** n * v[b, t + n]
  return y


def np_actor_loss(logits, q, mask, alpha):
  logp = np_log_softmax(logits)
  per_state = (np.exp(logp) * (alpha * logp - q)).sum(-1)
  return per_state[mask].mean()


def np_critic_loss(q_taken, targets, mask):
  return 0.5 * sum(((q - targets) ** 2)[mask].mean() for q in q_taken)


class SACReferenceTest(parameterized.TestCase):

  @parameterized.product(alpha=[0.0, 0.3], gamma=[1.0, 0.9], n=[1, 2])
  def test_soft_values_and_critic_targets(self, alpha, gamma, n):
    logp = np_log_softmax(LOGITS)
    got_v = sac.soft_state_values(jnp.asarray(Q), jnp.asarray(logp), alpha)
    np.testing.assert_allclose(got_v, np_soft_values(Q, logp, alpha),
                               rtol=1e-5, atol=1e-6)
    got = sac.critic_targets(jnp.asarray(Q), jnp.asarray(logp),
                             jnp.asarray(REWARDS), jnp.asarray(MASK),
                             alpha=alpha, gamma=gamma, n_step=n)
    np.testing.assert_allclose(got, np_targets(Q, logp, REWARDS, MASK, alpha,
                                               gamma, n), rtol=1e-5, atol=1e-6)

  def test_critic_loss_and_gradient(self):
    f = lambda q: sac.critic_loss(q, jnp.asarray(TARGETS),
                                  jnp.asarray(MASK))[0]
    loss, grad = jax.value_and_grad(f)(jnp.asarray(Q_TAKEN))
    ref = lambda q: np_critic_loss(q, TARGETS, MASK)
    np.testing.assert_allclose(loss, ref(Q_TAKEN), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, Q_TAKEN),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[:, ~MASK] == 0))
    _, metrics = sac.critic_loss(jnp.asarray(Q_TAKEN), jnp.asarray(TARGETS),
                                 jnp.asarray(MASK))
    np.testing.assert_allclose(metrics['q/mean'], Q_TAKEN.mean(0)[MASK].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(
        metrics['td_error/abs_mean'],
        np.abs(Q_TAKEN - TARGETS).mean(0)[MASK].mean(), rtol=1e-5)

  @parameterized.parameters(0.0, 0.2, 1.0)
  def test_actor_loss_and_gradient_through_softmax(self, alpha):
    """The exact expectation's gradient w.r.t. the logits; Q has none."""

    def f(logits, q):
      logp = jax.nn.log_softmax(logits, axis=-1)
      return sac.actor_loss(logp, q, jnp.asarray(MASK), alpha=alpha)[0]

    loss, (grad, q_grad) = jax.value_and_grad(f, argnums=(0, 1))(
        jnp.asarray(LOGITS), jnp.asarray(Q))
    ref = lambda x: np_actor_loss(x, Q, MASK, alpha)
    np.testing.assert_allclose(loss, ref(LOGITS.astype(np.float64)),
                               rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, LOGITS),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(q_grad) == 0))
    _, metrics = sac.actor_loss(jnp.asarray(np_log_softmax(LOGITS)),
                                jnp.asarray(Q), jnp.asarray(MASK), alpha=alpha)
    p = np.exp(np_log_softmax(LOGITS))
    np.testing.assert_allclose(
        metrics['entropy'], (-(p * np.log(p)).sum(-1))[MASK].mean(), rtol=1e-5)

  def test_temperature_loss_moves_alpha_toward_the_target_entropy(self):
    entropy = jnp.asarray(RNG.uniform(0.5, 1.5, size=(3, 3)), jnp.float32)
    mean_h = float(np.asarray(entropy)[MASK].mean())
    for target in (0.2, 2.0):
      # The paper's case: D = -H, target = -H_target.
      loss_fn = lambda la: sac.temperature_loss(
          la, -entropy, jnp.asarray(MASK), target=-target)[0]
      loss, grad = jax.value_and_grad(loss_fn)(jnp.float32(np.log(0.1)))
      np.testing.assert_allclose(loss, np.log(0.1) * (mean_h - target),
                                 rtol=1e-5)
      np.testing.assert_allclose(grad, mean_h - target, rtol=1e-5)
      # Gradient descent lowers alpha when the policy is more random than
      # the target, raises it otherwise.
      self.assertEqual(np.sign(-grad), np.sign(target - mean_h))

  @parameterized.parameters(0.0, 0.3)
  def test_reference_prior_is_kl_regularised(self, alpha):
    """log pi -> log pi - log pi_ref in the value and the actor; with Q = 0
    the actor's minimum is pi_ref itself (zero gradient there)."""
    logp = np_log_softmax(LOGITS)
    log_ref = np_log_softmax(Q)  # Any normalised distribution.
    got = sac.soft_state_values(jnp.asarray(Q), jnp.asarray(logp), alpha,
                                jnp.asarray(log_ref))
    want = (np.exp(logp) * (Q - alpha * (logp - log_ref))).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def f(logits, q):
      return sac.actor_loss(jax.nn.log_softmax(logits, axis=-1), q,
                            jnp.asarray(MASK), alpha=0.5,
                            log_prior=jnp.asarray(log_ref))[0]

    zero_q = jnp.zeros_like(jnp.asarray(Q))
    grad_at_ref = jax.grad(f)(jnp.asarray(log_ref), zero_q)
    np.testing.assert_allclose(grad_at_ref, 0.0, atol=1e-6)
    ref = lambda x: (np.exp(np_log_softmax(x)) * (
        0.5 * (np_log_softmax(x) - log_ref) - Q)).sum(-1)[MASK].mean()
    np.testing.assert_allclose(jax.grad(f)(jnp.asarray(LOGITS), jnp.asarray(Q)),
                               toy.finite_difference(ref, LOGITS), atol=1e-5)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('sac')
    config.tau = 1.5
    with self.assertRaisesRegex(ValueError, 'config.algo.tau'):
      algos.make(config)
    config = algos.default_config('sac')
    config.replay_batch_size = 10
    config.num_minibatches = 4
    with self.assertRaisesRegex(ValueError, 'config.algo.replay_batch_size'):
      algos.make(config)
    config = algos.default_config('sac')
    config.prior = 'gaussian'
    with self.assertRaisesRegex(ValueError, 'config.algo.prior'):
      algos.make(config)


def test_critics_start_from_the_policy_with_zero_q():
  env, params, batch = toy.setup()
  config = algos.default_config('sac')
  algo = algos.make(config)
  trainable = algo.init_params(env, params, jax.random.key(1))
  assert algo.policy_params(trainable) is params
  for name in sac.CRITICS:
    critic = trainable[name]
    assert 'unembed' not in critic['trunk']
    np.testing.assert_array_equal(critic['trunk']['embed']['embedding'],
                                  params['embed']['embedding'])
  rollout = Rollout(context={'tokens': jnp.full((2, 3), 7, jnp.int32),
                             'mask': jnp.ones((2, 3), bool)},
                    actions=jnp.full((2, 6), 5, jnp.int32),
                    logp=jnp.zeros((2, 6)), mask=jnp.ones((2, 6), bool))
  q_values = jax.jit(functools.partial(sac.critic_q_values, env))
  q = q_values(trainable['q1'], rollout)
  assert q.shape == (2, 6, 16)
  np.testing.assert_array_equal(q, 0.0)
  # critic_init='policy': softmax(Q / alpha) is the LM's own policy.
  config.critic_init = 'policy'
  trainable = algos.make(config).init_params(env, params, jax.random.key(1))
  q = q_values(trainable['q2'], rollout)
  np.testing.assert_allclose(
      jax.nn.log_softmax(q / config.init_alpha, axis=-1),
      jax.jit(functools.partial(sac.policy_logprobs, env))(params, rollout),
      atol=1e-4)
  state = base.init_algo_state(algo, trainable, rollout=rollout)
  assert state['replay'].capacity == config.replay_capacity
  assert set(state['target_params']) == set(sac.CRITICS)


@pytest.mark.slow
def test_sac_raises_reward_on_toy_task():
  """A tiny policy learns to emit token 5; margin: mean reward +0.25."""
  env, params, batch = toy.setup()
  config = algos.default_config('sac')
  config.replay_batch_size = 32
  config.replay_capacity = 256
  algo = algos.make(config)
  _, records = toy.learn(algo, env, params, batch, optax.adam(3e-3), 50)
  history = [r['reward/mean'] for r in records]
  metrics = records[-1]
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.25, history
  # The temperature moved (learned), and the buffer filled to capacity.
  assert float(metrics['alpha']) != config.init_alpha
  assert float(metrics['replay/size']) == 256
