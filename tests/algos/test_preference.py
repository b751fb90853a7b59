"""Preference losses against NumPy; offline and online DPO learn toy tasks."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import preference
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Four pairs of log-prob sums (policy and reference) and lengths.
PI_C = np.array([-3.0, -5.5, -2.0, -7.0], np.float32)
PI_R = np.array([-4.0, -5.0, -6.5, -6.0], np.float32)
REF_C = np.array([-3.5, -5.0, -3.0, -6.0], np.float32)
REF_R = np.array([-3.8, -5.2, -6.0, -6.5], np.float32)
LEN_C = np.array([3, 4, 2, 5], np.int32)
LEN_R = np.array([4, 2, 6, 5], np.int32)
W = np.array([1.0, 0.0, 2.0, 1.0], np.float32)


def np_log_sigmoid(x):
  return -np.logaddexp(0.0, -x)


def np_wmean(x, w):
  return np.sum(x * w) / np.sum(w)


def np_dpo(pc, pr, rc, rr, beta, eps, w):
  h = beta * ((pc - rc) - (pr - rr))
  return np_wmean(-(1 - eps) * np_log_sigmoid(h) - eps * np_log_sigmoid(-h), w)


def np_ipo(pc, pr, rc, rr, beta, w):
  h = (pc - rc) - (pr - rr)
  return np_wmean((h - 1 / (2 * beta)) ** 2, w)


def np_simpo(pc, pr, lc, lr, beta, gamma, w):
  return np_wmean(-np_log_sigmoid(beta * (pc / lc - pr / lr) - gamma), w)


J = lambda x: jnp.asarray(x)


class LossTest(parameterized.TestCase):

  @parameterized.parameters((None,), (W,))
  def test_bradley_terry(self, weights):
    loss, metrics = preference.bradley_terry_loss(
        J(PI_C), J(PI_R), None if weights is None else J(weights))
    w = np.ones(4) if weights is None else weights
    margin = PI_C - PI_R
    np.testing.assert_allclose(loss, np_wmean(-np_log_sigmoid(margin), w),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics['accuracy'], np_wmean(margin > 0, w),
                               rtol=1e-6)
    np.testing.assert_allclose(metrics['margin'], np_wmean(margin, w),
                               rtol=1e-6)
    # d/dr_chosen of -log sigmoid(m) is -(1 - sigmoid(m)) / sum(w) per pair.
    grad = jax.grad(lambda c: preference.bradley_terry_loss(
        c, J(PI_R), J(w))[0])(J(PI_C))
    np.testing.assert_allclose(grad, -w / (1 + np.exp(margin)) / w.sum(),
                               rtol=1e-5)

  @parameterized.product(beta=[0.1, 0.5], eps=[0.0, 0.2], jit=[False, True])
  def test_dpo_and_conservative_dpo(self, beta, eps, jit):
    f = lambda pc: preference.dpo_loss(pc, J(PI_R), J(REF_C), J(REF_R),
                                       beta=beta, label_smoothing=eps,
                                       weights=J(W))
    f = jax.jit(f) if jit else f
    (loss, metrics), grad = jax.value_and_grad(f, has_aux=True)(J(PI_C))
    ref = lambda pc: np_dpo(pc, PI_R, REF_C, REF_R, beta, eps, W)
    np.testing.assert_allclose(loss, ref(PI_C.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, PI_C),
                               rtol=1e-4, atol=1e-6)
    implicit = beta * ((PI_C - REF_C) - (PI_R - REF_R))
    np.testing.assert_allclose(metrics['accuracy'], np_wmean(implicit > 0, W))
    np.testing.assert_allclose(metrics['rewards/chosen'],
                               np_wmean(beta * (PI_C - REF_C), W), rtol=1e-5)

  @parameterized.parameters(0.1, 1.0)
  def test_ipo(self, beta):
    f = lambda pc: preference.ipo_loss(pc, J(PI_R), J(REF_C), J(REF_R),
                                       beta=beta, weights=J(W))[0]
    loss, grad = jax.value_and_grad(f)(J(PI_C))
    ref = lambda pc: np_ipo(pc, PI_R, REF_C, REF_R, beta, W)
    np.testing.assert_allclose(loss, ref(PI_C.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, PI_C),
                               rtol=1e-4, atol=1e-5)

  @parameterized.parameters((2.0, 0.5), (1.0, 0.0))
  def test_simpo(self, beta, gamma):
    f = lambda pc: preference.simpo_loss(pc, J(PI_R), J(LEN_C), J(LEN_R),
                                         beta=beta, gamma=gamma,
                                         weights=J(W))[0]
    loss, grad = jax.value_and_grad(f)(J(PI_C))
    ref = lambda pc: np_simpo(pc, PI_R, LEN_C, LEN_R, beta, gamma, W)
    np.testing.assert_allclose(loss, ref(PI_C.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, PI_C),
                               rtol=1e-4, atol=1e-6)

  def test_config_errors_name_the_field(self):
    for kwargs, field in (({'loss': 'kto'}, 'config.algo.loss'),
                          ({'beta': 0.0}, 'config.algo.beta'),
                          ({'loss': 'ipo', 'label_smoothing': 0.1},
                           'config.algo.label_smoothing')):
      with self.assertRaisesRegex(ValueError, field):
        preference.PreferenceConfig(**kwargs)
    self.assertFalse(preference.PreferenceConfig(loss='simpo').uses_reference)

  def test_best_worst_pairs(self):
    rewards = J([0.1, 0.9, 0.5, 0.3, 0.3, 0.3, 1.0, 0.0, 0.2])
    chosen, rejected, valid = preference.best_worst_pairs(rewards, 3)
    np.testing.assert_array_equal(np.asarray(chosen)[[0, 2]], [1, 6])
    np.testing.assert_array_equal(np.asarray(rejected)[[0, 2]], [0, 7])
    np.testing.assert_array_equal(valid, [True, False, True])
    with self.assertRaisesRegex(ValueError, 'config.rl.group_size'):
      preference.best_worst_pairs(rewards, 1)


CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                            num_layers=1, num_heads=2, num_kv_heads=2,
                            max_seq_len=10)
PROMPTS = {'prompt': jnp.array([[7, 3], [7, 4]], jnp.int32),
           'prompt_mask': jnp.ones((2, 2), bool)}


def _state(tx, with_ref=True):
  params = tfm.init_params(CFG, jax.random.key(0))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    opt_state=tx.init(params),
                    ref_params=jax.tree.map(jnp.copy, params) if with_ref
                    else None)


def test_offline_dpo_step_prefers_chosen():
  """Chosen = all 5s, rejected = all 9s: the policy's preference flips."""
  env = TextEnv(LMPolicy(tfm.Transformer(CFG)),
                max_new_tokens=3,
                eos_id=1,
                pad_id=0)
  cfg = preference.PreferenceConfig(loss='dpo', beta=0.5)
  tx = optax.adam(1e-2)
  state = _state(tx, with_ref=cfg.uses_reference)
  batch = {**PROMPTS,
           'chosen': jnp.full((2, 3), 5, jnp.int32),
           'rejected': jnp.array([[9, 9, 1], [9, 9, 9]], jnp.int32),
           'chosen_mask': jnp.ones((2, 3), bool),
           'rejected_mask': jnp.array([[1, 1, 1], [1, 1, 1]], bool)}
  step = jax.jit(functools.partial(preference.offline_step, cfg=cfg, env=env,
                                   tx=tx))
  pair_logp = jax.jit(functools.partial(preference.pair_logp, env))
  before = pair_logp(state.params, batch)
  for i in range(15):
    state, metrics = step(state, batch, jax.random.key(i))
  after = pair_logp(state.params, batch)
  gap = lambda lp: float(jnp.mean(lp[0] - lp[1]))
  assert gap(after) > gap(before) + 3.0, (gap(before), gap(after))
  assert float(metrics['accuracy']) == 1.0


def test_online_dpo_raises_reward_on_toy_task():
  """Best-vs-worst pairs of 4 samples; margin: mean reward +0.3."""
  params = tfm.init_params(CFG, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(CFG)),
                max_new_tokens=4,
                eos_id=1,
                pad_id=0,
                num_samples=4)
  config = algos.default_config('online_dpo')
  config.beta = 0.5
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ref_params=jax.tree.map(jnp.copy, params),
                     algo_state=algo.init_state())
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx))
  history = []
  for i in range(30):
    state, metrics = step(state, PROMPTS, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.25, history
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.3, history
  assert 0.0 <= float(metrics['pairs/valid_fraction']) <= 1.0
