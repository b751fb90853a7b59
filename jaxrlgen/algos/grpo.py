"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath) and its
variants Dr. GRPO, DAPO and GSPO, as one loss with a few switches.

G completions of each prompt form a group; each completion's advantage is its
reward relative to its group's (optionally divided by the group's std). The
policy minimises a PPO-style clipped surrogate with separate lower and upper
clip ranges (Yu et al. 2025, DAPO: "clip-higher") plus beta times the k3
estimate of KL(pi || pi_ref) (Schulman 2020). Aggregation over tokens:
  token_mean:    sum over all tokens / number of tokens (DAPO),
  sequence_mean: mean over sequences of each sequence's token mean (original),
  constant:      sum over all tokens / (B * max_tokens) (Liu et al. 2025,
                 Dr. GRPO).
The importance ratio is per token (GRPO) or per sequence (Zheng et al. 2025,
GSPO: the length-normalised sequence likelihood ratio).

The loss sees steps, not tokens: on the denoising environment
(`jaxrlgen.envs.diffusion`) a step is a denoising step, its log-prob the
step's Gaussian log-density, and a group is G samples of one class. That is
Flow-GRPO (Liu et al. 2025) and DanceGRPO (Xue et al. 2025) for a DDPM/DDIM
sampler with eta > 0, which is stochastic already (their ODE-to-SDE
conversion is for flow models); `timestep_fraction` < 1 trains each sample
on a random subset of its steps, as both do to cut the cost of a step.

Registered variants (defaults of their config classes):
  grpo:    GRPOConfig.
  dr_grpo: Liu et al. 2025, "Understanding R1-Zero-Like Training: A Critical
           Perspective": no division by the group std, constant normaliser.
  dapo:    Yu et al. 2025, "DAPO: An Open-Source LLM Reinforcement Learning
           System at Scale": clip-higher (0.2 / 0.28), token mean, no KL,
           zero-variance groups removed from the loss, soft overlong
           punishment added to the reward.
  gspo:    Zheng et al. 2025, "Group Sequence Policy Optimization":
           sequence-level ratio clipped to [1 - 3e-4, 1 + 4e-4], sequence mean,
           no KL, 4 minibatches per rollout (on-policy the ratio is 1 and the
           clip never acts).
