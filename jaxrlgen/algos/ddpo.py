"""DDPO and DPOK: RL fine-tuning of diffusion models as policy gradients over
the denoising MDP of `jaxrlgen.envs.diffusion`.

The losses are the existing ones, applied unchanged to a denoising Rollout
(actions: x_{t-1} per step; logp: the step's Gaussian log-density):

  ddpo_sf: DDPO's score-function estimator (Black et al. 2023, "Training
           Diffusion Models with Reinforcement Learning", eq. 4): REINFORCE,
           `reinforce.policy_gradient_loss`, averaged over steps and samples;
           one gradient step per batch of samples.
  ddpo_is: DDPO's importance-sampling estimator with PPO's clipped ratio
           (their eq. 5 and section 4.3): `ppo.ppo_policy_loss`, several
           minibatch steps per batch of samples.
  dpok:    Fan et al. 2023, "DPOK: Reinforcement Learning for Fine-tuning
           Text-to-Image Diffusion Models": the clipped policy-gradient term
           plus kl_coef times their upper bound of KL(p_theta(x_0) ||
           p_pre(x_0)), the per-step KLs of the Gaussian transitions, which with
           equal variances are ||mu_theta - mu_pre||^2 / (2 sigma_t^2)
           (their Lemma 4.1). The per-condition reward normalisation below
           stands in for the learned value baseline of their implementation.

What is new here is what all three share:

  * Per-condition reward normalisation with running statistics (DDPO's
    per-prompt stat tracker): each condition keeps a ring buffer of its last
    `buffer_size` rewards; a sample's advantage is its reward standardised by
    its condition's buffer (this batch included) once that holds
    `min_count` rewards, by the batch's statistics before.
  * Advantage clipping to [-adv_clip, adv_clip].
  * Training on a random subset of `timestep_fraction` of the K steps of each
    sample (`base.train_steps`), which cuts the cost of every gradient
    step by the same fraction (the group-relative losses offer it too).

The condition of a sample is `rollout.context['label']`; ids outside
[0, num_conditions) are not tracked (their samples use batch statistics).
"""

import dataclasses
from typing import ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import ppo
from jaxrlgen.algos import reinforce
from jaxrlgen.core import masked
from jaxrlgen.core.types import Rollout

ESTIMATORS = ('sf', 'is')


def init_reward_stats(num_conditions: int, buffer_size: int):
  """Empty per-condition ring buffers of rewards.

  Returns:
    {'rewards': f32[C, N], 'count': i32[C] rewards held (<= N), 'next': i32[C]
    the slot the next reward goes to}.
  """
  return {'rewards': jnp.zeros((num_conditions, buffer_size), jnp.float32),
          'count': jnp.zeros((num_conditions,), jnp.int32),
          'next': jnp.zeros((num_conditions,), jnp.int32)}


def update_reward_stats(stats, condition: jax.Array, rewards: jax.Array):
  """Appends each sample's reward to its condition's ring buffer.

  Samples of one condition are appended in batch order; when a batch holds
  more than N of them only the last N can survive, so only those are written
  (which also keeps the scatter free of colliding writes).

  Args:
    stats: from `init_reward_stats`.
    condition: i32[B] condition ids.
    rewards: f32[B].
  Returns:
    The updated stats.
  """
  chex.assert_rank([condition, rewards], 1)
  chex.assert_equal_shape([condition, rewards])
  num_conditions, size = stats['rewards'].shape
  onehot = condition[:, None] == jnp.arange(num_conditions)[None]
  per_condition = jnp.sum(onehot, axis=0, dtype=jnp.int32)  # [C]
  # Rank of each sample among the earlier samples of its condition.
  earlier = jnp.cumsum(onehot, axis=0, dtype=jnp.int32) - onehot
  tracked = jnp.any(onehot, axis=1)
  rank = jnp.sum(jnp.where(onehot, earlier, 0), axis=1)
  safe = jnp.where(tracked, condition, 0)
  kept = tracked & (rank >= per_condition[safe] - size)
  slot = (stats['next'][safe] + rank) % size
  # Row index num_conditions is out of bounds: dropped writes.
  row = jnp.where(kept, condition, num_conditions)
  buffer = stats['rewards'].at[row, slot].set(rewards.astype(jnp.float32),
                                              mode='drop')
  return {'rewards': buffer,
          'count': jnp.minimum(stats['count'] + per_condition, size),
          'next': (stats['next'] + per_condition) % size}


