"""IMPALA: terminal rewards, loss and gradients against NumPy; learning with
fresh and with stale actors."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.algos import impala
from jaxrlgen.core import returns
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import async_loop
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Four sequences, three steps; the last two end early.
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3],
                        [0.6, 0.1, 0.8], [0.7, 0.5, 0.4]], np.float32))
BEHAVIOUR_LOGP = np.log(np.array([[0.4, 0.2, 0.5], [0.4, 0.9, 0.1],
                                  [0.6, 0.2, 0.8], [0.5, 0.6, 0.4]],
                                 np.float32))
VALUES = np.array([[0.2, 0.5, 0.7], [0.1, -0.3, 0.4],
                   [0.6, 0.0, 9.0], [0.3, 9.0, 9.0]], np.float32)
MASK = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
SEQ_REWARDS = np.array([1.0, 0.0, 0.5, 2.0], np.float32)


def np_terminal_rewards(rewards, mask):
  out = np.zeros(mask.shape, np.float32)
  for b, row in enumerate(mask):
    if row.any():
      out[b, np.nonzero(row)[0][-1]] = rewards[b]
  return out


def np_targets(logp, values, behaviour_logp, rewards, mask, discount, lambda_,
               rho_bar, c_bar):
  """V-trace by its backward recursion (Remark 1), float64."""
  vs, adv = np.zeros(mask.shape), np.zeros(mask.shape)
  for b in range(mask.shape[0]):
    n = int(mask[b].sum())
    rho = np.exp(logp[b, :n].astype(np.float64) - behaviour_logp[b, :n])
    v = np.append(values[b, :n].astype(np.float64), 0.0)  # Terminal: V = 0.
    acc, vs_next = 0.0, 0.0
    for s in reversed(range(n)):
      delta = min(rho_bar, rho[s]) * (rewards[b, s] + discount * v[s + 1] - v[s])
      acc = delta + discount * lambda_ * min(c_bar, rho[s]) * acc
      adv[b, s] = min(rho_bar, rho[s]) * (rewards[b, s] + discount * vs_next
                                          - v[s])
      vs[b, s] = v[s] + acc
      vs_next = vs[b, s]
  return vs, adv


def np_loss(logp, values, vs, adv, mask, value_coef):
  count = mask.sum()
  policy = -(logp * adv * mask).sum() / count
  value = 0.5 * ((vs - values) ** 2 * mask).sum() / count
  return policy + value_coef * value


class IMPALAReferenceTest(parameterized.TestCase):

  def test_terminal_rewards(self):
    # What IMPALA places its sequence rewards with (no step rewards).
    mask = np.concatenate([MASK, np.zeros((1, 3), bool)])
    rewards = np.append(SEQ_REWARDS, 3.0)
    got = returns.token_rewards(jnp.asarray(rewards), jnp.asarray(mask))
    np.testing.assert_array_equal(got, np_terminal_rewards(rewards, mask))

  @parameterized.product(
      hyper=[dict(discount=1.0, lambda_=1.0, rho_bar=1.0, c_bar=1.0),
             dict(discount=0.9, lambda_=0.9, rho_bar=1.2, c_bar=0.8)],
      value_coef=[0.5, 1.0], jit=[False, True])
  def test_loss_and_gradient(self, hyper, value_coef, jit):
    rewards_t = np_terminal_rewards(SEQ_REWARDS, MASK)
    rho = np.exp(LOGP - BEHAVIOUR_LOGP)[MASK]
    self.assertTrue(np.any(rho > hyper['rho_bar']))  # Truncation is active.

    def f(logp, values):
      return impala.impala_loss(
          logp, values, jnp.asarray(BEHAVIOUR_LOGP), jnp.asarray(rewards_t),
          jnp.asarray(MASK), value_coef=value_coef, **hyper)

    if jit:
      f = jax.jit(f)
    (loss, metrics), grads = jax.value_and_grad(f, argnums=(0, 1),
                                                has_aux=True)(
                                                    jnp.asarray(LOGP),
                                                    jnp.asarray(VALUES))
    vs, adv = np_targets(LOGP, VALUES, BEHAVIOUR_LOGP, rewards_t, MASK,
                         **hyper)
    ref = functools.partial(np_loss, vs=vs, adv=adv, mask=MASK,
                            value_coef=value_coef)
    x0 = (LOGP.astype(np.float64), VALUES.astype(np.float64))
    np.testing.assert_allclose(loss, ref(*x0), rtol=1e-5)
    np.testing.assert_allclose(metrics['advantages/mean'], adv[MASK].mean(),
                               rtol=1e-5)
    np.testing.assert_allclose(
        metrics['value_loss'], 0.5 * ((vs - VALUES) ** 2)[MASK].mean(),
        rtol=1e-5)
    np.testing.assert_allclose(metrics['clip_ratio'],
                               np.mean(rho > hyper['rho_bar']), rtol=1e-6)
    # The paper's gradient holds v_s and A_s fixed: central differences of
    # the NumPy loss with the targets of the unperturbed point.
    h = 1e-6
    for arg, grad in enumerate(grads):
      num = np.zeros_like(x0[arg])
      for idx in np.ndindex(num.shape):
        plus, minus = [x.copy() for x in x0], [x.copy() for x in x0]
        plus[arg][idx] += h
        minus[arg][idx] -= h
        num[idx] = (ref(*plus) - ref(*minus)) / (2 * h)
      np.testing.assert_allclose(grad, num, atol=1e-5)
      self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_config_errors_name_the_field(self):
    config = algos.default_config('impala')
    config.c_bar = -1.0
    with self.assertRaisesRegex(ValueError, 'config.algo.c_bar'):
      algos.make(config)
    config = algos.default_config('impala')
    config.max_staleness = -1
    with self.assertRaisesRegex(ValueError, 'config.algo.max_staleness'):
      algos.make(config)


@pytest.fixture(scope='module')
def toy_task():
  """A tiny policy with a value head; reward: the share of tokens that are 5."""
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=12, value_head=True)
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=6,
                eos_id=1,
                pad_id=0,
                num_samples=8)

  reward_fn = toy.fives_reward

  tx = optax.adam(3e-3)
  steps = async_loop.rl_actor_learner(
      env, reward_fn, algos.make(algos.default_config('impala')), tx)
  return cfg, tx, steps


@pytest.mark.parametrize('max_staleness', [0, 2])
def test_impala_raises_reward_with_stale_actors(toy_task, max_staleness):
  """Margin: mean reward +0.5 in 30 updates, with the actor 0 or 2 updates
  behind (the same jitted actor and learner serve both)."""
  cfg, tx, steps = toy_task
  params = tfm.init_params(cfg, jax.random.key(0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params))
  batch = {'prompt': np.full((4, 3), 7, np.int32),
           'prompt_mask': np.ones((4, 3), bool)}
  key = jax.random.key(1)
  pipeline = async_loop.Pipeline(steps, batch_fn=lambda step: batch, key=key,
                                 total_steps=30, max_staleness=max_staleness)
  state = pipeline.place(state)
  history, staleness = [], []
  for k in range(30):
    state, metrics = pipeline(state, k, jax.random.fold_in(key, k))
    history.append(float(metrics['reward/mean']))
    staleness.append(int(metrics['staleness']))
  assert staleness == [min(k, max_staleness) for k in range(30)]
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.5, history
  assert float(metrics['value_loss']) < 0.05