"""

import dataclasses
from typing import ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.core import masked
from jaxrlgen.core.types import Rollout
from jaxrlgen.rewards import text as text_rewards

AGGREGATIONS = ('token_mean', 'sequence_mean', 'constant')
RATIO_LEVELS = ('token', 'sequence', 'sequence_token')


def group_advantages(rewards: jax.Array, group_size: int, *,
                     scale_by_std: bool = True,
                     eps: float = 1e-4) -> jax.Array:
  """(r - mean of group) [/ (std of group + eps)].

  Args:
    rewards: f32[B], B = N * group_size, each group's samples contiguous.
    group_size: G.
    scale_by_std: divide by the group's (population) std.
    eps: added to the std.
  Returns:
    f32[B] advantages.
  """
  chex.assert_rank(rewards, 1)
  grouped = rewards.reshape(-1, group_size).astype(jnp.float32)
  centred = grouped - jnp.mean(grouped, axis=1, keepdims=True)
  if scale_by_std:
    centred = centred / (jnp.std(grouped, axis=1, keepdims=True) + eps)
  return centred.reshape(-1)


def varied_groups(rewards: jax.Array, group_size: int) -> jax.Array:
  """bool[B]: whether the sequence's group holds at least two distinct rewards.

  DAPO (Yu et al. 2025, eq. 11) keeps only such groups: a group whose rewards
  are all equal has zero advantage everywhere, so it adds no gradient but would
  still dilute a token-mean normaliser.

  Args:
    rewards: f32[B], B = N * group_size, each group's samples contiguous.
    group_size: G.
  """
  chex.assert_rank(rewards, 1)
  grouped = rewards.reshape(-1, group_size)
  varied = jnp.max(grouped, axis=1) > jnp.min(grouped, axis=1)
  return jnp.repeat(varied, group_size)


def overlong_penalty(lengths: jax.Array, truncated: jax.Array,
                     max_length: float, cache_length: float) -> jax.Array:
  """DAPO's soft overlong punishment (Yu et al. 2025, eq. 13), f32[B] in [-1, 0].

    0                                  if L <= L_max - L_cache,
    (L_max - L_cache - L) / L_cache    if L_max - L_cache < L <= L_max,
    -1                                 if L > L_max.

  A truncated sequence (no EOS within the budget) is one whose true length
  exceeds the budget, so it gets -1 whatever its counted length.

  Args:
    lengths: [B] completion lengths L (tokens, EOS included).
    truncated: bool[B] whether the sequence hit the budget without EOS.
    max_length: L_max, the completion budget.
    cache_length: L_cache > 0, the zone before L_max where the penalty ramps.
  """
  chex.assert_rank([lengths, truncated], 1)
  chex.assert_equal_shape([lengths, truncated])
  if not 0 < cache_length <= max_length:
    raise ValueError(f'overlong_penalty: cache_length={cache_length} must be in '
                     f'(0, max_length={max_length}].')
  ramp = (max_length - cache_length - lengths.astype(jnp.float32)) / cache_length
  return jnp.where(truncated, -1.0, jnp.clip(ramp, -1.0, 0.0))


def importance_log_ratio(logp: jax.Array, old_logp: jax.Array, mask: jax.Array,
                         level: str = 'token') -> jax.Array:
  """f32[B, T] log of the importance ratio applied to each token.

    token:          log pi(y_t) - log pi_old(y_t) (PPO, GRPO).
    sequence:       log s_i = mean over the sequence's valid tokens of the
                    above, the same for all its tokens (GSPO, Zheng et al.
                    2025, eq. 7): one ratio per sequence, length-normalised so
                    that its range does not grow with the length.
    sequence_token: sg[log s_i] + log pi(y_t) - sg[log pi(y_t)] (GSPO-token,
                    eq. 13): the value of log s_i, the gradient of token t's
                    own log-prob, so that per-token advantages can weigh tokens.

  Args:
    logp, old_logp: f32[B, T] log-probs under the trained / sampling policy.
    mask: bool[B, T] valid tokens.
    level: 'token', 'sequence' or 'sequence_token'.
  """
  log_ratio = logp - old_logp
  if level == 'token':
    return log_ratio
  if level not in RATIO_LEVELS:
    raise ValueError(f'Unknown ratio level {level!r}; known: {RATIO_LEVELS}.')
  seq = masked.masked_mean(log_ratio, mask, axis=1)[:, None]
  if level == 'sequence':
    return jnp.broadcast_to(seq, logp.shape)
  sg = jax.lax.stop_gradient
  return sg(seq) + logp - sg(logp)


def aggregate(per_token: jax.Array, mask: jax.Array, aggregation: str,
              max_tokens: int | None = None) -> jax.Array:
  """Reduces f32[B, T] per-token losses to a scalar (see module docstring)."""
  if aggregation == 'token_mean':
    return masked.masked_mean(per_token, mask)
  if aggregation == 'sequence_mean':
    return jnp.mean(masked.masked_mean(per_token, mask, axis=1))
  if aggregation == 'constant':
    max_tokens = max_tokens or per_token.shape[1]
    return masked.masked_sum(per_token, mask) / (per_token.shape[0] * max_tokens)
  raise ValueError(f'Unknown aggregation {aggregation!r}; known: {AGGREGATIONS}.')


def grpo_loss(logp: jax.Array, old_logp: jax.Array, advantages: jax.Array,
              mask: jax.Array, *, ref_logp: jax.Array | None = None,
              epsilon_low: float = 0.2, epsilon_high: float = 0.2,
              beta: float = 0.0, aggregation: str = 'token_mean',
              max_tokens: int | None = None, ratio_level: str = 'token'):
  """The GRPO objective (and GSPO's, with ratio_level='sequence'), to minimise.

  Args:
    logp: f32[B, T] log-probs under the policy being optimised.
    old_logp: f32[B, T] log-probs under the policy that sampled.
    advantages: f32[B] per-sequence (or f32[B, T] per-token) advantages.
    mask: bool[B, T] tokens in the loss (valid, and of groups kept).
    ref_logp: f32[B, T] reference-policy log-probs (needed when beta > 0).
    epsilon_low, epsilon_high: the ratio is clipped to
      [1 - epsilon_low, 1 + epsilon_high].
    beta: coefficient of the k3 KL penalty.
    aggregation: 'token_mean', 'sequence_mean' or 'constant'.
    max_tokens: the constant normaliser's length (default T).
    ratio_level: 'token', 'sequence' or 'sequence_token' (see
      `importance_log_ratio`).
  Returns:
    (loss, metrics) with metrics `policy_loss`, `kl`, `clip_ratio` (the
    fraction of tokens whose objective is clipped; with a sequence-level ratio
    whole sequences are).
  """
  chex.assert_rank([logp, old_logp, mask], 2)
  chex.assert_rank(advantages, {1, 2})
  chex.assert_equal_shape([logp, old_logp, mask])
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  ratio = jnp.exp(importance_log_ratio(logp, old_logp, mask, ratio_level))
  clipped_ratio = jnp.clip(ratio, 1.0 - epsilon_low, 1.0 + epsilon_high)
  unclipped_obj, clipped_obj = ratio * adv, clipped_ratio * adv
  per_token = -jnp.minimum(unclipped_obj, clipped_obj)
  policy_loss = aggregate(per_token, mask, aggregation, max_tokens)
  loss = policy_loss
  metrics = {
      'policy_loss': policy_loss,
      'clip_ratio': masked.masked_mean(
          (clipped_obj < unclipped_obj).astype(jnp.float32), mask),
  }
  if beta:
    if ref_logp is None:
      raise ValueError('grpo_loss: beta > 0 needs ref_logp.')
    kl = base.k3_kl(logp, ref_logp)
    loss = loss + beta * aggregate(kl, mask, aggregation, max_tokens)
    metrics['kl'] = masked.masked_mean(kl, mask)
  return loss, metrics


@dataclasses.dataclass(frozen=True)
class GRPOConfig:
  """Hyperparameters of GRPO (`config.algo`); the variants' schema too."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL,
      'beta': schema.Means(zero='no KL term: no reference model'),
      'overlong_buffer': schema.Means(zero='no overlong punishment')}

  NAME: ClassVar[str] = 'grpo'

  epsilon_low: float = 0.2  # Lower clip range of the importance ratio.
  epsilon_high: float = 0.2  # Upper clip range (DAPO's clip-higher: > low).
  beta: float = 0.04  # k3 KL-to-reference coefficient; 0: no reference model.
  scale_by_std: bool = True  # Divide advantages by the group std.
  aggregation: str = 'token_mean'  # token_mean | sequence_mean | constant.
  ratio_level: str = 'token'  # token | sequence (GSPO) | sequence_token.
  filter_groups: bool = False  # Mask groups whose rewards are all equal (DAPO).
  # DAPO's soft overlong punishment zone L_cache as a fraction of the
  # completion budget T (paper: 4096 / 20480 = 0.2); 0: off.
  overlong_buffer: float = 0.0
  num_epochs: int = 1  # mu: passes over each rollout.
  num_minibatches: int = 1  # Minibatches per pass.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  # Fraction of each sample's steps in the loss, drawn at random per sample
  # (`base.train_steps`; denoising environments: DanceGRPO's and
  # Flow-GRPO-Fast's subset of timesteps); < 1 needs env.subsample_steps.
  timestep_fraction: float = 1.0

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    base.check_step_fraction(self.timestep_fraction)
    schema.positive(self, 'epsilon_low', 'epsilon_high')
    schema.non_negative(self, 'entropy_coef')
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f'config.algo.aggregation={self.aggregation!r}; '
                       f'known: {AGGREGATIONS}.')
    if self.ratio_level not in RATIO_LEVELS:
      raise ValueError(f'config.algo.ratio_level={self.ratio_level!r}; '
                       f'known: {RATIO_LEVELS}.')
    if self.beta < 0:
      raise ValueError(f'config.algo.beta={self.beta} must be >= 0.')
    for name in ('epsilon_low', 'epsilon_high'):
      if getattr(self, name) < 0:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '>= 0.')
    if not 0 <= self.overlong_buffer <= 1:
      raise ValueError(f'config.algo.overlong_buffer={self.overlong_buffer} '
                       'must be in [0, 1] (a fraction of the completion '
                       'budget; 0: off).')


