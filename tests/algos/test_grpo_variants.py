"""Dr. GRPO, DAPO and GSPO: their pieces and whole losses against NumPy (values
and finite-difference gradients), their registry defaults, and a learning test
of each on one shared toy task."""

import dataclasses
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.algos import base
from jaxrlgen.algos import grpo
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Three groups of two sequences, four steps, EOS = 1. Lengths (EOS included)
# 3, 2 | 2, 2 | 4 (truncated: no EOS), 3. The middle group's rewards are equal
# before and after the overlong penalty; the last group's only after.
EOS = 1
ACTIONS = np.array([[3, 4, 1, 0], [3, 1, 0, 0], [2, 1, 0, 0], [5, 1, 0, 0],
                    [2, 2, 2, 2], [6, 6, 1, 0]], np.int32)
MASK = np.array([[1, 1, 1, 0], [1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0],
                 [1, 1, 1, 1], [1, 1, 1, 0]], bool)
REWARDS = np.array([1.0, 0.0, 0.5, 0.5, 1.0, 1.0], np.float32)
_rng = np.random.default_rng(0)
OLD_LOGP = np.log(_rng.uniform(0.1, 0.9, MASK.shape)).astype(np.float32)
# Sequence log-ratios (token means) of SHIFT exactly: with ADV and a 0.1 / 0.2
# clip range, sequences 0, 1, 4, 5 are clipped and 2, 3 are not.
SHIFT = np.array([0.25, -0.15, 0.1, -0.05, 0.3, -0.3])
ADV = np.array([1.2, -0.7, 0.4, -1.5, 0.9, -0.3])
_noise = np.where(MASK, _rng.uniform(-0.1, 0.1, MASK.shape), 0.0)
_noise -= MASK * (_noise.sum(1) / MASK.sum(1))[:, None]
LOGP = (OLD_LOGP + SHIFT[:, None] + _noise).astype(np.float32)
REF_LOGP = np.log(_rng.uniform(0.1, 0.9, MASK.shape)).astype(np.float32)


# ---------------------------------------------------------------- NumPy side.

def np_advantages(rewards, group_size, scale_by_std, eps=1e-4):
  groups = rewards.reshape(-1, group_size).astype(np.float64)
  centred = groups - groups.mean(1, keepdims=True)
  if scale_by_std:
    centred = centred / (groups.std(1, keepdims=True) + eps)
  return centred.reshape(-1)


def np_varied(rewards, group_size):
  groups = rewards.reshape(-1, group_size)
  return np.repeat([len(set(g.tolist())) > 1 for g in groups], group_size)


def np_overlong(length, truncated, max_length, cache_length):
  """Eq. 13 of DAPO, one sequence at a time."""
  if truncated or length > max_length:
    return -1.0
  if length <= max_length - cache_length:
    return 0.0
  return (max_length - cache_length - length) / cache_length


def np_loss(logp, old_logp, adv, mask, *, ref_logp=None, eps_low, eps_high,
            beta=0.0, aggregation, ratio_level='token'):
  """The clipped objective with a token or sequence ratio, in float64."""
  log_ratio = logp - old_logp
  if ratio_level == 'sequence':
    seq = (log_ratio * mask).sum(1) / np.maximum(mask.sum(1), 1)
    log_ratio = np.repeat(seq[:, None], mask.shape[1], axis=1)
  ratio = np.exp(log_ratio)
  a = adv[:, None] if adv.ndim == 1 else adv
  per_token = -np.minimum(ratio * a, np.clip(ratio, 1 - eps_low, 1 + eps_high) * a)
  if beta:
    log_r = ref_logp - logp
    per_token = per_token + beta * (np.exp(log_r) - log_r - 1)
  total = np.where(mask, per_token, 0.0)
  if aggregation == 'token_mean':
    return total.sum() / max(mask.sum(), 1)
  if aggregation == 'sequence_mean':
    return np.mean(total.sum(1) / np.maximum(mask.sum(1), 1))
  return total.sum() / mask.size


def np_variant_loss(logp, cfg):
  """What `grpo.make(cfg)` minimises on the batch above, from scratch."""
  rewards = REWARDS.astype(np.float64)
  t = MASK.shape[1]
  if cfg.overlong_buffer:
    ended = ((ACTIONS == EOS) & MASK).any(1)
    rewards = rewards + np.array([
        np_overlong(n, not e, t, cfg.overlong_buffer * t)
        for n, e in zip(MASK.sum(1), ended)])
  adv = np_advantages(rewards, 2, cfg.scale_by_std)
  mask = MASK
  if cfg.filter_groups:
    mask = MASK & np_varied(rewards, 2)[:, None]
  return np_loss(logp, OLD_LOGP.astype(np.float64), adv, mask,
                 ref_logp=REF_LOGP.astype(np.float64), eps_low=cfg.epsilon_low,
                 eps_high=cfg.epsilon_high, beta=cfg.beta,
                 aggregation=cfg.aggregation, ratio_level=cfg.ratio_level)


