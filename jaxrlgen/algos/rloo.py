"""REINFORCE Leave-One-Out (Ahmadian et al. 2024, "Back to Basics: Revisiting
REINFORCE Style Optimization for Learning from Human Feedback in LLMs"; the
estimator is Kool et al. 2019's "Buy 4 REINFORCE samples, get a baseline for
free!").

Each prompt's k >= 2 samples form a group; sample i's baseline is the mean
reward of the OTHER k - 1 samples, which is independent of sample i, so the
estimator stays unbiased:

  A_i = r_i - 1/(k-1) sum_{j != i} r_j = k/(k-1) * (r_i - mean_j r_j).

The whole completion is one action (the paper's sequence-level view):
loss = -mean_i A_i * sum_t logp_{i,t} (`reinforce.policy_gradient_loss` with
aggregation 'sequence_sum'), one on-policy step per rollout. As in the
paper, a KL penalty may be folded into the reward before the baseline,
r_i <- r_i - kl_reward_coef * sum_t (logp - ref_logp) (`kl_reward_coef`);
`kl_coef` is the k3 loss term every algorithm offers.
"""

import dataclasses
from typing import ClassVar

import chex
import jax
import jax.numpy as jnp

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import reinforce
from jaxrlgen.core import masked


def _check_group_size(group_size: int) -> None:
  if group_size < 2:
    raise ValueError(
        f'RLOO needs at least 2 samples per prompt for its leave-one-out '
        f'baseline; got {group_size}: set config.rl.group_size >= 2.')


def rloo_advantages(rewards: jax.Array, group_size: int) -> jax.Array:
  """Leave-one-out advantages r_i - mean of the other k - 1 rewards.

  Args:
    rewards: f32[B], B = N * group_size, each group's samples contiguous.
    group_size: k >= 2.
  Returns:
    f32[B] advantages.
  """
  chex.assert_rank(rewards, 1)
  _check_group_size(group_size)
  grouped = rewards.reshape(-1, group_size).astype(jnp.float32)
  others = (jnp.sum(grouped, axis=1, keepdims=True) - grouped) / (group_size - 1)
  return (grouped - others).reshape(-1)


def kl_penalized_rewards(rewards: jax.Array, logp: jax.Array,
                         ref_logp: jax.Array, mask: jax.Array, *,
                         kl_coef: float) -> jax.Array:
  """r - kl_coef * sum_t (logp_t - ref_logp_t): the sequence's KL sample
  log pi(y|x) - log pi_ref(y|x) charged to its reward.

  Args:
    rewards: f32[B].
    logp, ref_logp: f32[B, T] behaviour and reference log-probs.
    mask: bool[B, T].
    kl_coef: the penalty's weight.
  Returns:
    f32[B].
  """
  chex.assert_rank([rewards, logp, ref_logp, mask], [1, 2, 2, 2])
  chex.assert_equal_shape([logp, ref_logp, mask])
  return rewards - kl_coef * masked.masked_sum(logp - ref_logp, mask, axis=1)


@dataclasses.dataclass(frozen=True)
class RLOOConfig:
  """Hyperparameters of RLOO (needs config.rl.group_size >= 2)."""

  SPECIAL: ClassVar[schema.Special] = base.SPECIAL

  aggregation: str = 'sequence_sum'  # sequence_sum | token_mean | ...
  kl_reward_coef: float = 0.0  # Sequence KL penalty folded into the reward.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference loss term; 0: no reference.
  # Fraction of each sample's steps in the loss (see GRPOConfig); < 1 needs
  # env.subsample_steps (the denoising environment).
  timestep_fraction: float = 1.0

  def __post_init__(self):
    base.check_step_fraction(self.timestep_fraction)
    reinforce.check_aggregation(self.aggregation)
    reinforce.check_nonnegative(kl_reward_coef=self.kl_reward_coef,
                                entropy_coef=self.entropy_coef,
                                kl_coef=self.kl_coef)


def make(cfg: RLOOConfig) -> base.Algorithm:
  """RLOO as an `Algorithm`; fails at trace time for groups of one."""

  def prepare(env, state, rollout, rewards, key):
    _check_group_size(env.num_samples)
    rewards = rewards.astype(jnp.float32)
    metrics = {}
    ref_logp = None
    if cfg.kl_reward_coef:  # The whole sample's KL, before any subset.
      ref_logp = base.reference_logp(env, state, rollout)
      old_logp = base.behaviour_logp(env, state, rollout)
      rewards = kl_penalized_rewards(rewards, old_logp, ref_logp, rollout.mask,
                                     kl_coef=cfg.kl_reward_coef)
      metrics['kl'] = masked.masked_mean(old_logp - ref_logp, rollout.mask)
    advantages = rloo_advantages(rewards, env.num_samples)
    metrics['advantages/mean'] = jnp.mean(advantages)
    metrics['advantages/std'] = jnp.std(advantages)
    trained = base.train_steps(env, rollout, cfg.timestep_fraction, key)
    if cfg.kl_coef and (ref_logp is None or trained is not rollout):
      ref_logp = base.reference_logp(env, state, trained)
    rollout = trained
    experience = base.PolicyGradientExperience(
        rollout=rollout, advantages=advantages,
        ref_logp=ref_logp if cfg.kl_coef else None)
    return experience, state.algo_state, metrics

  return base.Algorithm(
      name='rloo', prepare=prepare,
      loss=reinforce.pg_loss_fn(cfg.aggregation, cfg.entropy_coef,
                                cfg.kl_coef),
      uses_reference=cfg.kl_coef > 0 or cfg.kl_reward_coef > 0,
      env_requires=base.step_subset_requires(cfg.timestep_fraction))