@dataclasses.dataclass(frozen=True)
class DrGRPOConfig(GRPOConfig):
  """Dr. GRPO (Liu et al. 2025): GRPO without its length and std biases."""

  NAME: ClassVar[str] = 'dr_grpo'

  scale_by_std: bool = False  # The std favours too easy / too hard prompts.
  aggregation: str = 'constant'  # Per-sequence 1/|y| favours long failures.


@dataclasses.dataclass(frozen=True)
class DAPOConfig(GRPOConfig):
  """DAPO (Yu et al. 2025); its dynamic sampling is a mask, see `make`."""

  NAME: ClassVar[str] = 'dapo'

  epsilon_high: float = 0.28  # Clip-higher: room for unlikely tokens to rise.
  beta: float = 0.0  # No KL term.
  filter_groups: bool = True  # Zero-variance groups are out of the loss.
  overlong_buffer: float = 0.2  # Paper: L_cache 4096 of L_max 20480.


@dataclasses.dataclass(frozen=True)
class GSPOConfig(GRPOConfig):
  """GSPO (Zheng et al. 2025): a sequence-level ratio, clipped per sequence."""

  NAME: ClassVar[str] = 'gspo'

  epsilon_low: float = 3e-4  # The sequence ratio is a geometric mean of
  epsilon_high: float = 4e-4  # token ratios, hence far smaller ranges.
  beta: float = 0.0  # No KL term.
  aggregation: str = 'sequence_mean'  # The objective averages sequences.
  ratio_level: str = 'sequence'
  num_minibatches: int = 4  # Paper: 4 minibatches per rollout batch.


