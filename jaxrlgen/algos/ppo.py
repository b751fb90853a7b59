"""PPO for language models with a learned value function (RLHF's PPO).

Schulman et al. 2017 (PPO), as used to fine-tune language models by Ziegler
et al. 2019 ("Fine-Tuning Language Models from Human Preferences") and
Ouyang et al. 2022 (InstructGPT):

  * each token is an action; the sequence's reward arrives at its last valid
    token, and every token pays kl_coef * (log pi_old - log pi_ref), a
    per-token KL-to-reference penalty folded into the reward (Ziegler et al.);
  * kl_coef is fixed or moved toward a target KL by the adaptive controller
    of Ziegler et al. (its state lives in `TrainState.algo_state`);
  * token-level GAE(gamma, lambda) against a value function V(s_t), either a
    scalar head on the policy's trunk or a separate critic model;
  * a clipped surrogate policy loss and a clipped value loss, minimised for
    several epochs of minibatches per rollout.
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
from jaxrlgen.core import returns
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout

KL_CONTROLLERS = ('fixed', 'adaptive')
REWARD_NORMS = ('none', 'batch', 'running')


def kl_penalized_rewards(scores: jax.Array, logp: jax.Array,
                         ref_logp: jax.Array, mask: jax.Array, *,
                         kl_coef: jax.Array | float,
                         step_rewards: jax.Array | None = None) -> jax.Array:
  """Per-token rewards r_t = score [at the last token] - kl_coef * (logp - ref_logp).

  Ziegler et al. 2019, eq. 2: R(x, y) = r(x, y) - beta log(pi(y|x) /
  rho(y|x)), the log-ratio split over the tokens that make it up, so that
  GAE credits the penalty to the token that incurred it.

  Args:
    scores: f32[B] sequence rewards.
    logp: f32[B, T] log-probs under the sampling policy.
    ref_logp: f32[B, T] log-probs under the reference policy.
    mask: bool[B, T] valid steps (a prefix of each row).
    kl_coef: beta (a scalar, possibly traced).
    step_rewards: f32[B, T] rewards given at steps, included in `scores`
      (`returns.token_rewards`), or None.
  Returns:
    f32[B, T] rewards, 0 at masked steps.
  """
  chex.assert_rank([scores, logp, ref_logp, mask], [1, 2, 2, 2])
  chex.assert_equal_shape([logp, ref_logp, mask])
  penalty = kl_coef * (logp - ref_logp)
  return jnp.where(
      mask, returns.token_rewards(scores, mask, step_rewards) - penalty, 0.0)


def adaptive_kl_coef(kl_coef: jax.Array, observed_kl: jax.Array, *,
                     target: float, horizon: float,
                     num_samples: int) -> jax.Array:
  """The adaptive KL controller of Ziegler et al. 2019 (section 2.2).

  beta <- beta * (1 + K_beta e), e = clip(KL / KL_target - 1, -0.2, 0.2),
  with K_beta = num_samples / horizon: the proportional error is clipped so
  one noisy batch cannot swing beta, and the horizon sets how many samples it
  takes to move beta by a factor of e (their code: horizon 10000 samples).

  Args:
    kl_coef: f32[] current beta.
    observed_kl: f32[] KL(pi || pi_ref) of this batch, per sequence (summed
      over tokens), the quantity the target is stated in.
    target: KL_target.
    horizon: samples over which beta can change by about e^{0.2}.
    num_samples: sequences in this batch.
  Returns:
    f32[] the next beta.
  """
  error = jnp.clip(observed_kl / target - 1.0, -0.2, 0.2)
  return kl_coef * (1.0 + error * num_samples / horizon)


def ppo_policy_loss(logp: jax.Array, old_logp: jax.Array,
                    advantages: jax.Array, mask: jax.Array, *,
                    epsilon: float):
  """PPO's clipped surrogate per token (Schulman et al. 2017, eq. 7), to minimise.

  Args:
    logp: f32[B, T] log-probs under the policy being optimised.
    old_logp: f32[B, T] log-probs under the policy that sampled.
    advantages: f32[B, T] per-token advantages.
    mask: bool[B, T] valid tokens.
    epsilon: the ratio is clipped to [1 - epsilon, 1 + epsilon].
  Returns:
    (token-mean loss, metrics `policy_loss`, `clip_ratio`, `approx_kl`, the
    k3 estimate of KL(pi_old || pi) that tells how far the epochs moved).
  """
  chex.assert_rank([logp, old_logp, advantages, mask], 2)
  chex.assert_equal_shape([logp, old_logp, advantages, mask])
  log_ratio = logp - old_logp
  ratio = jnp.exp(log_ratio)
  unclipped = ratio * advantages
  clipped = jnp.clip(ratio, 1.0 - epsilon, 1.0 + epsilon) * advantages
  loss = masked.masked_mean(-jnp.minimum(unclipped, clipped), mask)
  metrics = {
      'policy_loss': loss,
      'clip_ratio': masked.masked_mean(
          (clipped < unclipped).astype(jnp.float32), mask),
      'approx_kl': masked.masked_mean(
          jax.lax.stop_gradient(ratio - 1.0 - log_ratio), mask),
  }
  return loss, metrics


def ppo_value_loss(values: jax.Array, old_values: jax.Array,
                   value_targets: jax.Array, mask: jax.Array, *,
                   value_clip: float):
  """Clipped value loss, 0.5 * max((v - R)^2, (clip(v, v_old +- c) - R)^2).

  The pessimistic max keeps the value function within value_clip of the one
  the advantages were computed with (the PPO2 baselines / Ziegler et al.
  implementation); value_clip <= 0 turns clipping off.

  Args:
    values: f32[B, T] values under the parameters being optimised.
    old_values: f32[B, T] values when the rollout was prepared.
    value_targets: f32[B, T] regression targets (GAE's lambda-returns).
    mask: bool[B, T] valid steps.
    value_clip: c.
  Returns:
    (token-mean loss, metrics `value_loss`, `value_clip_ratio`).
  """
  chex.assert_rank([values, old_values, value_targets, mask], 2)
  chex.assert_equal_shape([values, old_values, value_targets, mask])
  unclipped = jnp.square(values - value_targets)
  if value_clip > 0:
    clipped_values = old_values + jnp.clip(values - old_values, -value_clip,
                                           value_clip)
    clipped = jnp.square(clipped_values - value_targets)
    per_token = jnp.maximum(unclipped, clipped)
    clip_ratio = masked.masked_mean((clipped > unclipped).astype(jnp.float32),
                                    mask)
  else:
    per_token, clip_ratio = unclipped, jnp.zeros((), jnp.float32)
  loss = 0.5 * masked.masked_mean(per_token, mask)
  return loss, {'value_loss': loss, 'value_clip_ratio': clip_ratio}


def update_running_stats(stats, x: jax.Array):
  """Merges a batch x: f32[B] into running (count, mean, m2) (Chan et al. 1979)."""
  count, mean, m2 = stats['count'], stats['mean'], stats['m2']
  n = jnp.float32(x.shape[0])
  batch_mean = jnp.mean(x)
  batch_m2 = jnp.sum(jnp.square(x - batch_mean))
  total = count + n
  delta = batch_mean - mean
  return {'count': total, 'mean': mean + delta * n / total,
          'm2': m2 + batch_m2 + jnp.square(delta) * count * n / total}


@dataclasses.dataclass(frozen=True)
class PPOConfig:
  """Hyperparameters of PPO (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'gamma': base.GAMMA_ZERO,
      'lambda_': schema.Means(zero='one-step TD advantages'),
      'value_clip': schema.Means(zero='no value clipping',
                                 negative='no value clipping')}

  epsilon: float = 0.2  # Clip range of the importance ratio.
  value_clip: float = 0.2  # Clip range of the values; <= 0: no value clip.
  vf_coef: float = 0.1  # Weight of the value loss.
  gamma: float = 1.0  # Discount over tokens.
  lambda_: float = 0.95  # GAE lambda.
  kl_coef: float = 0.05  # Initial beta of the per-token KL reward penalty.
  kl_controller: str = 'fixed'  # fixed | adaptive (Ziegler et al.).
  kl_target: float = 6.0  # Adaptive: target KL per sequence (nats).
  kl_horizon: float = 10_000.0  # Adaptive: samples to move beta by ~e^0.2.
  reward_norm: str = 'none'  # Sequence rewards: none | batch | running z-score.
  whiten_advantages: bool = True  # Standardise advantages over the batch.
  num_epochs: int = 4  # Passes over each rollout.
  num_minibatches: int = 4  # Minibatches per pass.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  separate_critic: bool = False  # Value from its own copy of the model.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.positive(self, 'epsilon', 'vf_coef', 'kl_target', 'kl_horizon')
    schema.in_range(self, 'gamma', 0.0, 1.0)
    schema.in_range(self, 'lambda_', 0.0, 1.0)
    schema.non_negative(self, 'entropy_coef')
    if self.kl_controller not in KL_CONTROLLERS:
      raise ValueError(f'config.algo.kl_controller={self.kl_controller!r}; '
                       f'known: {KL_CONTROLLERS}.')
    if self.reward_norm not in REWARD_NORMS:
      raise ValueError(f'config.algo.reward_norm={self.reward_norm!r}; '
                       f'known: {REWARD_NORMS}.')
    if self.kl_coef < 0:
      raise ValueError(f'config.algo.kl_coef={self.kl_coef} must be >= 0.')
    if self.kl_controller == 'adaptive' and not (
        self.kl_coef > 0 and self.kl_target > 0 and self.kl_horizon > 0):
      raise ValueError('The adaptive KL controller needs config.algo.kl_coef, '
                       'kl_target and kl_horizon > 0; got '
                       f'{self.kl_coef}, {self.kl_target}, {self.kl_horizon}.')

  @property
  def uses_reference(self) -> bool:
    return self.kl_coef > 0


@flax.struct.dataclass
class PPOExperience:
  """What PPO learns from.

  Attributes:
    rollout: the B sampled sequences.
    old_logp: f32[B, T] log-probs under the policy that sampled.
    old_values: f32[B, T] values when the rollout was prepared.
    advantages: f32[B, T] GAE advantages (whitened if configured).
    value_targets: f32[B, T] the lambda-returns.
  """

  rollout: Rollout
  old_logp: jax.Array
  old_values: jax.Array
  advantages: jax.Array
  value_targets: jax.Array


def make(cfg: PPOConfig) -> base.Algorithm:
  """PPO as an `Algorithm` (any environment whose `evaluate` gives values).

  With `separate_critic`, params = {'policy', 'critic'}: the critic is the
  environment's model with a value head (`env.with_value_head()`), started
  from a copy of the policy (`env.init_critic`).
  """

  if cfg.separate_critic:
    policy_params = lambda params: params['policy']
    params_fns = {'policy_params': policy_params,
                  'init_params': lambda env, params, key: {
                      'policy': params,
                      'critic': env.init_critic(params, key)},
                  'env_requires': ('with_value_head', 'init_critic')}

    def values_of(env, params, rollout):
      return env.with_value_head().evaluate(params['critic'], rollout,
                                            with_values=True).values

    def policy_and_values(env, params, rollout):
      out = env.evaluate(params['policy'], rollout)
      return out, values_of(env, params, rollout)
  else:
    policy_params = lambda params: params
    params_fns = {'env_requires': ('value',)}

    def values_of(env, params, rollout):
      return env.evaluate(params, rollout, with_values=True).values

    def policy_and_values(env, params, rollout):
      out = env.evaluate(params, rollout, with_values=True)
      return out, out.values

  def init_state():
    state = {'kl_coef': jnp.asarray(cfg.kl_coef, jnp.float32)}
    if cfg.reward_norm == 'running':
      state['reward_stats'] = {'count': jnp.zeros((), jnp.float32),
                               'mean': jnp.zeros((), jnp.float32),
                               'm2': jnp.zeros((), jnp.float32)}
    return state

  def prepare(env, state, rollout, rewards, key):
    del key
    algo_state = dict(state.algo_state)
    mask = rollout.mask
    old_logp = base.behaviour_logp(env, state, rollout, policy_params)
    old_values = jax.lax.stop_gradient(values_of(env, state.params, rollout))
    scores = rewards.astype(jnp.float32)
    shift, scale = 0.0, 1.0
    if cfg.reward_norm == 'batch':
      shift, scale = jnp.mean(scores), jnp.std(scores) + 1e-8
    elif cfg.reward_norm == 'running':
      # Normalise by statistics that include this batch, so the first batch
      # is already on the right scale.
      stats = update_running_stats(algo_state['reward_stats'], scores)
      std = jnp.sqrt(stats['m2'] / jnp.maximum(stats['count'], 1.0))
      shift, scale = stats['mean'], std + 1e-8
      algo_state['reward_stats'] = stats
    scores = (scores - shift) / scale
    # Rewards the environment gave at steps, on the returns' scale.
    steps = rollout_lib.step_rewards(rollout)
    steps = None if steps is None else steps / scale
    metrics = {}
    if cfg.uses_reference:
      ref_logp = base.reference_logp(env, state, rollout)
      kl_coef = algo_state['kl_coef']
      token_rewards = kl_penalized_rewards(scores, old_logp, ref_logp, mask,
                                           kl_coef=kl_coef, step_rewards=steps)
      sequence_kl = jnp.mean(masked.masked_sum(old_logp - ref_logp, mask,
                                               axis=1))
      if cfg.kl_controller == 'adaptive':
        algo_state['kl_coef'] = adaptive_kl_coef(
            kl_coef, sequence_kl, target=cfg.kl_target,
            horizon=cfg.kl_horizon, num_samples=rollout.batch_size)
      metrics.update({
          'kl': masked.masked_mean(base.k3_kl(old_logp, ref_logp), mask),
          'kl/sequence': sequence_kl, 'kl_coef': kl_coef})
    else:
      token_rewards = returns.token_rewards(scores, mask, steps)
    advantages = returns.generalized_advantage_estimation(
        token_rewards, old_values, mask, gamma=cfg.gamma, lambda_=cfg.lambda_)
    value_targets = advantages + jnp.where(mask, old_values, 0.0)
    metrics.update({'advantages/mean': masked.masked_mean(advantages, mask),
                    'advantages/std': jnp.sqrt(masked.masked_var(advantages,
                                                                 mask)),
                    'values/mean': masked.masked_mean(old_values, mask),
                    'returns/mean': masked.masked_mean(value_targets, mask),
                    'values/explained_variance': returns.explained_variance(
                        old_values, value_targets, mask)})
    if cfg.whiten_advantages:
      advantages = masked.masked_whiten(advantages, mask)
    experience = PPOExperience(rollout=rollout, old_logp=old_logp,
                               old_values=old_values, advantages=advantages,
                               value_targets=value_targets)
    return experience, algo_state, metrics

  def loss(env, params, exp: PPOExperience):
    rollout = exp.rollout
    out, values = policy_and_values(env, params, rollout)
    policy_loss, metrics = ppo_policy_loss(
        out.logp, exp.old_logp, exp.advantages, rollout.mask,
        epsilon=cfg.epsilon)
    value_loss, value_metrics = ppo_value_loss(
        values, exp.old_values, exp.value_targets, rollout.mask,
        value_clip=cfg.value_clip)
    reg, reg_metrics = base.regularizers(out, rollout, None,
                                         entropy_coef=cfg.entropy_coef)
    total = policy_loss + cfg.vf_coef * value_loss + reg
    return total, {**metrics, **value_metrics, **reg_metrics}

  return base.Algorithm(name='ppo', prepare=prepare, loss=loss,
                        init_state=init_state, **params_fns,
                        uses_reference=cfg.uses_reference,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
