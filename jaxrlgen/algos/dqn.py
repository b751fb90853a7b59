"""Token-level deep Q-learning with a target network and an on-device replay
buffer (Mnih et al. 2015, "Human-level control through deep reinforcement
learning"; double Q-learning: van Hasselt et al. 2016, "Deep Reinforcement
Learning with Double Q-learning").

The LM's logits are Q-values over the vocabulary: Q_theta(s_t, a) with s_t the
prompt and the tokens before step t. Each step's new sequences go into a ring
buffer of sequences (`jaxrlgen.core.replay`) in `algo_state`; a batch of
sequences sampled from it regresses the taken actions' Q-values on n-step
targets (Sutton & Barto 2018, eq. 7.1):

  y_t = sum_{k<n} gamma^k r_{t+k} + gamma^n Q_tbar(s_{t+n}, a*),
  a* = argmax_a Q_tbar(s_{t+n}, a)      (DQN, Mnih et al. eq. 2)
  a* = argmax_a Q_theta(s_{t+n}, a)     (double DQN, van Hasselt et al. eq. 4)

with the sequence reward at its last valid token and nothing bootstrapped past
it (`jaxrlgen.algos.qlearning`). Targets are computed once per step, before
the update, from the current networks (the target network is slow anyway).

Q is measured from the frozen reference policy's log-partition when
`normalize_q` (default): Q(s, a) = f_theta(a | s) - V_ref(s), V_ref(s) =
logsumexp f_ref(. | s). The shift is constant per state, so argmax Q and
softmax(Q) are the LM's own, but a warm-started LM's logit levels, which
differ between states by several nats, no longer swamp rewards of order 1:
at the start max_a Q(s, a) = log pi_ref(greedy | s) <= 0 everywhere.

Exploration is Boltzmann over Q: the text environment samples from
softmax(logits / config.rl.temperature), i.e. softmax(Q / T); greedy
evaluation takes argmax Q.
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
from jaxrlgen.core import replay
from jaxrlgen.core import returns
from jaxrlgen.core.types import Rollout

LOSSES = ('huber', 'mse')


def bootstrap_values(target_q: jax.Array, online_q: jax.Array | None = None
                     ) -> jax.Array:
  """f32[B, T]: V(s_t) = Q_tbar(s_t, a*) with a* greedy w.r.t. online_q if
  given (double DQN) else w.r.t. target_q (DQN's max)."""
  chex.assert_rank(target_q, 3)
  if online_q is None:
    return qlearning.hard_value(target_q)
  chex.assert_equal_shape([target_q, online_q])
  greedy = jnp.argmax(online_q, axis=-1)
  return qlearning.action_values(target_q, greedy)


def dqn_loss(q: jax.Array, actions: jax.Array, targets: jax.Array,
             mask: jax.Array, *, loss: str = 'huber', delta: float = 1.0):
  """Q-regression of the taken actions on fixed targets, token mean.

  Args:
    q: f32[B, T, V] online Q-values (the LM's logits).
    actions: i32[B, T] taken actions.
    targets: f32[B, T] TD targets (constants).
    mask: bool[B, T] valid steps.
    loss: 'huber' (delta) or 'mse' (0.5 x^2).
    delta: the Huber threshold.
  Returns:
    (loss, metrics `td_loss`, `td_error/abs_mean`, `q/mean`, `q/target_mean`,
    `entropy` of the Boltzmann policy softmax(Q), `qlearning.td_fit_metrics`).
  """
  chex.assert_rank([q, actions, targets, mask], [3, 2, 2, 2])
  chex.assert_equal_shape([actions, targets, mask])
  if loss not in LOSSES:
    raise ValueError(f'dqn_loss: loss={loss!r}; known: {LOSSES}.')
  q = q.astype(jnp.float32)
  q_taken = qlearning.action_values(q, actions)
  targets = jax.lax.stop_gradient(targets)
  error = targets - q_taken
  per_token = (optax.huber_loss(q_taken, targets, delta=delta) if loss == 'huber'
               else optax.l2_loss(q_taken, targets))
  value = masked.masked_mean(per_token, mask)
  _, entropy = logprob.token_logprobs(q, actions)
  metrics = {
      'td_loss': value,
      'td_error/abs_mean': masked.masked_mean(jnp.abs(error), mask),
      'q/mean': masked.masked_mean(q_taken, mask),
      'q/target_mean': masked.masked_mean(targets, mask),
      'entropy': masked.masked_mean(entropy, mask),
      **qlearning.td_fit_metrics(q_taken, targets, mask),
  }
  return value, metrics


@dataclasses.dataclass(frozen=True)
class DQNConfig:
  """Hyperparameters of token-level DQN (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'discount': base.GAMMA_ZERO,
      'reward_shift': schema.Means(zero='no shift',
                                   negative='rewards shifted down')}

  NAME: ClassVar[str] = 'dqn'

  discount: float = 1.0  # gamma; episodes are a few tokens long.
  n_step: int = 1  # Steps before bootstrapping (>= T: Monte-Carlo targets).
  double: bool = True  # Double DQN: the online network picks a*.
  target_update: float = 0.01  # Polyak rate of the target network per step.
  normalize_q: bool = True  # Q = logits - V_ref(s) (module docstring).
  loss: str = 'huber'  # huber | mse.
  huber_delta: float = 1.0  # Huber threshold.
  replay_capacity: int = 4096  # Sequences the ring buffer holds.
  replay_batch_size: int = 256  # Sequences sampled from it per step.
  reward_scale: float = 1.0  # r' = scale * r + shift (Q-values are logits).
  reward_shift: float = 0.0
  num_epochs: int = 1  # Passes over each sampled batch.
  num_minibatches: int = 1  # Minibatches per pass.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.positive(self, 'huber_delta', 'reward_scale')
    if self.loss not in LOSSES:
      raise ValueError(f'config.algo.loss={self.loss!r}; known: {LOSSES}.')
    if self.n_step < 1:
      raise ValueError(f'config.algo.n_step={self.n_step} must be >= 1.')
    if not 0 <= self.discount <= 1:
      raise ValueError(f'config.algo.discount={self.discount} must be in '
                       '[0, 1].')
    if not 0 < self.target_update <= 1:
      raise ValueError(f'config.algo.target_update={self.target_update} must '
                       'be in (0, 1].')
    replay.check_config(self)


@flax.struct.dataclass
class DQNExperience:
  """What DQN learns from: a sample of the replay buffer.

  Attributes:
    rollout: the B replayed sequences.
    targets: f32[B, T] n-step targets from the target network.
    v_ref: f32[B, T] the per-state shift of the Q-values
      (`qlearning.reference_values`; zeros without `normalize_q`).
  """

  rollout: Rollout
  targets: jax.Array
  v_ref: jax.Array


def make(cfg: DQNConfig) -> base.Algorithm:
  """Token-level DQN as an `Algorithm`.

  `algo_state = {'target_params', 'replay'}`: `init_state(params, rollout)`
  needs the initial params and an example rollout (arrays or
  `jax.ShapeDtypeStruct`s: only the per-sequence shapes are used) to size the
  buffer. The buffer stores whole sequences (rollout and reward); `prepare`
  adds the step's rollout (it must fit the capacity), samples
  `replay_batch_size` sequences and computes their targets.
  """

  def init_state(params, rollout):
    example = {'rollout': rollout,
               'rewards': jax.ShapeDtypeStruct((rollout.logp.shape[0],),
                                               jnp.float32)}
    return {'target_params': jax.tree.map(jnp.copy, params),
            'replay': replay.init(example, cfg.replay_capacity)}

  def prepare(env, state, rollout, rewards, key):
    target = state.algo_state['target_params']
    buffer = replay.add(state.algo_state['replay'],
                        {'rollout': rollout, 'rewards': rewards})
    sampled = replay.sample(buffer, key, cfg.replay_batch_size)
    seqs = sampled['rollout']
    sg = jax.lax.stop_gradient
    v_ref = qlearning.reference_values(env, state, seqs,
                                       enabled=cfg.normalize_q)
    target_q = sg(env.action_logits(target, seqs)) - v_ref[..., None]
    online_q = (sg(env.action_logits(state.params, seqs)) if cfg.double
                else None)  # Its argmax only: no shift needed.
    shaped = cfg.reward_scale * sampled['rewards'] + cfg.reward_shift
    targets = returns.n_step_returns(
        returns.terminal_rewards(shaped, seqs.mask),
        bootstrap_values(target_q, online_q), seqs.mask, n=cfg.n_step,
        gamma=cfg.discount)
    algo_state = {'target_params': optax.incremental_update(
                      state.params, target, cfg.target_update),
                  'replay': buffer}
    experience = DQNExperience(rollout=seqs, targets=targets, v_ref=v_ref)
    return experience, algo_state, {
        'replay/size': buffer.size.astype(jnp.float32),
        'replay/reward_mean': jnp.mean(sampled['rewards'])}

  def loss(env, params, exp: DQNExperience):
    rollout = exp.rollout
    q = env.action_logits(params, rollout) - exp.v_ref[..., None]
    return dqn_loss(q, rollout.actions,
                    exp.targets, rollout.mask, loss=cfg.loss,
                    delta=cfg.huber_delta)

  return base.Algorithm(name=cfg.NAME, prepare=prepare, loss=loss,
                        env_requires=('action_logits',),
                        init_state=init_state, uses_reference=cfg.normalize_q,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
