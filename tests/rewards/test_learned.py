"""Learned rewards: reward model and ensemble, discriminator, KL to the
reference."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core.types import Rollout
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import reward_model as rm
from jaxrlgen.models import transformer as tfm
from jaxrlgen.rewards import learned
from jaxrlgen.policies import LMPolicy

CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                            num_layers=1, num_heads=2, num_kv_heads=2,
                            max_seq_len=10)
MODEL = tfm.Transformer(rm.reward_model_config(CFG))
ROLLOUT = Rollout(
    context={'tokens': jnp.array([[0, 7], [7, 3], [7, 4]], jnp.int32),
             'mask': jnp.array([[0, 1], [1, 1], [1, 1]], bool)},
    actions=jnp.array([[5, 1, 0], [5, 5, 1], [9, 0, 0]], jnp.int32),
    logp=jnp.log(jnp.array([[0.5, 0.9, 1.0], [0.2, 0.3, 0.5],
                            [0.7, 1.0, 1.0]])),
    mask=jnp.array([[1, 1, 0], [1, 1, 1], [1, 0, 0]], bool))


def _member(key):
  params = rm.init(CFG, jax.random.key(key))
  params['value_proj']['kernel'] = jax.random.normal(
      jax.random.key(key + 50), params['value_proj']['kernel'].shape)
  return params


@jax.jit
def _scores(params):
  return rm.score_completions(MODEL, params, ROLLOUT.context['tokens'],
                              ROLLOUT.context['mask'], ROLLOUT.actions,
                              ROLLOUT.mask)


def test_reward_model_and_conservative_ensemble():
  members = [_member(k) for k in range(3)]
  scores = np.asarray(jax.vmap(_scores)(rm.stack(members)))
  single = learned.reward_model_reward(MODEL, members[0], offset=1.0,
                                       scale=2.0)
  np.testing.assert_allclose(jax.jit(single)(ROLLOUT, None),
                             (scores[0] - 1.0) / 2.0, rtol=1e-5)
  fn = learned.reward_model_reward(MODEL, rm.stack(members), ensemble=True,
                                   std_coef=1.5)
  np.testing.assert_allclose(jax.jit(fn)(ROLLOUT, None),
                             scores.mean(0) - 1.5 * scores.std(0), rtol=1e-4,
                             atol=1e-5)
  np.testing.assert_allclose(learned.ensemble_reward(jnp.asarray(scores)),
                             scores.mean(0), rtol=1e-6)
  with np.testing.assert_raises_regex(ValueError, 'ensemble'):
    learned.reward_model_reward(MODEL, members[0], std_coef=1.0)


def test_discriminator_reward_forms():
  params = _member(0)
  logit_fn = functools.partial(rm.score, MODEL)
  logits = np.asarray(_scores(params), np.float64)
  log_d = jax.jit(learned.discriminator_reward(logit_fn, params))(ROLLOUT,
                                                                 None)
  np.testing.assert_allclose(log_d, -np.logaddexp(0.0, -logits), rtol=1e-5)
  assert np.all(np.asarray(log_d) <= 0.0)
  logit = learned.discriminator_reward(logit_fn, params, form='logit')
  np.testing.assert_allclose(jax.jit(logit)(ROLLOUT, None), logits, rtol=1e-5)
  with np.testing.assert_raises_regex(ValueError, 'known'):
    learned.discriminator_reward(logit_fn, params, form='wasserstein')


def test_per_token_kl_estimators():
  logp = np.log(np.array([[0.5, 0.2], [0.3, 0.9]]))
  ref = np.log(np.array([[0.4, 0.4], [0.3, 0.1]]))
  mask = np.array([[1, 1], [1, 0]], bool)
  r = ref - logp
  for name, want in (('k1', -r), ('k2', 0.5 * r ** 2),
                     ('k3', np.exp(r) - 1 - r)):
    got = learned.per_token_kl(jnp.asarray(logp), jnp.asarray(ref),
                               jnp.asarray(mask), estimator=name)
    np.testing.assert_allclose(got, np.where(mask, want, 0.0), rtol=1e-5,
                               atol=1e-7)


def test_kl_to_reference_reward_sums_log_ratios_of_valid_tokens():
  env = TextEnv(LMPolicy(tfm.Transformer(CFG)),
                max_new_tokens=3,
                eos_id=1,
                pad_id=0)
  ref_params = tfm.init_params(CFG, jax.random.key(7))
  fn = learned.kl_to_reference_reward(env, ref_params, coef=0.3)
  ref_logp = np.asarray(jax.jit(env.evaluate)(ref_params, ROLLOUT).logp)
  logp = np.asarray(ROLLOUT.logp)
  want = -0.3 * np.sum(np.where(ROLLOUT.mask, logp - ref_logp, 0.0), axis=1)
  np.testing.assert_allclose(jax.jit(fn)(ROLLOUT, None), want, rtol=1e-5)
  # The exact KL of a policy with itself is 0.
  self_kl = learned.kl_to_reference_reward(env, ref_params, coef=1.0,
                                           estimator='k3')
  same = ROLLOUT.replace(logp=jnp.asarray(ref_logp))
  np.testing.assert_allclose(jax.jit(self_kl)(same, None), 0.0, atol=1e-6)
