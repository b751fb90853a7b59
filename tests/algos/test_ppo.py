"""PPO: KL-in-reward, KL controller and losses against NumPy (values and
finite-difference gradients); a learning test; the separate critic."""

import pytest
import dataclasses
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import ppo
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Three sequences of three steps; the second ends at step 1, the third at 0.
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
SCORES = np.array([1.0, -0.5, 2.0], np.float32)
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3],
                        [0.6, 0.1, 0.8]], np.float32))
OLD_LOGP = np.log(np.array([[0.4, 0.2, 0.5], [0.4, 0.35, 0.1],
                            [0.6, 0.2, 0.8]], np.float32))
REF_LOGP = np.log(np.array([[0.5, 0.3, 0.6], [0.2, 0.3, 0.4],
                            [0.5, 0.2, 0.7]], np.float32))
ADV = np.array([[0.5, -1.0, 2.0], [-0.3, 1.5, 0.0],
                [1.0, 0.0, 0.0]], np.float32)
VALUES = np.array([[0.1, 0.5, -0.4], [0.3, -0.2, 0.0],
                   [0.9, 0.0, 0.0]], np.float32)
OLD_VALUES = np.array([[0.2, 0.2, -0.1], [0.3, 0.1, 0.0],
                       [0.6, 0.0, 0.0]], np.float32)
TARGETS = np.array([[1.0, 0.2, 0.0], [-0.5, 0.4, 0.0],
                    [1.0, 0.0, 0.0]], np.float32)


def np_kl_rewards(scores, logp, ref_logp, mask, kl_coef):
  out = np.zeros(mask.shape, np.float64)
  for b, length in enumerate(mask.sum(1)):
    for t in range(length):
      out[b, t] = -kl_coef * (logp[b, t] - ref_logp[b, t])
    out[b, length - 1] += scores[b]
  return out


def np_policy_loss(logp, old_logp, adv, mask, epsilon):
  ratio = np.exp(logp - old_logp)
  per_token = -np.minimum(ratio * adv,
                          np.clip(ratio, 1 - epsilon, 1 + epsilon) * adv)
  return per_token[mask].mean()


def np_value_loss(values, old_values, targets, mask, value_clip):
  per_token = (values - targets)**2
  if value_clip > 0:
    clipped = old_values + np.clip(values - old_values, -value_clip,
                                   value_clip)
    per_token = np.maximum(per_token, (clipped - targets)**2)
  return 0.5 * per_token[mask].mean()


