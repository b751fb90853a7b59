"""IMPALA: actor-critic with V-trace off-policy correction.

Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance
Weighted Actor-Learner Architectures" (Sec. 4), the modern form of A3C (Mnih
et al. 2016): actors generate with parameters that may be several updates
behind the learner's, and the learner corrects for the lag with V-trace
(`jaxrlgen.core.vtrace`). The loss, per valid step s, is

  - log pi(a_s|x_s) * A_s                 (policy gradient, A_s fixed)
  + value_coef * 0.5 (v_s - V(x_s))^2     (value regression, v_s fixed)
  - entropy_coef * H(pi(.|x_s))           (+ kl_coef * k3 KL to a reference)

with the V-trace advantages A_s and targets v_s computed inside the loss from
the learner's current pi and V (stop-gradient), as the paper's learner does,
so every epoch and minibatch sees targets of the parameters it updates.
V(x_s) comes from a value head on the policy's trunk
(`config.model.value_head=True`); mu from the rollout's behaviour log-probs.
A text completion's sequence reward is paid at its last valid token.
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
from jaxrlgen.core import vtrace as vtrace_lib
from jaxrlgen.core.types import Rollout


def impala_loss(logp: jax.Array, values: jax.Array, behaviour_logp: jax.Array,
                rewards: jax.Array, mask: jax.Array, *, discount: float = 1.0,
                lambda_: float = 1.0, rho_bar: float = 1.0, c_bar: float = 1.0,
                value_coef: float = 0.5):
  """The IMPALA policy-gradient and value loss, to minimise.

  Args:
    logp: f32[B, T] log pi(a_s|x_s) under the parameters being optimised.
    values: f32[B, T] V(x_s) under the parameters being optimised.
    behaviour_logp: f32[B, T] log mu(a_s|x_s) of the (stale) actor.
    rewards: f32[B, T] per-step rewards.
    mask: bool[B, T] valid steps; the last valid step of a row is terminal.
    discount, lambda_, rho_bar, c_bar: V-trace's gamma, lambda, rho_bar, c_bar.
    value_coef: weight of the value loss.
  Returns:
    (loss, metrics) with metrics `policy_loss`, `value_loss`,
    `advantages/mean`, `clip_ratio` (fraction of steps whose importance
    weight rho_bar truncated) and `behaviour_kl`.
  """
  chex.assert_rank([logp, values, behaviour_logp, rewards, mask], 2)
  chex.assert_equal_shape([logp, values, behaviour_logp, rewards, mask])
  # Targets and advantages are constants of the update (stop-gradient), both
  # through V and through the importance weights.
  log_rhos = jax.lax.stop_gradient(logp - behaviour_logp)
  targets = vtrace_lib.vtrace(
      jax.lax.stop_gradient(values), rewards, log_rhos, mask,
      discount=discount, lambda_=lambda_, rho_bar=rho_bar, c_bar=c_bar)
  policy_loss = -masked.masked_mean(logp * targets.pg_advantages, mask)
  value_loss = 0.5 * masked.masked_mean(jnp.square(targets.vs - values), mask)
  rhos = jnp.exp(log_rhos)
  metrics = {
      'policy_loss': policy_loss,
      'value_loss': value_loss,
      'advantages/mean': masked.masked_mean(targets.pg_advantages, mask),
      # The tolerance keeps float noise of pi == mu (rho = 1 +- 1e-7) from
      # counting as truncation when rho_bar = 1.
      'clip_ratio': masked.masked_mean(
          (rhos > rho_bar * (1.0 + 1e-4)).astype(jnp.float32), mask),
      # How far the learner has moved from the actor: E_mu[log mu - log pi],
      # the k1 estimate of KL(mu || pi) per token (0 without lag).
      'behaviour_kl': -masked.masked_mean(log_rhos, mask),
  }
  return policy_loss + value_coef * value_loss, metrics


@dataclasses.dataclass(frozen=True)
class IMPALAConfig:
  """Hyperparameters of IMPALA (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'discount': base.GAMMA_ZERO,
      'lambda_': schema.Means(zero='one-step TD targets (no traces)'),
      'max_staleness': schema.Means(zero='the actor never lags the learner')}

  discount: float = 1.0  # gamma; 1: the sequence reward is undiscounted.
  lambda_: float = 1.0  # V-trace's trace coefficient lambda in c_s.
  rho_bar: float = 1.0  # Truncation of the importance weights rho_s.
  c_bar: float = 1.0  # Truncation of the traces c_s (<= rho_bar).
  value_coef: float = 0.5  # Weight of the value loss.
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL-to-reference penalty; 0: no reference model.
  max_staleness: int = 2  # Updates the actor may lag the learner (loop=async).
  num_epochs: int = 1  # Passes over each rollout.
  num_minibatches: int = 1  # Minibatches per pass.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.positive(self, 'value_coef')
    schema.non_negative(self, 'entropy_coef')
    for name in ('rho_bar', 'c_bar'):
      if getattr(self, name) <= 0:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '> 0.')
    if not 0 <= self.discount <= 1:
      raise ValueError(f'config.algo.discount={self.discount} must be in '
                       '[0, 1].')
    if not 0 <= self.lambda_ <= 1:
      raise ValueError(f'config.algo.lambda_={self.lambda_} must be in '
                       '[0, 1].')
    if self.max_staleness < 0:
      raise ValueError(f'config.algo.max_staleness={self.max_staleness} must '
                       'be >= 0.')
    if self.kl_coef < 0:
      raise ValueError(f'config.algo.kl_coef={self.kl_coef} must be >= 0.')


@flax.struct.dataclass
class IMPALAExperience:
  """What IMPALA learns from.

  Attributes:
    rollout: the B sequences the actor sampled; `rollout.logp` is mu.
    rewards: f32[B, T] per-step rewards (the sequence's at its last step).
    ref_logp: f32[B, T] reference log-probs, or None without a KL term.
  """

  rollout: Rollout
  rewards: jax.Array
  ref_logp: jax.Array | None = None


def make(cfg: IMPALAConfig) -> base.Algorithm:
  """IMPALA as an `Algorithm`; the env's policy needs a value head."""

  def prepare(env, state, rollout, rewards, key):
    del key
    # mu is what the actor really sampled from (its own, possibly stale
    # parameters and truncated sampling): never recompute it.
    experience = IMPALAExperience(
        rollout=rollout, rewards=returns.token_rewards(
            rewards, rollout.mask, rollout_lib.step_rewards(rollout)),
        ref_logp=(base.reference_logp(env, state, rollout) if cfg.kl_coef
                  else None))
    return experience, state.algo_state, {}

  def loss(env, params, exp: IMPALAExperience):
    rollout = exp.rollout
    out = env.evaluate(params, rollout, with_values=True)
    value, metrics = impala_loss(
        out.logp, out.values, rollout.logp, exp.rewards, rollout.mask,
        discount=cfg.discount, lambda_=cfg.lambda_, rho_bar=cfg.rho_bar,
        c_bar=cfg.c_bar, value_coef=cfg.value_coef)
    reg, reg_metrics = base.regularizers(
        out, rollout, exp.ref_logp, entropy_coef=cfg.entropy_coef,
        kl_coef=cfg.kl_coef)
    return value + reg, {**metrics, **reg_metrics}

  return base.Algorithm(name='impala', prepare=prepare, loss=loss,
                        env_requires=('value',),
                        uses_reference=cfg.kl_coef > 0,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
