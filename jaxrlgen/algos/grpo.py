"""Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath).

G completions of each prompt form a group; each completion's advantage is its
reward relative to its group's (optionally divided by the group's std). The
policy minimises a PPO-style clipped surrogate per token with separate lower
and upper clip ranges (Yu et al. 2025, DAPO: "clip-higher") plus beta times
the k3 estimate of KL(pi || pi_ref) (Schulman 2020). Aggregation over tokens:
  token_mean:    sum over all tokens / number of tokens (DAPO),
  sequence_mean: mean over sequences of each sequence's token mean (original),
  constant:      sum over all tokens / (B * max_tokens) (Liu et al. 2025,
                 Dr. GRPO).
"""

import dataclasses

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.algos import base
from jaxrlgen.core import masked

AGGREGATIONS = ('token_mean', 'sequence_mean', 'constant')


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
              max_tokens: int | None = None):
  """The GRPO objective, to minimise.

  Args:
    logp: f32[B, T] log-probs under the policy being optimised.
    old_logp: f32[B, T] log-probs under the policy that sampled.
    advantages: f32[B] per-sequence advantages.
    mask: bool[B, T] valid tokens.
    ref_logp: f32[B, T] reference-policy log-probs (needed when beta > 0).
    epsilon_low, epsilon_high: the ratio is clipped to
      [1 - epsilon_low, 1 + epsilon_high].
    beta: coefficient of the k3 KL penalty.
    aggregation: 'token_mean', 'sequence_mean' or 'constant'.
    max_tokens: the constant normaliser's length (default T).
  Returns:
    (loss, metrics) with metrics `policy_loss`, `kl`, `clip_ratio`.
  """
  chex.assert_rank([logp, old_logp, mask, advantages], [2, 2, 2, 1])
  chex.assert_equal_shape([logp, old_logp, mask])
  adv = advantages[:, None]
  ratio = jnp.exp(logp - old_logp)
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
  """Hyperparameters of GRPO (`config.algo`)."""

  epsilon_low: float = 0.2  # Lower clip range of the importance ratio.
  epsilon_high: float = 0.2  # Upper clip range (DAPO's clip-higher: > low).
  beta: float = 0.04  # k3 KL-to-reference coefficient; 0: no reference model.
  scale_by_std: bool = True  # Divide advantages by the group std.
  aggregation: str = 'token_mean'  # token_mean | sequence_mean | constant.
  num_epochs: int = 1  # mu: passes over each rollout.
  num_minibatches: int = 1  # Minibatches per pass.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.

  def __post_init__(self):
    if self.aggregation not in AGGREGATIONS:
      raise ValueError(f'config.algo.aggregation={self.aggregation!r}; '
                       f'known: {AGGREGATIONS}.')
    if self.beta < 0:
      raise ValueError(f'config.algo.beta={self.beta} must be >= 0.')


def make(cfg: GRPOConfig) -> base.Algorithm:
  """GRPO as an `Algorithm` over any environment with groups of samples."""

  def prepare(env, reward_fn, state, rollout, rewards, batch, key):
    del reward_fn, batch, key
    advantages = group_advantages(rewards, env.num_samples,
                                  scale_by_std=cfg.scale_by_std)
    experience = {'rollout': rollout, 'advantages': advantages,
                  'old_logp': base.behaviour_logp(env, state, rollout)}
    if cfg.beta:
      experience['ref_logp'] = base.reference_logp(env, state, rollout)
    return experience, state.algo_state, {
        'advantages/mean': jnp.mean(advantages),
        'advantages/std': jnp.std(advantages)}

  def loss(env, params, exp):
    rollout = exp['rollout']
    out = env.evaluate(params, rollout)
    value, metrics = grpo_loss(
        out.logp, exp['old_logp'], exp['advantages'], rollout.mask,
        ref_logp=exp.get('ref_logp'), epsilon_low=cfg.epsilon_low,
        epsilon_high=cfg.epsilon_high, beta=cfg.beta,
        aggregation=cfg.aggregation, max_tokens=rollout.num_steps)
    reg, reg_metrics = base.regularizers(out, rollout, None,
                                         entropy_coef=cfg.entropy_coef)
    return value + reg, {**metrics, **reg_metrics}

  return base.Algorithm(name='grpo', prepare=prepare, loss=loss,
                        uses_reference=cfg.beta > 0,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