class PPOReferenceTest(parameterized.TestCase):

  @parameterized.parameters(0.0, 0.1)
  def test_kl_penalized_rewards(self, kl_coef):
    got = ppo.kl_penalized_rewards(
        jnp.asarray(SCORES), jnp.asarray(OLD_LOGP), jnp.asarray(REF_LOGP),
        jnp.asarray(MASK), kl_coef=kl_coef)
    np.testing.assert_allclose(
        got, np_kl_rewards(SCORES, OLD_LOGP, REF_LOGP, MASK, kl_coef),
        rtol=1e-6, atol=1e-7)

  @parameterized.parameters(
      (6.0, 6.0),  # On target: beta stays.
      (6.3, 6.0),  # 5% above: beta grows by 5% of n / horizon.
      (60.0, 6.0),  # Far above: the error is clipped at +0.2.
      (0.0, 6.0))  # Far below: clipped at -0.2.
  def test_adaptive_kl_coef(self, observed, target):
    beta, n, horizon = 0.1, 256, 1000.0
    got = ppo.adaptive_kl_coef(jnp.float32(beta), jnp.float32(observed),
                               target=target, horizon=horizon, num_samples=n)
    error = np.clip(observed / target - 1, -0.2, 0.2)
    np.testing.assert_allclose(got, beta * (1 + error * n / horizon),
                               rtol=1e-6)

  @parameterized.product(epsilon=[0.2, 0.05], jit=[False, True])
  def test_policy_loss_and_gradient(self, epsilon, jit):
    def f(logp):
      return ppo.ppo_policy_loss(logp, jnp.asarray(OLD_LOGP), jnp.asarray(ADV),
                                 jnp.asarray(MASK), epsilon=epsilon)[0]

    f = jax.jit(f) if jit else f
    loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP))
    ref = functools.partial(np_policy_loss, old_logp=OLD_LOGP, adv=ADV,
                            mask=MASK, epsilon=epsilon)
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, LOGP), atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))
    # With epsilon = 0.05 some tokens are clipped: their gradient is 0.
    if epsilon == 0.05:
      self.assertGreater(int(np.sum((np.asarray(grad) == 0) & MASK)), 0)

  def test_policy_metrics(self):
    _, metrics = ppo.ppo_policy_loss(jnp.asarray(LOGP), jnp.asarray(OLD_LOGP),
                                     jnp.asarray(ADV), jnp.asarray(MASK),
                                     epsilon=0.2)
    ratio = np.exp(LOGP - OLD_LOGP)
    clipped = np.clip(ratio, 0.8, 1.2) * ADV < ratio * ADV
    np.testing.assert_allclose(metrics['clip_ratio'], clipped[MASK].mean(),
                               rtol=1e-6)
    log_r = LOGP - OLD_LOGP
    np.testing.assert_allclose(metrics['approx_kl'],
                               (np.exp(log_r) - 1 - log_r)[MASK].mean(),
                               rtol=1e-5)

  @parameterized.parameters(0.0, 0.2)
  def test_value_loss_and_gradient(self, value_clip):
    def f(values):
      return ppo.ppo_value_loss(values, jnp.asarray(OLD_VALUES),
                                jnp.asarray(TARGETS), jnp.asarray(MASK),
                                value_clip=value_clip)[0]

    loss, grad = jax.value_and_grad(f)(jnp.asarray(VALUES))
    ref = functools.partial(np_value_loss, old_values=OLD_VALUES,
                            targets=TARGETS, mask=MASK, value_clip=value_clip)
    np.testing.assert_allclose(loss, ref(VALUES.astype(np.float64)),
                               rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, VALUES),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_running_reward_stats(self):
    rng = np.random.default_rng(0)
    batches = [rng.normal(3.0, 2.0, size=n).astype(np.float32)
               for n in (4, 7, 5)]
    stats = {k: jnp.zeros((), jnp.float32) for k in ('count', 'mean', 'm2')}
    for x in batches:
      stats = ppo.update_running_stats(stats, jnp.asarray(x))
    everything = np.concatenate(batches)
    np.testing.assert_allclose(stats['count'], everything.size)
    np.testing.assert_allclose(stats['mean'], everything.mean(), rtol=1e-5)
    np.testing.assert_allclose(stats['m2'] / stats['count'], everything.var(),
                               rtol=1e-5)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('ppo')
    config.kl_controller = 'pid'
    with self.assertRaisesRegex(ValueError, 'config.algo.kl_controller'):
      algos.make(config)
    config = algos.default_config('ppo')
    config.value_coef = 1.0
    with self.assertRaisesRegex(ValueError, 'config.algo.value_coef'):
      algos.make(config)


# The toy task: a tiny LM is rewarded for the fraction of its tokens that are 5.
TOY_CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                                num_layers=1, num_heads=2, num_kv_heads=2,
                                max_seq_len=12)
TOY_BATCH = {'prompt': jnp.full((4, 3), 7, jnp.int32),
             'prompt_mask': jnp.ones((4, 3), bool)}


toy_reward = toy.fives_reward


def constant_reward(rollout, batch):
  del batch
  return jnp.ones(rollout.batch_size, jnp.float32)


