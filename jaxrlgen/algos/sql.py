"""Soft Q-learning for text with path consistency (Guo et al. 2021, "Efficient
(Soft) Q-Learning for Text Generation with Limited Good Data", arXiv 2106.07704).

The LM's logits are Q-values: Q_theta(s_t, a) = f_theta(a | s_t), the soft
value is V_theta(s_t) = logsumexp_a Q_theta(s_t, a) (eq. 5 with the entropy
temperature tau = 1; general tau below) and the policy is
pi_theta(a | s_t) = softmax(Q_theta(s_t, .) / tau), so the soft advantage
A_theta(s_t, a_t) = Q_theta(s_t, a_t) - V_theta(s_t) = tau * log pi_theta(a_t|s_t)
(eq. 8). Targets use a target network theta-bar, updated by Polyak averaging.
With a sequence reward r arriving at the last step T (r_t = 0 before):

  single-step PCL (eq. 9):
    L = 1/2 (-V_tbar(s_t) + gamma V_tbar(s_{t+1}) + r_t - A_theta(s_t, a_t))^2
  multi-step PCL (eq. 11), for every start step t:
    L = 1/2 (-V_tbar(s_t) + gamma^{T-t} r_T
             - sum_{l=0}^{T-t} gamma^l A_theta(s_{t+l}, a_{t+l}))^2

V_tbar(s_{T+1}) = 0 (terminal). The paper trains with both objectives
together (their average: 'mixed'); its code (github.com/HanGuo97/
soft-Q-learning-for-text-generation, the `*_reversed` losses) adds each
objective with the roles of the networks swapped, the target network's
advantages A_tbar and the online values V_theta, weighted `reverse_weight`.
On-policy samples and offline data use the same loss, the objectives being
path consistencies that hold for any behaviour policy (Nachum et al. 2017).
Per-token losses are averaged over the valid tokens.

The forward objective sees the online network only through
A_theta = tau log pi_theta, which is blind to a per-state shift of the
logits; the logits' levels, which the targets V_tbar read, are trained
towards values only by the reversed term. A network trained
from scratch starts with levels that are the same in every state; a
warm-started LM does not (its log-partition varies from state to state by
several nats), which drives the single- and multi-step targets with noise far
larger than the rewards. `normalize_q` (default) therefore measures Q from the
frozen reference policy's log-partition, Q(s, a) = f_theta(a | s) -
V_ref(s) with V_ref(s) = tau logsumexp f_ref(. | s) / tau: a per-state
constant, so pi_theta is unchanged, and at the start V(s) = 0 in every state,
as for a network trained from scratch.
"""

import dataclasses
from typing import ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import qlearning
from jaxrlgen.core import logprob
from jaxrlgen.core import masked
from jaxrlgen.core import returns
from jaxrlgen.core.types import Rollout

OBJECTIVES = ('single', 'multi', 'mixed')


def _pcl_per_token(advantage, values, rewards_t, mask, objective, discount):
  """Per-token squared path-consistency residuals (eqs. 9, 11) and |residual|."""
  residuals = []
  q_target = returns.n_step_returns(rewards_t, values, mask, n=1,
                                    gamma=discount)
  if objective in ('single', 'mixed'):
    # Eq. 9: the advantage regresses to r_t + gamma V(s_{t+1}) - V(s_t).
    residuals.append(q_target - values - advantage)
  if objective in ('multi', 'mixed'):
    # Eq. 11: the discounted sum of advantages from t on regresses to the
    # discounted return from t minus V(s_t).
    to_go = returns.discounted_returns(rewards_t, mask, gamma=discount)
    path = returns.discounted_returns(advantage, mask, gamma=discount)
    residuals.append(to_go - values - path)
  per_token = sum(0.5 * jnp.square(r) for r in residuals) / len(residuals)
  abs_error = sum(jnp.abs(r) for r in residuals) / len(residuals)
  return per_token, abs_error, q_target


