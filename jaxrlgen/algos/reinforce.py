"""REINFORCE with a baseline, and its greedy-baseline variants SCST and ReMax.

All three minimise the score-function (likelihood-ratio) estimator of the
expected reward (Williams 1992, "Simple statistical gradient-following
algorithms for connectionist reinforcement learning"):

  loss = -sum_t logp_t * A / normaliser,   A = r - b,

on-policy, one gradient step per rollout; they differ only in the baseline b,
which must not depend on the sample it is subtracted from so that it stays an
unbiased control variate:

  reinforce: b = an exponential moving average of past batches' mean reward,
             kept in `TrainState.algo_state` (the value from BEFORE this
             batch is used, then updated; so the first batch has b = 0).
  scst:      b = the reward of the greedy (argmax) decode of the same prompt
             by the current policy (Rennie et al. 2017, "Self-critical
             sequence training for image captioning").
  remax:     the same greedy baseline, for LLM alignment (Li et al. 2023,
             "ReMax: A Simple, Effective, and Efficient Reinforcement
             Learning Method for Aligning Large Language Models").

SCST and ReMax share one implementation (`make_greedy_baseline`). Their
paper-level estimators are identical -- Algorithm 1 of ReMax is
`loss = -(logp.sum(-1) * (r - r_greedy)).mean()`, SCST's eq. 9 likewise --
and the differences are the choices ReMax's released trainer makes, exposed
as `ReMaxConfig` defaults:
  * aggregation 'token_mean' (sum over tokens / number of tokens, as the
    trainer's actor loss) instead of SCST's per-sequence sum;
  * the reward difference r - r_greedy clipped to +-`reward_clip` (5);
  * an RLHF-style per-token KL penalty inside the return,
    A_t = (r - r_greedy) - kl_reward_coef * (logp_t - ref_logp_t)
    (`kl_reward_coef`), besides the k3 loss term all algorithms offer;
  * one sample per prompt (`config.rl.group_size = 1`, a run setting).
With aggregation='sequence_sum', reward_clip=0 and kl_reward_coef=0, ReMax is
SCST exactly.

Normalisers (`aggregation`): 'sequence_sum' divides the summed per-token
terms by the number of sequences B (the unbiased estimator of the gradient of
E[r], Williams' form); 'token_mean', 'sequence_mean' and 'constant' are
`grpo.aggregate`'s.

Sampling with top-k / top-p makes the rollout come from a truncated policy,
which this on-policy estimator does not correct for; keep them off.
"""

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import grpo
from jaxrlgen.core import masked
from jaxrlgen.core.types import Rollout

AGGREGATIONS = ('sequence_sum',) + grpo.AGGREGATIONS
BASELINE_INITS = ('zero', 'first_batch')


def aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str,
              max_tokens: int | None = None) -> jax.Array:
  """Reduces f32[B, T] per-token terms to a scalar (see module docstring)."""
  if aggregation == 'sequence_sum':
    return masked.masked_sum(per_token, mask) / per_token.shape[0]
  return grpo.aggregate(per_token, mask, aggregation, max_tokens)


def policy_gradient_loss(logp: jax.Array, advantages: jax.Array,
                         mask: jax.Array, *, aggregation: str = 'sequence_sum',
                         max_tokens: int | None = None):
  """The REINFORCE surrogate, to minimise: -sum_t logp_t * A_t / normaliser.

  Its gradient is the score-function estimate of -grad E[r] (for
  'sequence_sum'; a rescaling of it for the other aggregations).

  Args:
    logp: f32[B, T] log-probs of the sampled actions under the policy being
      optimised (the sampling policy: the estimator is on-policy).
    advantages: f32[B] per-sequence or f32[B, T] per-token advantages,
      treated as constants (no gradient flows through them).
    mask: bool[B, T] valid steps.
    aggregation: 'sequence_sum', 'token_mean', 'sequence_mean' or 'constant'.
    max_tokens: the 'constant' normaliser's length (default T).
  Returns:
    (loss, metrics) with metric `policy_loss`.
  """
  chex.assert_rank([logp, mask], 2)
  chex.assert_equal_shape([logp, mask])
  if advantages.ndim == 1:
    chex.assert_equal_shape_prefix([logp, advantages], 1)
    advantages = advantages[:, None]
  else:
    chex.assert_equal_shape([logp, advantages])
  advantages = jax.lax.stop_gradient(advantages.astype(jnp.float32))
  per_token = -logp * advantages
  policy_loss = aggregate(per_token, mask, aggregation, max_tokens)
  return policy_loss, {'policy_loss': policy_loss}


