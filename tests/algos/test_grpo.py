"""GRPO: advantages, loss and gradient against NumPy; a learning test."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.algos import grpo
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Two groups of two sequences, three steps; the last sequence ends early.
REWARDS = np.array([1.0, 0.0, 0.5, 0.5], np.float32)
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3],
                        [0.6, 0.1, 0.8], [0.7, 0.5, 0.4]], np.float32))
OLD_LOGP = np.log(np.array([[0.4, 0.2, 0.5], [0.4, 0.3, 0.1],
                            [0.6, 0.2, 0.8], [0.5, 0.6, 0.4]], np.float32))
REF_LOGP = np.log(np.array([[0.5, 0.3, 0.6], [0.2, 0.3, 0.4],
                            [0.5, 0.2, 0.7], [0.6, 0.5, 0.2]], np.float32))
MASK = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0]], bool)


def np_advantages(rewards, group_size, scale_by_std, eps=1e-4):
  out = []
  for group in rewards.reshape(-1, group_size):
    centred = group - group.mean()
    out.append(centred / (group.std() + eps) if scale_by_std else centred)
  return np.concatenate(out)


def np_grpo_loss(logp, old_logp, ref_logp, adv, mask, eps_low, eps_high, beta,
                 aggregation):
  ratio = np.exp(logp - old_logp)
  a = adv[:, None]
  per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
  log_r = ref_logp - logp
  per_token = per_token + beta * (np.exp(log_r) - log_r - 1)
  if aggregation == 'token_mean':
    return (per_token * mask).sum() / mask.sum()
  if aggregation == 'sequence_mean':
    return np.mean((per_token * mask).sum(1) / mask.sum(1))
  return (per_token * mask).sum() / mask.size


class GRPOReferenceTest(parameterized.TestCase):

  @parameterized.parameters(True, False)
  def test_group_advantages(self, scale_by_std):
    got = grpo.group_advantages(jnp.asarray(REWARDS), 2,
                                scale_by_std=scale_by_std)
    np.testing.assert_allclose(got, np_advantages(REWARDS, 2, scale_by_std),
                               rtol=1e-6, atol=1e-6)
    # A group whose rewards are all equal has zero advantage, not NaN.
    self.assertEqual(float(got[2]), 0.0)

  @parameterized.product(
      aggregation=['token_mean', 'sequence_mean', 'constant'],
      beta=[0.0, 0.1], eps=[(0.2, 0.2), (0.1, 0.3)], jit=[False, True])
  def test_loss_and_gradient(self, aggregation, beta, eps, jit):
    adv = np_advantages(REWARDS, 2, True)
    loss_fn = functools.partial(
        grpo.grpo_loss, epsilon_low=eps[0], epsilon_high=eps[1], beta=beta,
        aggregation=aggregation)

    def f(logp):
      return loss_fn(logp, jnp.asarray(OLD_LOGP), jnp.asarray(adv),
                     jnp.asarray(MASK), ref_logp=jnp.asarray(REF_LOGP))[0]

    if jit:
      f = jax.jit(f)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP))
    ref = functools.partial(np_grpo_loss, old_logp=OLD_LOGP, ref_logp=REF_LOGP,
                            adv=adv, mask=MASK, eps_low=eps[0],
                            eps_high=eps[1], beta=beta, aggregation=aggregation)
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5)
    # Central differences of the float64 NumPy reference.
    num_grad = np.zeros_like(LOGP, np.float64)
    h = 1e-6
    for idx in np.ndindex(LOGP.shape):
      plus, minus = LOGP.astype(np.float64), LOGP.astype(np.float64)
      plus[idx] += h
      minus[idx] -= h
      num_grad[idx] = (ref(plus) - ref(minus)) / (2 * h)
    np.testing.assert_allclose(grad, num_grad, atol=1e-5)
    # Masked tokens get no gradient.
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_clip_ratio_metric(self):
    adv = np_advantages(REWARDS, 2, True)
    _, metrics = grpo.grpo_loss(jnp.asarray(LOGP), jnp.asarray(OLD_LOGP),
                                jnp.asarray(adv), jnp.asarray(MASK))
    ratio = np.exp(LOGP - OLD_LOGP)
    a = adv[:, None]
    clipped = np.clip(ratio, 0.8, 1.2) * a < ratio * a
    np.testing.assert_allclose(metrics['clip_ratio'],
                               clipped[MASK].mean(), rtol=1e-6)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('grpo')
    config.aggregation = 'mean'
    with self.assertRaisesRegex(ValueError, 'config.algo.aggregation'):
      algos.make(config)
    with self.assertRaisesRegex(ValueError, 'Unknown algorithm.*known'):
      algos.default_config('no_such_algo')


def test_grpo_raises_reward_on_toy_task():
  """A tiny policy learns to emit token 5; margin: mean reward +0.5."""
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=12)
  params = tfm.init_params(cfg, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=6,
                eos_id=1,
                pad_id=0,
                num_samples=8)

  reward_fn = toy.fives_reward

  config = algos.default_config('grpo')
  config.beta = 0.01
  algo = algos.make(config)
  tx = optax.adam(3e-3)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ref_params=jax.tree.map(jnp.copy, params))
  batch = {'prompt': jnp.full((4, 3), 7, jnp.int32),
           'prompt_mask': jnp.ones((4, 3), bool)}
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=reward_fn, algo=algo, tx=tx),
                 donate_argnums=0)
  history = []
  for i in range(40):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.5, history
  assert float(metrics['kl']) > 0.0