def reward_moments(stats) -> tuple[jax.Array, jax.Array]:
  """Mean and (population) std f32[C] of each condition's buffered rewards."""
  _, size = stats['rewards'].shape
  valid = jnp.arange(size)[None] < stats['count'][:, None]
  mean = masked.masked_mean(stats['rewards'], valid, axis=1)
  var = masked.masked_var(stats['rewards'], valid, axis=1)
  return mean, jnp.sqrt(var)


def per_condition_advantages(stats, condition: jax.Array, rewards: jax.Array,
                             *, min_count: int, eps: float = 1e-6
                             ) -> jax.Array:
  """f32[B] rewards standardised per condition (DDPO's stat tracker).

  Args:
    stats: the buffers AFTER this batch was added (`update_reward_stats`).
    condition: i32[B] condition ids.
    rewards: f32[B].
    min_count: buffered rewards a condition needs before its own statistics
      are used; below that the batch's mean and std are.
    eps: added to the std.
  """
  chex.assert_rank([condition, rewards], 1)
  num_conditions, _ = stats['rewards'].shape
  rewards = rewards.astype(jnp.float32)
  mean, std = reward_moments(stats)
  tracked = (condition >= 0) & (condition < num_conditions)
  safe = jnp.where(tracked, condition, 0)
  own = tracked & (stats['count'][safe] >= min_count)
  centre = jnp.where(own, mean[safe], jnp.mean(rewards))
  scale = jnp.where(own, std[safe], jnp.std(rewards))
  return (rewards - centre) / (scale + eps)


@dataclasses.dataclass(frozen=True)
class DDPOConfig:
  """Hyperparameters of DDPO / DPOK (`config.algo`); one schema for all three.

  ESTIMATOR is 'sf' (score function, on-policy) or 'is' (importance ratio
  clipped to [1 - epsilon, 1 + epsilon]).
  """

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'adv_clip': schema.Means(zero='no clipping')}

  NAME: ClassVar[str] = 'ddpo_is'
  ESTIMATOR: ClassVar[str] = 'is'

  epsilon: float = 0.2  # Clip range of the per-step importance ratio (is).
  adv_clip: float = 5.0  # Clip advantages to +-this; 0: off.
  per_condition_stats: bool = True  # Running per-condition stats; else batch.
  buffer_size: int = 32  # Rewards remembered per condition.
  min_count: int = 16  # Buffered rewards before a condition's own stats count.
  num_conditions: int = 16  # Condition ids tracked: 0..num_conditions-1.
  timestep_fraction: float = 1.0  # Fraction of the K steps trained per sample.
  kl_coef: float = 0.0  # DPOK's weight of the per-step KL to the pretrained.
  num_epochs: int = 1  # Passes over each batch of samples.
  num_minibatches: int = 4  # Minibatches per pass.

  def __post_init__(self):
    schema.positive(self, 'epsilon')
    if self.ESTIMATOR not in ESTIMATORS:
      raise ValueError(f'Unknown estimator {self.ESTIMATOR!r}; known: '
                       f'{ESTIMATORS}.')
    for name in ('epsilon', 'adv_clip', 'kl_coef'):
      if getattr(self, name) < 0:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '>= 0.')
    for name in ('buffer_size', 'num_conditions', 'num_epochs',
                 'num_minibatches'):
      if getattr(self, name) < 1:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '>= 1.')
    if not 1 <= self.min_count <= self.buffer_size:
      raise ValueError(f'config.algo.min_count={self.min_count} must be in '
                       f'[1, config.algo.buffer_size={self.buffer_size}].')
    base.check_step_fraction(self.timestep_fraction)
    if self.ESTIMATOR == 'sf' and (self.num_epochs, self.num_minibatches) != (
        1, 1):
      raise ValueError(
          f'{self.NAME} is on-policy: config.algo.num_epochs and '
          'config.algo.num_minibatches must be 1 (got '
          f'{self.num_epochs}, {self.num_minibatches}); use ddpo_is for '
          'several gradient steps per batch.')


@dataclasses.dataclass(frozen=True)
class DDPOSFConfig(DDPOConfig):
  """DDPO_SF: REINFORCE over the denoising steps, one step per batch."""

  NAME: ClassVar[str] = 'ddpo_sf'
  ESTIMATOR: ClassVar[str] = 'sf'

  num_minibatches: int = 1  # On-policy: the whole batch, once.