def sql_loss(q: jax.Array, target_v: jax.Array, actions: jax.Array,
             rewards_t: jax.Array, mask: jax.Array, *,
             objective: str = 'mixed', discount: float = 1.0,
             tau: float = 1.0, target_adv: jax.Array | None = None,
             reverse_weight: float = 0.0):
  """The SQL path-consistency loss (module docstring), to minimise.

  Args:
    q: f32[B, T, V] online Q-values (the LM's logits) at each state s_t.
    target_v: f32[B, T] V_tbar(s_t), the target network's soft values
      (constants: no gradient flows into them).
    actions: i32[B, T] taken actions.
    rewards_t: f32[B, T] reward after each action (a sequence reward sits at
      the last valid step, see `returns.terminal_rewards`).
    mask: bool[B, T] valid steps (a prefix of each row).
    objective: 'single' (eq. 9), 'multi' (eq. 11) or 'mixed' (their mean).
    discount: gamma.
    tau: entropy temperature; A = Q - tau logsumexp(Q / tau).
    target_adv: f32[B, T] A_tbar(s_t, a_t) of the target network (needed
      when reverse_weight > 0; constants).
    reverse_weight: w; the loss is (1 - w) * L(A_theta, V_tbar)
      + w * L(A_tbar, V_theta).
  Returns:
    (loss, metrics): `td_loss`, `td_error/abs_mean` (of the objective's
    residual), `q/mean` (Q of taken actions), `q/target_mean` (the one-step
    soft Q target r_t + gamma V_tbar(s_{t+1})), `entropy` of pi_theta.
  """
  chex.assert_rank([q, target_v, actions, rewards_t, mask], [3, 2, 2, 2, 2])
  chex.assert_equal_shape([target_v, actions, rewards_t, mask])
  if objective not in OBJECTIVES:
    raise ValueError(f'sql_loss: objective={objective!r}; known: {OBJECTIVES}.')
  if not 0 <= reverse_weight <= 1:
    raise ValueError(f'sql_loss: reverse_weight={reverse_weight} must be in '
                     '[0, 1].')
  sg = jax.lax.stop_gradient
  q = q.astype(jnp.float32)
  target_v = sg(target_v.astype(jnp.float32))
  q_taken = qlearning.action_values(q, actions)
  values = qlearning.soft_value(q, tau)
  advantage = q_taken - values
  per_token, abs_error, q_target = _pcl_per_token(
      advantage, target_v, rewards_t, mask, objective, discount)
  if reverse_weight:
    if target_adv is None:
      raise ValueError('sql_loss: reverse_weight > 0 needs target_adv.')
    reverse, reverse_abs, _ = _pcl_per_token(
        sg(target_adv.astype(jnp.float32)), values, rewards_t, mask,
        objective, discount)
    per_token = (1 - reverse_weight) * per_token + reverse_weight * reverse
    abs_error = (1 - reverse_weight) * abs_error + reverse_weight * reverse_abs
  loss = masked.masked_mean(per_token, mask)
  _, entropy = logprob.token_logprobs(q, actions, temperature=tau)
  metrics = {
      'td_loss': loss,
      'td_error/abs_mean': masked.masked_mean(abs_error, mask),
      'q/mean': masked.masked_mean(q_taken, mask),
      'q/target_mean': masked.masked_mean(q_target, mask),
      'entropy': masked.masked_mean(entropy, mask),
  }
  return loss, metrics