# ------------------------------------------------------------- The pieces.

@dataclasses.dataclass(frozen=True)
class LookupEnv:
  """An environment whose 'policy parameters' are its log-probs: the
  gradient of a loss with respect to them is that with respect to logp."""

  num_samples: int = 2
  eos_id: int = EOS

  def evaluate(self, params, rollout):
    del rollout
    return PolicyOutputs(logp=params, entropy=jnp.zeros_like(params))


def hand_rollout():
  return Rollout(context={}, actions=jnp.asarray(ACTIONS),
                 logp=jnp.asarray(OLD_LOGP), mask=jnp.asarray(MASK))


class PiecesTest(parameterized.TestCase):

  def test_varied_groups(self):
    rewards = np.array([1, 0, .5, .5, 1, 1, 0, 0, 0, 1e-3], np.float32)
    np.testing.assert_array_equal(grpo.varied_groups(jnp.asarray(rewards), 2),
                                  np_varied(rewards, 2))

  def test_overlong_penalty(self):
    # Budget 8, ramp over the last 3 tokens; every length, ended or not.
    lengths = np.tile(np.arange(0, 9), 2)
    truncated = np.repeat([False, True], 9)
    got = grpo.overlong_penalty(jnp.asarray(lengths), jnp.asarray(truncated),
                                max_length=8, cache_length=3)
    want = [np_overlong(n, tr, 8, 3) for n, tr in zip(lengths, truncated)]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # The paper's shape: none up to L_max - L_cache, -1/3 a token after,
    # -1 at the budget and for every truncated sequence.
    np.testing.assert_allclose(got[:9], [0, 0, 0, 0, 0, 0, -1 / 3, -2 / 3, -1],
                               atol=1e-6)
    self.assertTrue(np.all(np.asarray(got[9:]) == -1.0))
    # A fractional zone (a fraction of the budget, as the config gives it).
    got = grpo.overlong_penalty(jnp.arange(7), jnp.zeros(7, bool), 6, 1.2)
    np.testing.assert_allclose(
        got, [np_overlong(n, False, 6, 1.2) for n in range(7)], atol=1e-6)
    with self.assertRaisesRegex(ValueError, 'cache_length'):
      grpo.overlong_penalty(jnp.arange(3), jnp.zeros(3, bool), 6, 0)

  @parameterized.product(eps=[(3e-4, 4e-4), (0.1, 0.2)],
                         aggregation=['sequence_mean', 'token_mean'],
                         beta=[0.0, 0.1], jit=[False, True])
  def test_sequence_ratio_loss_and_gradient(self, eps, aggregation, beta, jit):
    adv = ADV
    kwargs = dict(eps_low=eps[0], eps_high=eps[1], beta=beta,
                  aggregation=aggregation, ratio_level='sequence')

    def f(logp):
      return grpo.grpo_loss(
          logp, jnp.asarray(OLD_LOGP), jnp.asarray(adv, jnp.float32),
          jnp.asarray(MASK), ref_logp=jnp.asarray(REF_LOGP),
          epsilon_low=eps[0], epsilon_high=eps[1], beta=beta,
          aggregation=aggregation, ratio_level='sequence')[0]

    if jit:
      f = jax.jit(f)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP))
    ref = functools.partial(np_loss, old_logp=OLD_LOGP.astype(np.float64),
                            adv=adv, mask=MASK,
                            ref_logp=REF_LOGP.astype(np.float64), **kwargs)
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, LOGP),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_sequence_ratio_clips_whole_sequences(self):
    adv = jnp.asarray(ADV, jnp.float32)
    _, metrics = grpo.grpo_loss(jnp.asarray(LOGP), jnp.asarray(OLD_LOGP), adv,
                                jnp.asarray(MASK), epsilon_low=0.1,
                                epsilon_high=0.2, ratio_level='sequence')
    log_s = ((LOGP - OLD_LOGP) * MASK).sum(1) / MASK.sum(1)
    s, a = np.exp(log_s), np.asarray(adv)
    clipped = np.clip(s, 0.9, 1.2) * a < s * a
    np.testing.assert_array_equal(clipped, [1, 1, 0, 0, 1, 1])
    want = (clipped[:, None] * MASK).sum() / MASK.sum()
    np.testing.assert_allclose(metrics['clip_ratio'], want, rtol=1e-6)

  def test_gspo_token(self):
    """GSPO-token equals GSPO for sequence advantages; with token advantages
    its gradient is s_i A_it / |y_i| on each unclipped token (eq. 14)."""
    loss = functools.partial(grpo.grpo_loss, old_logp=jnp.asarray(OLD_LOGP),
                             mask=jnp.asarray(MASK), epsilon_low=0.1,
                             epsilon_high=0.2, aggregation='sequence_mean')
    grad = lambda level, adv: jax.value_and_grad(
        lambda lp: loss(lp, advantages=adv, ratio_level=level)[0])(
            jnp.asarray(LOGP))
    adv = jnp.asarray(ADV, jnp.float32)
    for got, want in zip(grad('sequence_token', adv), grad('sequence', adv)):
      np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

    token_adv = _rng.normal(size=MASK.shape).astype(np.float32)
    value, got = grad('sequence_token', jnp.asarray(token_adv))
    ref = np_loss(LOGP.astype(np.float64), OLD_LOGP.astype(np.float64),
                  token_adv, MASK, eps_low=0.1, eps_high=0.2,
                  aggregation='sequence_mean', ratio_level='sequence')
    np.testing.assert_allclose(value, ref, rtol=1e-5)
    log_s = ((LOGP - OLD_LOGP) * MASK).sum(1) / MASK.sum(1)
    s = np.exp(log_s)[:, None]
    unclipped = ~(np.clip(s, 0.9, 1.2) * token_adv < s * token_adv)
    want = -s * token_adv * unclipped * MASK / (MASK.sum(1, keepdims=True)
                                                * MASK.shape[0])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