@dataclasses.dataclass(frozen=True)
class DDPOISConfig(DDPOConfig):
  """DDPO_IS: the clipped importance-sampling surrogate (PPO's)."""


@dataclasses.dataclass(frozen=True)
class DPOKConfig(DDPOConfig):
  """DPOK: the clipped surrogate plus the per-step KL to the pretrained model."""

  NAME: ClassVar[str] = 'dpok'

  kl_coef: float = 0.01  # Weight of the mean per-step KL bound.


@flax.struct.dataclass
class DDPOExperience:
  """What DDPO and DPOK learn from.

  Attributes:
    rollout: the B sampled trajectories, restricted to the kept steps.
    advantages: f32[B] standardised (and clipped) rewards.
    old_logp: f32[B, T] log-probs of the steps under the sampling policy.
    ref_mean: f32[B, T, H, W, C] the reference's Gaussian mean at each step
      (DPOK's KL), or None without a KL term.
  """

  rollout: Rollout
  advantages: jax.Array
  old_logp: jax.Array
  ref_mean: jax.Array | None = None


def make(cfg: DDPOConfig) -> base.Algorithm:
  """DDPO_SF, DDPO_IS or DPOK (by `cfg`'s class) as an `Algorithm`.

  Needs an environment whose rollouts carry `context['label']`, that keeps
  a random subset of their steps (`env.subsample_steps`) and that gives the
  Gaussian of every step (`env.transitions`): `DiffusionEnv`.
  """

  def init_state():
    if not cfg.per_condition_stats:
      return {}
    return {'reward_stats': init_reward_stats(cfg.num_conditions,
                                              cfg.buffer_size)}

  def prepare(env, state, rollout, rewards, key):
    algo_state = dict(state.algo_state)
    rewards = rewards.astype(jnp.float32)
    condition = rollout.context['label']
    if cfg.per_condition_stats:
      stats = update_reward_stats(algo_state['reward_stats'], condition,
                                  rewards)
      advantages = per_condition_advantages(stats, condition, rewards,
                                            min_count=cfg.min_count)
      algo_state['reward_stats'] = stats
    else:
      advantages = (rewards - jnp.mean(rewards)) / (jnp.std(rewards) + 1e-6)
    if cfg.adv_clip:
      advantages = jnp.clip(advantages, -cfg.adv_clip, cfg.adv_clip)
    rollout = base.train_steps(env, rollout, cfg.timestep_fraction, key)
    metrics = {'advantages/mean': jnp.mean(advantages),
               'advantages/std': jnp.std(advantages),
               'advantages/clipped_ratio': jnp.mean(
                   (jnp.abs(advantages) >= cfg.adv_clip).astype(jnp.float32))
               if cfg.adv_clip else jnp.zeros(())}
    ref_mean = None
    if cfg.kl_coef:
      ref_mean = jax.lax.stop_gradient(
          env.transitions(state.ref_params, rollout).mean)
    experience = DDPOExperience(
        rollout=rollout, advantages=advantages,
        old_logp=base.behaviour_logp(env, state, rollout), ref_mean=ref_mean)
    return experience, algo_state, metrics

  def policy_term(logp, exp: DDPOExperience, mask):
    if cfg.ESTIMATOR == 'sf':
      return reinforce.policy_gradient_loss(
          logp, exp.advantages, mask, aggregation='token_mean')
    advantages = jnp.broadcast_to(exp.advantages[:, None], logp.shape)
    return ppo.ppo_policy_loss(logp, exp.old_logp, advantages, mask,
                               epsilon=cfg.epsilon)

  def loss(env, params, exp: DDPOExperience):
    rollout = exp.rollout
    if not cfg.kl_coef:
      out = env.evaluate(params, rollout)
      return policy_term(out.logp, exp, rollout.mask)
    dist = env.transitions(params, rollout)
    value, metrics = policy_term(dist.log_prob(rollout.actions.x_tm1), exp,
                                 rollout.mask)
    kl = masked.masked_mean(dist.kl(exp.ref_mean), rollout.mask)
    return value + cfg.kl_coef * kl, {**metrics, 'kl': kl}

  return base.Algorithm(name=cfg.NAME, prepare=prepare, loss=loss,
                        env_requires=('transitions', 'subsample_steps'),
                        init_state=init_state,
                        uses_reference=cfg.kl_coef > 0,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