@dataclasses.dataclass(frozen=True)
class SQLConfig:
  """Hyperparameters of soft Q-learning (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'discount': base.GAMMA_ZERO,
      'reverse_weight': schema.Means(zero="the paper's equations alone"),
      'reward_shift': schema.Means(zero='no shift',
                                   negative='rewards shifted down')}

  NAME: ClassVar[str] = 'sql'

  objective: str = 'mixed'  # single (eq. 9) | multi (eq. 11) | mixed (mean).
  discount: float = 1.0  # gamma; episodes are a few tokens long.
  tau: float = 1.0  # Entropy temperature of pi = softmax(Q / tau).
  target_update: float = 0.001  # Polyak rate of the target network per step.
  # Weight of the objective with networks swapped (A_tbar, V_theta), which
  # trains the values; the paper's code mixes the two. 0: the paper's eqs.
  reverse_weight: float = 0.0
  # Q = logits - V_ref(s) (the reference policy's log-partition; see the
  # module docstring); False: Q = raw logits.
  normalize_q: bool = True
  # The paper shapes rewards to a range (r' = scale * r + shift): rewards are
  # log-probability differences here, so their scale sets how sharp pi gets.
  reward_scale: float = 1.0
  reward_shift: float = 0.0
  num_epochs: int = 1  # Passes over each batch.
  num_minibatches: int = 1  # Minibatches per pass.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.positive(self, 'reward_scale')
    if self.objective not in OBJECTIVES:
      raise ValueError(f'config.algo.objective={self.objective!r}; known: '
                       f'{OBJECTIVES}.')
    if not 0 <= self.discount <= 1:
      raise ValueError(f'config.algo.discount={self.discount} must be in '
                       '[0, 1].')
    if self.tau <= 0:
      raise ValueError(f'config.algo.tau={self.tau} must be > 0.')
    if not 0 < self.target_update <= 1:
      raise ValueError(f'config.algo.target_update={self.target_update} must '
                       'be in (0, 1] (1: copy the online network each step).')
    if not 0 <= self.reverse_weight <= 1:
      raise ValueError(f'config.algo.reverse_weight={self.reverse_weight} '
                       'must be in [0, 1].')


@flax.struct.dataclass
class SQLExperience:
  """What soft Q-learning learns from.

  Attributes:
    rollout: the B sequences.
    target_v: f32[B, T] the target network's soft values, less v_ref.
    v_ref: f32[B, T] the per-state shift of the Q-values
      (`qlearning.reference_values`; zeros without `normalize_q`).
    target_adv: f32[B, T] the target network's soft advantage of the taken
      action (the reverse objective's target).
    rewards_t: f32[B, T] per-step rewards (shaped; the sequence's at its
      last step).
  """

  rollout: Rollout
  target_v: jax.Array
  v_ref: jax.Array
  target_adv: jax.Array
  rewards_t: jax.Array


def make(cfg: SQLConfig) -> base.Algorithm:
  """Soft Q-learning as an `Algorithm`.

  `algo_state = {'target_params': ...}`, started from the initial params
  (`init_state(params)`). `prepare` evaluates the target network's soft values
  on the batch, then moves the target one Polyak step towards the online
  params; the loss needs the online logits only. The same functions serve
  on-policy rollouts and offline batches (`config.rl.source`).
  """

  def init_state(params):
    return {'target_params': jax.tree.map(jnp.copy, params)}

  def prepare(env, state, rollout, rewards, key):
    del key
    target = state.algo_state['target_params']
    sg = jax.lax.stop_gradient
    target_q = sg(env.action_logits(target, rollout))
    target_v = qlearning.soft_value(target_q, cfg.tau)
    target_adv = qlearning.action_values(target_q, rollout.actions) - target_v
    v_ref = qlearning.reference_values(env, state, rollout,
                                       enabled=cfg.normalize_q, tau=cfg.tau)
    shaped = cfg.reward_scale * rewards + cfg.reward_shift
    experience = SQLExperience(
        rollout=rollout, target_v=target_v - v_ref, v_ref=v_ref,
        target_adv=target_adv,
        rewards_t=returns.terminal_rewards(shaped, rollout.mask))
    algo_state = {'target_params': optax.incremental_update(
        state.params, target, cfg.target_update)}
    return experience, algo_state, {
        'v/target_mean': masked.masked_mean(target_v - v_ref, rollout.mask)}

  def loss(env, params, exp: SQLExperience):
    rollout = exp.rollout
    # The per-state shift leaves the loss as it is; it sets the Q metrics.
    q = env.action_logits(params, rollout) - exp.v_ref[..., None]
    return sql_loss(q, exp.target_v,
                    rollout.actions, exp.rewards_t, rollout.mask,
                    objective=cfg.objective, discount=cfg.discount,
                    tau=cfg.tau, target_adv=exp.target_adv,
                    reverse_weight=cfg.reverse_weight)

  return base.Algorithm(name=cfg.NAME, prepare=prepare, loss=loss,
                        env_requires=('action_logits',),
                        init_state=init_state, uses_reference=cfg.normalize_q,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
