"""RLOO: leave-one-out advantages, KL-penalised rewards and the sequence-level
loss against NumPy; errors for groups of one; learning on a toy task."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import reinforce
from jaxrlgen.algos import rloo
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Two groups of three sequences, three steps; some sequences end early.
REWARDS = np.array([1.0, 0.0, 0.5, 0.2, 0.2, 0.9], np.float32)
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3], [0.6, 0.1, 0.8],
                        [0.7, 0.5, 0.4], [0.2, 0.9, 0.6], [0.4, 0.4, 0.5]],
                       np.float32))
REF_LOGP = np.log(np.array([[0.5, 0.3, 0.6], [0.2, 0.3, 0.4], [0.5, 0.2, 0.7],
                            [0.6, 0.5, 0.2], [0.3, 0.8, 0.6], [0.4, 0.2, 0.5]],
                           np.float32))
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 1, 1],
                 [1, 0, 0], [1, 1, 1], [1, 1, 0]], bool)


def np_rloo(rewards, k):
  """The leave-one-out mean by its definition, one sample at a time."""
  out = np.zeros_like(rewards, np.float64)
  for i in range(len(rewards)):
    group = range(i - i % k, i - i % k + k)
    others = [rewards[j] for j in group if j != i]
    out[i] = rewards[i] - np.mean(others)
  return out


class RLOOReferenceTest(parameterized.TestCase):

  @parameterized.parameters(2, 3, 6)
  def test_advantages(self, k):
    got = rloo.rloo_advantages(jnp.asarray(REWARDS), k)
    np.testing.assert_allclose(got, np_rloo(REWARDS, k), rtol=1e-6, atol=1e-6)
    # The closed form k/(k-1) (r - mean) of the paper.
    grouped = REWARDS.reshape(-1, k)
    closed = k / (k - 1) * (grouped - grouped.mean(1, keepdims=True))
    np.testing.assert_allclose(got, closed.reshape(-1), rtol=1e-5, atol=1e-6)

  def test_advantages_of_equal_rewards_are_zero(self):
    got = rloo.rloo_advantages(jnp.full((4,), 0.7), 2)
    np.testing.assert_allclose(got, 0.0, atol=1e-7)

  def test_group_of_one_names_the_config_field(self):
    with self.assertRaisesRegex(ValueError, 'config.rl.group_size'):
      rloo.rloo_advantages(jnp.asarray(REWARDS), 1)

  def test_kl_penalized_rewards(self):
    got = rloo.kl_penalized_rewards(jnp.asarray(REWARDS), jnp.asarray(LOGP),
                                    jnp.asarray(REF_LOGP), jnp.asarray(MASK),
                                    kl_coef=0.2)
    want = REWARDS - 0.2 * ((LOGP - REF_LOGP) * MASK).sum(1)
    np.testing.assert_allclose(got, want, rtol=1e-5)

  @parameterized.parameters(False, True)
  def test_sequence_level_loss_and_gradient(self, jit):
    adv = np_rloo(REWARDS, 3)

    def f(logp):
      return reinforce.policy_gradient_loss(
          logp, jnp.asarray(adv, jnp.float32), jnp.asarray(MASK))[0]

    f = jax.jit(f) if jit else f
    loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP))
    # -mean_i A_i log pi(y_i | x): the whole completion is one action.
    ref = lambda logp: -np.mean(adv * (logp * MASK).sum(1))
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5)
    # d loss / d logp_{i,t} = -A_i / B on every valid token.
    want_grad = np.where(MASK, -adv[:, None] / len(adv), 0.0)
    np.testing.assert_allclose(grad, want_grad, atol=1e-6)


CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                            num_layers=1, num_heads=2, num_kv_heads=2,
                            max_seq_len=10)
PROMPTS = {'prompt': jnp.array([[7, 3], [7, 4]], jnp.int32),
           'prompt_mask': jnp.ones((2, 2), bool)}


hit_rate = toy.fives_reward


def make_step(num_samples, **overrides):
  params = tfm.init_params(CFG, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(CFG)),
                max_new_tokens=4,
                eos_id=1,
                pad_id=0,
                num_samples=num_samples)
  config = algos.default_config('rloo')
  config.update(overrides)
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ref_params=(jax.tree.map(jnp.copy, params)
                                 if algo.uses_reference else None),
                     algo_state=algo.init_state())
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=hit_rate, algo=algo, tx=tx))
  return state, step


def test_rl_step_with_groups_of_one_fails_at_trace_time():
  state, step = make_step(num_samples=1)
  with np.testing.assert_raises_regex(ValueError, 'config.rl.group_size'):
    jax.eval_shape(step, state, PROMPTS, jax.random.key(0))


def test_rloo_raises_reward_on_toy_task():
  """A tiny policy learns to emit token 5; margin: mean reward +0.4."""
  state, step = make_step(num_samples=4, kl_reward_coef=0.01)
  history = []
  for i in range(30):
    state, metrics = step(state, PROMPTS, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.25, history
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.4, history
  assert float(metrics['kl']) > 0.0