# ---------------------------------------------------- The variants, whole.

class VariantTest(parameterized.TestCase):

  @parameterized.parameters(
      ('dr_grpo', {}), ('dr_grpo', {'beta': 0.0}),
      ('dapo', {'overlong_buffer': 0.5}), ('dapo', {'overlong_buffer': 0.0}),
      ('gspo', {}), ('gspo', {'epsilon_low': 0.1, 'epsilon_high': 0.2}))
  def test_prepare_and_loss(self, name, overrides):
    config = algos.default_config(name)
    config.update(overrides)
    cfg = base.make_config(algos.ALGORITHMS.get(name).config_cls, config)
    algo = algos.make(config)
    self.assertEqual(algo.name, name)
    env = LookupEnv()
    state = TrainState(step=jnp.zeros((), jnp.int32), params=None,
                       opt_state=None, ref_params=jnp.asarray(REF_LOGP))
    exp, _, metrics = algo.prepare(env, state, hand_rollout(),
                                   jnp.asarray(REWARDS), None)
    loss, grad = jax.value_and_grad(
        lambda lp: algo.loss(env, lp, exp)[0])(jnp.asarray(LOGP))
    ref = functools.partial(np_variant_loss, cfg=cfg)
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5,
                               atol=1e-7)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, LOGP),
                               atol=1e-5)
    if cfg.filter_groups:
      # The middle group is always out; the last only without the penalty.
      kept = 4 / 6 if cfg.overlong_buffer else 2 / 6
      np.testing.assert_allclose(metrics['groups/kept_ratio'], kept)
      self.assertTrue(np.all(np.asarray(grad)[2:4] == 0))
    if cfg.overlong_buffer:
      # Penalties -0.5, 0 | 0, 0 | -1, -0.5.
      np.testing.assert_allclose(metrics['reward/overlong_penalty'], -2 / 6)

  def test_dr_grpo_is_not_normalised(self):
    """Scaling the rewards scales Dr. GRPO's loss (no std) and the loss is a
    sum over tokens / (B * T), not a mean over the valid ones."""
    algo = algos.make(algos.default_config('dr_grpo'))
    env = LookupEnv()
    state = TrainState(step=jnp.zeros((), jnp.int32), params=None,
                       opt_state=None, ref_params=jnp.asarray(LOGP))

    def loss(rewards, mask):
      rollout = hand_rollout().replace(mask=jnp.asarray(mask))
      exp, _, _ = algo.prepare(env, state, rollout, rewards, None)
      return float(algo.loss(env, jnp.asarray(LOGP), exp)[0])

    rewards = jnp.asarray(REWARDS)
    np.testing.assert_allclose(loss(10 * rewards, MASK),
                               10 * loss(rewards, MASK), rtol=1e-5)
    # Masking tokens removes their terms without renormalising the others.
    ones = np.ones_like(MASK)
    first = np.zeros_like(MASK)
    first[:, 0] = True
    rest = ones & ~first
    np.testing.assert_allclose(loss(rewards, ones),
                               loss(rewards, first) + loss(rewards, rest),
                               rtol=1e-5)

  def test_registry_defaults(self):
    dr = algos.default_config('dr_grpo')
    self.assertFalse(dr.scale_by_std)
    self.assertEqual(dr.aggregation, 'constant')
    dapo = algos.default_config('dapo')
    self.assertEqual((dapo.epsilon_low, dapo.epsilon_high, dapo.beta),
                     (0.2, 0.28, 0.0))
    self.assertEqual(dapo.aggregation, 'token_mean')
    self.assertTrue(dapo.filter_groups)
    self.assertGreater(dapo.overlong_buffer, 0)
    gspo = algos.default_config('gspo')
    self.assertEqual((gspo.epsilon_low, gspo.epsilon_high), (3e-4, 4e-4))
    self.assertEqual(gspo.ratio_level, 'sequence')
    self.assertFalse(algos.make(gspo).uses_reference)
    # One schema: every variant has exactly GRPO's fields.
    self.assertEqual(set(dr.keys()), set(algos.default_config('grpo').keys()))
    self.assertEqual(set(dapo.keys()), set(gspo.keys()))

  @parameterized.parameters('dr_grpo', 'dapo', 'gspo')
  def test_config_errors_name_the_field(self, name):
    config = algos.default_config(name)
    config.ratio_levl = 'sequence'
    with self.assertRaisesRegex(ValueError, r'config\.algo\.ratio_levl'):
      algos.make(config)
    for field, value in (('ratio_level', 'seq'), ('overlong_buffer', 2.0),
                         ('epsilon_high', -0.1)):
      config = algos.default_config(name)
      config[field] = value
      with self.assertRaisesRegex(ValueError, rf'config\.algo\.{field}'):
        algos.make(config)