def toy_setup(algo_config, value_head, reward_fn=toy_reward, lr=3e-3):
  model_cfg = dataclasses.replace(TOY_CFG, value_head=value_head)
  policy = tfm.init_params(model_cfg, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(model_cfg)),
                max_new_tokens=6,
                eos_id=1,
                pad_id=0,
                num_samples=8)
  algo = algos.make(algo_config)
  tx = optax.adam(lr)
  params = algo.init_params(env, policy, jax.random.key(1))
  state = TrainState(
      step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
      ref_params=jax.tree.map(jnp.copy, policy) if algo.uses_reference
      else None, algo_state=algo.init_state())
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=reward_fn, algo=algo, tx=tx),
                 donate_argnums=0)
  # A host copy: the jitted step donates the state the policy lives in.
  return jax.tree.map(np.asarray, policy), state, step


def np_gae(rewards, values, mask, gamma, lambda_):
  out = np.zeros(mask.shape, np.float64)
  for b, length in enumerate(mask.sum(1)):
    advantage = 0.0
    for t in reversed(range(length)):
      v_next = values[b, t + 1] if t + 1 < length else 0.0
      delta = rewards[b, t] + gamma * v_next - values[b, t]
      advantage = delta + gamma * lambda_ * (t + 1 < length) * advantage
      out[b, t] = advantage
  return out


def toy_rollout(rng, batch_size=32, num_steps=6):
  """A hand-made Rollout of the toy task's shapes, rows ending at random
  steps (some at the horizon), with its sequence scores f32[B]."""
  lengths = rng.integers(1, num_steps + 1, size=batch_size)
  lengths[:2] = (1, num_steps)
  mask = np.arange(num_steps)[None, :] < lengths[:, None]
  rollout = Rollout(
      context={'tokens': jnp.full((batch_size, 3), 7, jnp.int32),
               'mask': jnp.ones((batch_size, 3), bool)},
      actions=jnp.asarray(np.where(mask, rng.integers(2, 16, mask.shape), 0),
                          jnp.int32),
      logp=jnp.asarray(np.where(mask, -rng.uniform(0.1, 3.0, mask.shape), 0.0),
                       jnp.float32),
      mask=jnp.asarray(mask))
  return rollout, jnp.asarray(rng.normal(size=batch_size), jnp.float32)


def test_prepare_gae_of_kl_penalized_rewards_and_controller():
  """prepare = GAE over the KL-penalised per-token rewards, and one step of
  the adaptive controller, against NumPy (behaviour log-probs are the
  rollout's; reference log-probs and values come from two toy models)."""
  config = algos.default_config('ppo')
  config.update(kl_coef=0.3, kl_controller='adaptive', kl_target=0.5,
                kl_horizon=100.0, gamma=0.9, lambda_=0.8,
                whiten_advantages=False, reward_norm='batch')
  algo = algos.make(config)
  model_cfg = dataclasses.replace(TOY_CFG, value_head=True)
  env = TextEnv(LMPolicy(tfm.Transformer(model_cfg)),
                max_new_tokens=6,
                eos_id=1,
                pad_id=0,
                num_samples=8)
  params = tfm.init_params(model_cfg, jax.random.key(0))
  params['value_proj'] = {'kernel': jnp.linspace(-1.0, 1.0, 32)[:, None],
                          'bias': jnp.full((1,), 0.3)}
  ref_params = tfm.init_params(model_cfg, jax.random.key(1))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=None, ref_params=ref_params,
                     algo_state=algo.init_state())
  rollout, scores = toy_rollout(np.random.default_rng(0))

  @jax.jit
  def run(state, rollout, scores):
    prepared = algo.prepare(env, state, rollout, scores, jax.random.key(0))
    return (env.evaluate(state.ref_params, rollout).logp,
            env.evaluate(state.params, rollout, with_values=True).values,
            prepared)

  ref_logp, values, (exp, algo_state, metrics) = run(state, rollout, scores)
  mask = np.asarray(rollout.mask)
  logp = np.asarray(rollout.logp, np.float64)
  ref_logp, values = np.asarray(ref_logp, np.float64), np.asarray(values)
  z = (np.asarray(scores) - np.mean(scores)) / np.std(scores)
  rewards = np_kl_rewards(z, logp, ref_logp, mask, 0.3)
  advantages = np_gae(rewards, values, mask, 0.9, 0.8)
  np.testing.assert_allclose(exp.advantages, advantages, atol=1e-4)
  np.testing.assert_allclose(exp.value_targets,
                             np.where(mask, advantages + values, 0.0),
                             atol=1e-4)
  sequence_kl = np.mean(np.sum(np.where(mask, logp - ref_logp, 0.0), axis=1))
  np.testing.assert_allclose(metrics['kl/sequence'], sequence_kl, rtol=1e-4)
  error = np.clip(sequence_kl / 0.5 - 1, -0.2, 0.2)
  np.testing.assert_allclose(algo_state['kl_coef'],
                             0.3 * (1 + error * 32 / 100.0), rtol=1e-5)
  np.testing.assert_allclose(metrics['kl_coef'], 0.3)


