"""Learned rewards as pure `(rollout, batch) -> f32[B]` functions.

  * `reward_model_reward`: a reward model's score of prompt + completion
    (Ziegler et al. 2019), or the mean / mean - k * std of an ensemble's
    scores, a conservative reward that is lower where the members disagree
    (Coste et al. 2024, "Reward model ensembles help mitigate
    overoptimization").
  * `discriminator_reward`: a classifier's log-probability that a sample is
    real (GAN-style sequence generation, Yu et al. 2017, SeqGAN) or its
    logit, log D - log(1 - D) (Fu et al. 2018, AIRL).
  * `kl_to_reference_reward`: -coef * KL(pi || pi_ref) summed over a
    sequence's tokens, from the tokens' log-probs (the per-token terms are
    `per_token_kl`).

Each closes over its parameters: rebuild the function to change them, or
pass parameters that live in the training state through a closure built
inside the step.
"""

from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.core.types import Rollout
from jaxrlgen.models import reward_model as rm
from jaxrlgen.models import transformer as tfm

Params = Any
KL_ESTIMATORS = ('k1', 'k2', 'k3')
DISCRIMINATOR_FORMS = ('log_d', 'logit')


def _completion_tokens(rollout: Rollout) -> tuple[jax.Array, jax.Array]:
  return rm.join(rollout.context['tokens'], rollout.context['mask'],
                 rollout.actions, rollout.mask)


def ensemble_reward(scores: jax.Array, *, std_coef: float = 0.0) -> jax.Array:
  """f32[B] mean - std_coef * std over the K members of f32[K, B] scores."""
  chex.assert_rank(scores, 2)
  reward = jnp.mean(scores, axis=0)
  if std_coef:
    reward = reward - std_coef * jnp.std(scores, axis=0)
  return reward


def reward_model_reward(model: tfm.Transformer, params: Params, *,
                        ensemble: bool = False, std_coef: float = 0.0,
                        offset: float = 0.0, scale: float = 1.0) -> Callable:
  """A reward model (or ensemble) as a reward.

  Args:
    model: the reward model's Transformer (`value_head=True`).
    params: its parameters; with `ensemble`, K members stacked on axis 0
      (`reward_model.stack`).
    ensemble: whether `params` is a stacked ensemble.
    std_coef: k of the conservative ensemble reward mean - k * std (0: mean).
    offset, scale: the reward is (score - offset) / scale, e.g. to centre the
      supervised policy's samples at 0 with unit spread.
  Returns:
    `(rollout, batch) -> f32[B]`.
  """
  if std_coef < 0:
    raise ValueError(f'reward_model_reward std_coef={std_coef} must be >= 0.')
  if std_coef and not ensemble:
    raise ValueError('std_coef > 0 needs an ensemble of reward models '
                     '(ensemble=True with stacked params).')
  if scale <= 0:
    raise ValueError(f'reward_model_reward scale={scale} must be > 0.')

  def reward_fn(rollout: Rollout, batch) -> jax.Array:
    del batch
    tokens, mask = _completion_tokens(rollout)
    if ensemble:
      scores = ensemble_reward(rm.score_ensemble(model, params, tokens, mask),
                               std_coef=std_coef)
    else:
      scores = rm.score(model, params, tokens, mask)
    return (scores - offset) / scale

  return reward_fn


def discriminator_reward(logit_fn: Callable[[Params, jax.Array, jax.Array],
                                            jax.Array],
                         params: Params, *, form: str = 'log_d') -> Callable:
  """A real-vs-generated classifier as a reward.

  Args:
    logit_fn: (params, tokens i32[B, L], mask bool[B, L]) -> f32[B] logit of
      "real" for prompt + completion (e.g. `functools.partial(
      reward_model.score, model)`: a reward model is a sequence classifier).
    params: the classifier's parameters.
    form: 'log_d': log D = log sigmoid(logit), at most 0, steepest where the
      classifier is sure the sample is fake; 'logit': log D - log(1 - D).
  Returns:
    `(rollout, batch) -> f32[B]`.
  """
  if form not in DISCRIMINATOR_FORMS:
    raise ValueError(f'discriminator_reward form={form!r}; known: '
                     f'{DISCRIMINATOR_FORMS}.')

  def reward_fn(rollout: Rollout, batch) -> jax.Array:
    del batch
    logits = logit_fn(params, *_completion_tokens(rollout))
    chex.assert_shape(logits, (rollout.batch_size,))
    logits = logits.astype(jnp.float32)
    return jax.nn.log_sigmoid(logits) if form == 'log_d' else logits

  return reward_fn


def per_token_kl(logp: jax.Array, ref_logp: jax.Array, mask: jax.Array, *,
                 estimator: str = 'k1') -> jax.Array:
  """f32[B, T] per-token estimates of KL(pi || pi_ref) from samples of pi.

  With r = log pi_ref - log pi of the sampled token (Schulman 2020,
  "Approximating KL divergence"): k1 = -r (unbiased; its sum over a sequence
  is the sequence's log-ratio, whose mean is the sequence KL), k2 = r^2 / 2
  (low variance, biased), k3 = exp(r) - 1 - r (unbiased, never negative).

  Args:
    logp: f32[B, T] log-probs of the sampled tokens under pi.
    ref_logp: f32[B, T] under pi_ref.
    mask: bool[B, T] valid steps; the estimate is 0 elsewhere.
    estimator: k1 | k2 | k3.
  """
  chex.assert_rank([logp, ref_logp, mask], 2)
  chex.assert_equal_shape([logp, ref_logp, mask])
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f'KL estimator {estimator!r}; known: {KL_ESTIMATORS}.')
  r = ref_logp.astype(jnp.float32) - logp.astype(jnp.float32)
  if estimator == 'k1':
    kl = -r
  elif estimator == 'k2':
    kl = 0.5 * r * r
  else:
    kl = jnp.expm1(r) - r
  return jnp.where(mask, kl, 0.0)


def kl_to_reference_reward(env, ref_params: Params, *, coef: float,
                           estimator: str = 'k1') -> Callable:
  """-coef * the sequence's summed per-token KL(pi || pi_ref) as a reward.

  pi's log-probs are the rollout's own (`rollout.logp`, the sampling
  distribution); pi_ref's come from one teacher-forced pass of `ref_params`
  through `env.evaluate`. Add it to a task reward (`rewards.weighted`) for the
  KL-regularised objective of Ziegler et al. 2019 under any algorithm.
  """
  if coef < 0:
    raise ValueError(f'kl_to_reference_reward coef={coef} must be >= 0.')
  if estimator not in KL_ESTIMATORS:
    raise ValueError(f'KL estimator {estimator!r}; known: {KL_ESTIMATORS}.')

  def reward_fn(rollout: Rollout, batch) -> jax.Array:
    del batch
    ref_logp = jax.lax.stop_gradient(env.evaluate(ref_params, rollout).logp)
    kl = per_token_kl(rollout.logp, ref_logp, rollout.mask,
                      estimator=estimator)
    return -coef * jnp.sum(kl, axis=1)

  return reward_fn