# ------------------------------------------------- Learning, one toy task.

@pytest.fixture(scope='module')
def toy_task():
  """A tiny policy rewarded for the fraction of its tokens that are 5."""
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=12)
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=6,
                eos_id=1,
                pad_id=0,
                num_samples=8)

  reward_fn = toy.fives_reward

  def train(config, steps=40, learning_rate=3e-3):
    params = tfm.init_params(cfg, jax.random.key(0))
    algo = algos.make(config)
    tx = optax.adam(learning_rate)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=tx.init(params),
                       ref_params=jax.tree.map(jnp.copy, params)
                       if algo.uses_reference else None)
    batch = {'prompt': jnp.full((4, 3), 7, jnp.int32),
             'prompt_mask': jnp.ones((4, 3), bool)}
    step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                     reward_fn=reward_fn, algo=algo, tx=tx),
                   donate_argnums=0)
    history = []
    for i in range(steps):
      state, metrics = step(state, batch, jax.random.key(i))
      history.append(jax.device_get(metrics))
    return history

  return train


def _reward(history, where):
  return float(np.mean([m['reward/mean'] for m in history[where]]))


def test_dr_grpo_learns(toy_task):
  """Margin: the task reward rises by 0.5 in 40 steps."""
  history = toy_task(algos.default_config('dr_grpo'))
  assert _reward(history, slice(0, 3)) < 0.2
  assert _reward(history, slice(-3, None)) > _reward(history, slice(0, 3)) + 0.5
  assert float(history[-1]['kl']) > 0.0


def test_dapo_learns(toy_task):
  """Margin: the task reward rises by 0.4 in 40 steps, and the overlong
  penalty shrinks (EOS comes earlier); groups whose rewards tie drop out."""
  history = toy_task(algos.default_config('dapo'))
  assert _reward(history, slice(0, 3)) < 0.2
  assert _reward(history, slice(-3, None)) > _reward(history, slice(0, 3)) + 0.4
  penalty = [float(m['reward/overlong_penalty']) for m in history]
  assert np.mean(penalty[-3:]) > np.mean(penalty[:3]) + 0.2, penalty
  kept = [float(m['groups/kept_ratio']) for m in history]
  assert all(0.0 <= k <= 1.0 for k in kept) and min(kept) < 1.0, kept


def test_gspo_learns(toy_task):
  """Margin: the task reward rises by 0.5 in 40 steps; later minibatches of a
  rollout clip whole sequences."""
  history = toy_task(algos.default_config('gspo'))
  assert _reward(history, slice(0, 3)) < 0.2
  assert _reward(history, slice(-3, None)) > _reward(history, slice(0, 3)) + 0.5
  assert max(float(m['clip_ratio']) for m in history) > 0.0