def test_ppo_raises_reward_on_toy_task():
  """Value head on the trunk, adaptive KL; margin: mean reward +0.5."""
  config = algos.default_config('ppo')
  config.update(kl_coef=0.02, kl_controller='adaptive', kl_target=0.5,
                kl_horizon=200.0, num_epochs=2, num_minibatches=2)
  _, state, step = toy_setup(config, value_head=True)
  history, coefs = [], []
  for i in range(15):
    state, metrics = step(state, TOY_BATCH, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
    coefs.append(float(metrics['kl_coef']))
  assert np.mean(history[:2]) < 0.2, history
  assert np.mean(history[-2:]) > np.mean(history[:2]) + 0.5, history
  assert float(metrics['kl']) > 0.0
  assert float(metrics['value_loss']) > 0.0
  # The policy moved past the KL target, so the controller raised beta.
  assert coefs[-1] > coefs[0], coefs
  np.testing.assert_allclose(float(state.algo_state['kl_coef']),
                             coefs[-1], rtol=0.1)


@pytest.mark.slow
def test_separate_critic_initialises_and_trains():
  config = algos.default_config('ppo')
  config.update(separate_critic=True, kl_coef=0.0, num_epochs=2,
                num_minibatches=1)
  # A reward of 1 for everything: V = 1 at every step (gamma = 1).
  policy, state, step = toy_setup(config, value_head=False,
                                  reward_fn=constant_reward)
  params = state.params
  assert set(params) == {'policy', 'critic'}
  # The critic is the policy's trunk plus a fresh (zero) value head.
  assert 'value_proj' not in params['policy']
  critic_trunk = {k: v for k, v in params['critic'].items()
                  if k != 'value_proj'}
  jax.tree.map(np.testing.assert_array_equal, critic_trunk, policy)
  head = params['critic']['value_proj']
  assert head['kernel'].shape == (TOY_CFG.hidden_dim, 1)
  assert not np.any(head['kernel']) and not np.any(head['bias'])

  errors = []
  for i in range(6):
    state, metrics = step(state, TOY_BATCH, jax.random.key(i))
    errors.append(abs(float(metrics['values/mean']) - 1.0))
  # Both models trained, separately: their trunks now differ.
  moved = lambda a, b: float(jnp.max(jnp.abs(a - b))) > 0
  assert moved(state.params['policy']['unembed']['kernel'],
               policy['unembed']['kernel'])
  assert moved(state.params['critic']['value_proj']['kernel'], 0.0)
  assert moved(state.params['critic']['embed']['embedding'],
               state.params['policy']['embed']['embedding'])
  # The critic learned the values: from 0 (error 1) to within 0.5.
  assert errors[0] == 1.0 and errors[-1] < 0.5, errors