def ema_baseline(baseline: jax.Array, count: jax.Array,
                 mean_reward: jax.Array, *, decay: float,
                 init: str = 'first_batch') -> tuple[jax.Array, jax.Array]:
  """One update of the moving-average reward baseline.

  Args:
    baseline: f32[] the current baseline.
    count: i32[] batches seen so far.
    mean_reward: f32[] this batch's mean reward.
    decay: the EMA's decay in [0, 1): b <- decay * b + (1 - decay) * mean.
    init: 'zero' (the EMA starts from b = 0) or 'first_batch' (the first
      batch's mean replaces the initial 0, so the EMA does not spend its
      first ~1/(1 - decay) batches climbing out of zero).
  Returns:
    (new baseline f32[], new count i32[]).
  """
  chex.assert_rank([baseline, count, mean_reward], 0)
  new = decay * baseline + (1.0 - decay) * mean_reward
  if init == 'first_batch':
    new = jnp.where(count == 0, mean_reward, new)
  elif init != 'zero':
    raise ValueError(f'Unknown baseline init {init!r}; known: {BASELINE_INITS}.')
  return new.astype(jnp.float32), count + 1


def greedy_baseline_advantages(rewards: jax.Array, greedy_rewards: jax.Array,
                               *, reward_clip: float = 0.0) -> jax.Array:
  """Self-critical advantages r - r_greedy of G samples per prompt.

  Args:
    rewards: f32[N * G] rewards of the samples, G consecutive per prompt.
    greedy_rewards: f32[N] reward of each prompt's greedy decode.
    reward_clip: clip the difference to [-reward_clip, reward_clip]; 0: off.
  Returns:
    f32[N * G] advantages.
  """
  chex.assert_rank([rewards, greedy_rewards], 1)
  n, b = greedy_rewards.shape[0], rewards.shape[0]
  if b % n:
    raise ValueError(f'{b} samples do not split into {n} prompts.')
  adv = (rewards.astype(jnp.float32)
         - jnp.repeat(greedy_rewards.astype(jnp.float32), b // n))
  if reward_clip:
    adv = jnp.clip(adv, -reward_clip, reward_clip)
  return adv


def per_token_kl_penalty(advantages: jax.Array, logp: jax.Array,
                         ref_logp: jax.Array, mask: jax.Array, *,
                         kl_coef: float) -> jax.Array:
  """RLHF-style per-token return A_t = A - kl_coef * (logp_t - ref_logp_t).

  The k1 KL sample of step t is charged to that step's return (ReMax's
  trainer, after InstructGPT's KL-in-reward); its expectation under pi is
  KL(pi || pi_ref) at that step.

  Args:
    advantages: f32[B] sequence advantages.
    logp, ref_logp: f32[B, T] behaviour and reference log-probs.
    mask: bool[B, T].
    kl_coef: the penalty's weight.
  Returns:
    f32[B, T] per-token advantages (0 on masked steps).
  """
  chex.assert_rank([advantages, logp, ref_logp, mask], [1, 2, 2, 2])
  chex.assert_equal_shape([logp, ref_logp, mask])
  per_token = advantages[:, None] - kl_coef * (logp - ref_logp)
  return jnp.where(mask, per_token, 0.0)


def check_aggregation(aggregation: str) -> None:
  if aggregation not in AGGREGATIONS:
    raise ValueError(f'config.algo.aggregation={aggregation!r}; known: '
                     f'{AGGREGATIONS}.')


def check_nonnegative(**values) -> None:
  for name, value in values.items():
    if value < 0:
      raise ValueError(f'config.algo.{name}={value} must be >= 0.')


def pg_loss_fn(aggregation: str, entropy_coef: float, kl_coef: float):
  """`Algorithm.loss` of the REINFORCE family over a
  `base.PolicyGradientExperience` (`ref_logp` needed with kl_coef)."""

  def loss(env, params, exp: base.PolicyGradientExperience):
    rollout = exp.rollout
    out = env.evaluate(params, rollout)
    value, metrics = policy_gradient_loss(
        out.logp, exp.advantages, rollout.mask, aggregation=aggregation,
        max_tokens=rollout.num_steps)
    reg, reg_metrics = base.regularizers(
        out, rollout, exp.ref_logp, entropy_coef=entropy_coef,
        kl_coef=kl_coef)
    return value + reg, {**metrics, **reg_metrics}

  return loss


@dataclasses.dataclass(frozen=True)
class ReinforceConfig:
  """Hyperparameters of REINFORCE with a moving-average baseline."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL,
      'baseline_decay': schema.Means(
          zero="the baseline is the last batch's mean"),
      'reward_clip': schema.Means(zero='no clipping')}

  baseline_decay: float = 0.9  # EMA decay of the mean-reward baseline.
  baseline_init: str = 'first_batch'  # zero | first_batch.
  aggregation: str = 'sequence_sum'  # sequence_sum | token_mean | ...
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference loss term; 0: no reference.

  def __post_init__(self):
    check_aggregation(self.aggregation)
    if not 0.0 <= self.baseline_decay < 1.0:
      raise ValueError(f'config.algo.baseline_decay={self.baseline_decay} '
                       'must be in [0, 1).')
    if self.baseline_init not in BASELINE_INITS:
      raise ValueError(f'config.algo.baseline_init={self.baseline_init!r}; '
                       f'known: {BASELINE_INITS}.')
    check_nonnegative(entropy_coef=self.entropy_coef, kl_coef=self.kl_coef)


def make(cfg: ReinforceConfig) -> base.Algorithm:
  """REINFORCE with an EMA reward baseline as an `Algorithm`."""

  def init_state():
    return {'baseline': jnp.zeros((), jnp.float32),
            'count': jnp.zeros((), jnp.int32)}

  def prepare(env, state, rollout, rewards, key):
    del key
    algo_state = state.algo_state
    # The baseline from before this batch: independent of these samples.
    advantages = rewards.astype(jnp.float32) - algo_state['baseline']
    baseline, count = ema_baseline(
        algo_state['baseline'], algo_state['count'], jnp.mean(rewards),
        decay=cfg.baseline_decay, init=cfg.baseline_init)
    ref_logp = (base.reference_logp(env, state, rollout) if cfg.kl_coef
                else None)
    experience = base.PolicyGradientExperience(
        rollout=rollout, advantages=advantages, ref_logp=ref_logp)
    return experience, {'baseline': baseline, 'count': count}, {
        'advantages/mean': jnp.mean(advantages),
        'baseline': algo_state['baseline']}

  return base.Algorithm(
      name='reinforce', prepare=prepare,
      loss=pg_loss_fn(cfg.aggregation, cfg.entropy_coef, cfg.kl_coef),
      init_state=init_state, uses_reference=cfg.kl_coef > 0)


@dataclasses.dataclass(frozen=True)
class SCSTConfig:
  """Hyperparameters of self-critical sequence training."""

  SPECIAL: ClassVar[schema.Special] = base.SPECIAL

  aggregation: str = 'sequence_sum'  # sequence_sum | token_mean | ...
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference loss term; 0: no reference.

  def __post_init__(self):
    check_aggregation(self.aggregation)
    check_nonnegative(entropy_coef=self.entropy_coef, kl_coef=self.kl_coef)


@dataclasses.dataclass(frozen=True)
class ReMaxConfig:
  """Hyperparameters of ReMax (defaults: its released trainer's choices)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL,
      'baseline_decay': schema.Means(
          zero="the baseline is the last batch's mean"),
      'reward_clip': schema.Means(zero='no clipping')}

  aggregation: str = 'token_mean'  # sequence_sum (Algorithm 1) | token_mean.
  reward_clip: float = 5.0  # Clip r - r_greedy to +-this; 0: off.
  kl_reward_coef: float = 0.0  # Per-token KL penalty in the return.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference loss term; 0: no reference.

  def __post_init__(self):
    check_aggregation(self.aggregation)
    check_nonnegative(reward_clip=self.reward_clip,
                      kl_reward_coef=self.kl_reward_coef,
                      entropy_coef=self.entropy_coef, kl_coef=self.kl_coef)


def greedy_rewards(env, score, params, rollout: Rollout,
                   key: jax.Array) -> jax.Array:
  """f32[N] rewards of the greedy decodes of the rollout's N prompts.

  Args:
    env: the text environment the rollout was sampled in.
    score: (rollout of the N prompts, one sequence each) -> f32[N], the
      run's reward (`Algorithm.needs_score`).
    params: the policy's parameters.
    rollout: B = N * G sequences, G = env.num_samples consecutive samples of
      each prompt; the prompts are its `context` `tokens` and `mask`.
    key: PRNG key of the decode.
  """
  g = env.num_samples
  prompts = {'prompt': rollout.context['tokens'][::g],
             'prompt_mask': rollout.context['mask'][::g]}
  greedy = env.greedy().rollout(params, prompts, key)
  return jax.lax.stop_gradient(score(greedy))


def make_greedy_baseline(name: str, *, aggregation: str, entropy_coef: float,
                         kl_coef: float, reward_clip: float = 0.0,
                         kl_reward_coef: float = 0.0) -> base.Algorithm:
  """REINFORCE with the greedy decode's reward as baseline (SCST, ReMax)."""

  def prepare(env, state, rollout, rewards, key, *, score):
    baseline = greedy_rewards(env, score, state.params, rollout, key)
    advantages = greedy_baseline_advantages(rewards, baseline,
                                            reward_clip=reward_clip)
    metrics = {'baseline': jnp.mean(baseline)}
    ref_logp = None
    if kl_coef or kl_reward_coef:
      ref_logp = base.reference_logp(env, state, rollout)
    if kl_reward_coef:
      old_logp = base.behaviour_logp(env, state, rollout)
      metrics['kl'] = masked.masked_mean(old_logp - ref_logp, rollout.mask)
      advantages = per_token_kl_penalty(advantages, old_logp, ref_logp,
                                        rollout.mask, kl_coef=kl_reward_coef)
      metrics['advantages/mean'] = masked.masked_mean(advantages, rollout.mask)
    else:
      metrics['advantages/mean'] = jnp.mean(advantages)
    experience = base.PolicyGradientExperience(
        rollout=rollout, advantages=advantages,
        ref_logp=ref_logp if kl_coef else None)
    return experience, state.algo_state, metrics

  return base.Algorithm(
      name=name, prepare=prepare, needs_score=True,
      loss=pg_loss_fn(aggregation, entropy_coef, kl_coef),
      uses_reference=kl_coef > 0 or kl_reward_coef > 0,
      env_requires=('greedy',))


def make_scst(cfg: SCSTConfig) -> base.Algorithm:
  """SCST as an `Algorithm`."""
  return make_greedy_baseline('scst', aggregation=cfg.aggregation,
                              entropy_coef=cfg.entropy_coef,
                              kl_coef=cfg.kl_coef)


def make_remax(cfg: ReMaxConfig) -> base.Algorithm:
  """ReMax as an `Algorithm`."""
  return make_greedy_baseline('remax', aggregation=cfg.aggregation,
                              entropy_coef=cfg.entropy_coef,
                              kl_coef=cfg.kl_coef,
                              reward_clip=cfg.reward_clip,
                              kl_reward_coef=cfg.kl_reward_coef)