@flax.struct.dataclass
class GRPOExperience:
  """What GRPO and its variants learn from.

  Attributes:
    rollout: the B = N * G sampled sequences.
    advantages: f32[B] group-relative advantages.
    old_logp: f32[B, T] log-probs under the policy that sampled.
    keep: bool[B] whether the sequence's group has varied rewards (DAPO's
      filter), or None without `filter_groups`.
    ref_logp: f32[B, T] reference log-probs, or None when beta = 0.
  """

  rollout: Rollout
  advantages: jax.Array
  old_logp: jax.Array
  keep: jax.Array | None = None
  ref_logp: jax.Array | None = None


def make(cfg: GRPOConfig) -> base.Algorithm:
  """GRPO (or the variant `cfg` describes) as an `Algorithm`.

  DAPO's dynamic sampling re-samples prompts until the batch is full of groups
  with varied rewards; shapes here are static, so the zero-variance groups are
  masked out of the loss and its token normaliser instead (the batch shrinks
  by the fraction logged as `groups/kept_ratio`; all groups masked gives a
  zero loss). Groups are judged on the reward advantages are computed from,
  overlong penalty included.
  """

  def prepare(env, state, rollout, rewards, key):
    metrics = {}
    if cfg.overlong_buffer:
      eos_id = getattr(env, 'eos_id', None)
      if eos_id is None:
        raise ValueError('config.algo.overlong_buffer > 0 needs an environment '
                         'with an eos_id (text).')
      penalty = overlong_penalty(
          text_rewards.completion_length(rollout),
          ~text_rewards.ended_with_eos(rollout, eos_id),
          max_length=rollout.num_steps,
          cache_length=cfg.overlong_buffer * rollout.num_steps)
      rewards = rewards + penalty
      metrics['reward/overlong_penalty'] = jnp.mean(penalty)
    advantages = group_advantages(rewards, env.num_samples,
                                  scale_by_std=cfg.scale_by_std)
    keep = None
    if cfg.filter_groups:
      keep = varied_groups(rewards, env.num_samples)
      # Groups have equal sizes: the fraction of sequences is that of groups.
      metrics['groups/kept_ratio'] = jnp.mean(keep)
    # Advantages are per sample: the steps trained are drawn after them.
    rollout = base.train_steps(env, rollout, cfg.timestep_fraction, key)
    experience = GRPOExperience(
        rollout=rollout, advantages=advantages,
        old_logp=base.behaviour_logp(env, state, rollout), keep=keep,
        ref_logp=(base.reference_logp(env, state, rollout) if cfg.beta
                  else None))
    return experience, state.algo_state, {
        **metrics,
        'advantages/mean': jnp.mean(advantages),
        'advantages/std': jnp.std(advantages)}

  def loss(env, params, exp: GRPOExperience):
    rollout = exp.rollout
    out = env.evaluate(params, rollout)
    mask = rollout.mask
    if cfg.filter_groups:
      mask = mask & exp.keep[:, None]
    value, metrics = grpo_loss(
        out.logp, exp.old_logp, exp.advantages, mask,
        ref_logp=exp.ref_logp, epsilon_low=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high, beta=cfg.beta,
        aggregation=cfg.aggregation, max_tokens=rollout.num_steps,
        ratio_level=cfg.ratio_level)
    reg, reg_metrics = base.regularizers(out, rollout, None,
                                         entropy_coef=cfg.entropy_coef)
    return value + reg, {**metrics, **reg_metrics}

  return base.Algorithm(name=cfg.NAME, prepare=prepare, loss=loss,
                        uses_reference=cfg.beta > 0,
                        env_requires=base.step_subset_requires(
                            cfg.timestep_fraction),
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
