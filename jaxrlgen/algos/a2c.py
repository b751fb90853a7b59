"""Advantage actor-critic, synchronous (A2C; Mnih et al. 2016, A3C).

Each token is an action; the sequence's reward arrives at its last valid
token. The critic is a value head on the policy's trunk. Targets are n-step
returns bootstrapped from the value estimates of the rollout, advantages are
return - V(s_t), and the policy and value are updated once per rollout:

  loss = -mean_t[log pi(a_t|s_t) A_t] + vf_coef * 0.5 mean_t[(V(s_t) - G_t)^2]
         - entropy_coef * entropy [+ kl_coef * k3 KL(pi || pi_ref)].
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


def a2c_loss(logp: jax.Array, values: jax.Array, advantages: jax.Array,
             value_targets: jax.Array, mask: jax.Array, *, vf_coef: float):
  """Policy-gradient plus value-regression loss, token means, to minimise.

  Args:
    logp: f32[B, T] log-probs of the taken actions (differentiated).
    values: f32[B, T] V(s_t) (differentiated).
    advantages: f32[B, T] fixed advantages.
    value_targets: f32[B, T] fixed n-step returns.
    mask: bool[B, T] valid steps.
    vf_coef: weight of the value loss.
  Returns:
    (loss, metrics `policy_loss`, `value_loss`).
  """
  chex.assert_rank([logp, values, advantages, value_targets, mask], 2)
  chex.assert_equal_shape([logp, values, advantages, value_targets, mask])
  advantages = jax.lax.stop_gradient(advantages)
  value_targets = jax.lax.stop_gradient(value_targets)
  policy_loss = -masked.masked_mean(logp * advantages, mask)
  value_loss = 0.5 * masked.masked_mean(jnp.square(values - value_targets),
                                        mask)
  return policy_loss + vf_coef * value_loss, {'policy_loss': policy_loss,
                                              'value_loss': value_loss}


@dataclasses.dataclass(frozen=True)
class A2CConfig:
  """Hyperparameters of A2C (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'gamma': base.GAMMA_ZERO}

  n: int = 8  # Rewards before bootstrapping from V (>= T: Monte-Carlo).
  gamma: float = 1.0  # Discount over tokens.
  vf_coef: float = 0.5  # Weight of the value loss.
  entropy_coef: float = 0.01  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference coefficient; 0: no reference.
  whiten_advantages: bool = False  # Standardise advantages over the batch.

  def __post_init__(self):
    schema.in_range(self, 'gamma', 0.0, 1.0)
    schema.positive(self, 'vf_coef')
    schema.non_negative(self, 'entropy_coef')
    if self.n < 1:
      raise ValueError(f'config.algo.n={self.n} must be >= 1.')
    if self.kl_coef < 0:
      raise ValueError(f'config.algo.kl_coef={self.kl_coef} must be >= 0.')


@flax.struct.dataclass
class A2CExperience:
  """What A2C learns from.

  Attributes:
    rollout: the B sampled sequences.
    advantages: f32[B, T] n-step return - V(s_t) (whitened if configured).
    value_targets: f32[B, T] n-step returns.
    ref_logp: f32[B, T] reference log-probs, or None without a KL term.
  """

  rollout: Rollout
  advantages: jax.Array
  value_targets: jax.Array
  ref_logp: jax.Array | None = None


def make(cfg: A2CConfig) -> base.Algorithm:
  """A2C as an `Algorithm` over an environment whose policy has a value head."""

  def prepare(env, state, rollout, rewards, key):
    del key
    mask = rollout.mask
    values = jax.lax.stop_gradient(
        env.evaluate(state.params, rollout, with_values=True).values)
    token_rewards = returns.token_rewards(
        rewards, mask, rollout_lib.step_rewards(rollout))
    value_targets = returns.n_step_returns(token_rewards, values, mask,
                                           n=cfg.n, gamma=cfg.gamma)
    advantages = value_targets - jnp.where(mask, values, 0.0)
    metrics = {'advantages/mean': masked.masked_mean(advantages, mask),
               'values/mean': masked.masked_mean(values, mask),
               'returns/mean': masked.masked_mean(value_targets, mask),
               'values/explained_variance': returns.explained_variance(
                   values, value_targets, mask)}
    if cfg.whiten_advantages:
      advantages = masked.masked_whiten(advantages, mask)
    experience = A2CExperience(
        rollout=rollout, advantages=advantages, value_targets=value_targets,
        ref_logp=(base.reference_logp(env, state, rollout) if cfg.kl_coef
                  else None))
    return experience, state.algo_state, metrics

  def loss(env, params, exp: A2CExperience):
    rollout = exp.rollout
    out = env.evaluate(params, rollout, with_values=True)
    value, metrics = a2c_loss(out.logp, out.values, exp.advantages,
                              exp.value_targets, rollout.mask,
                              vf_coef=cfg.vf_coef)
    reg, reg_metrics = base.regularizers(out, rollout, exp.ref_logp,
                                         entropy_coef=cfg.entropy_coef,
                                         kl_coef=cfg.kl_coef)
    return value + reg, {**metrics, **reg_metrics}

  return base.Algorithm(name='a2c', prepare=prepare, loss=loss,
                        env_requires=('value',),
                        uses_reference=cfg.kl_coef > 0)
