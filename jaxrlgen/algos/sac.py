"""Soft Actor-Critic for discrete actions, over the vocabulary.

Christodoulou 2019, "Soft Actor-Critic for Discrete Action Settings"
(arXiv:1910.07207), which adapts SAC (Haarnoja et al. 2018) to a finite
action set; here the actions are tokens:

  * the actor is the LM policy pi(a|s);
  * twin critics Q1, Q2 give a value for EVERY token at each step, so the
    soft state value is an exact sum over the vocabulary instead of a sample
    (eq. 3 and 10 of the paper):
        V(s) = sum_a pi(a|s) [min_i Q_i(s, a) - alpha log pi(a|s)];
  * critic targets y_t = r_t + gamma V_target(s_{t+1}) (0 past the last
    token) use Polyak-averaged target critics and the current policy;
  * actor loss (eq. 12) sum_a pi(a|s) [alpha log pi(a|s) - min_i Q_i(s, a)],
    exact over the vocabulary;
  * temperature loss (eq. 11) log alpha * (H(pi(.|s)) - H_target), so alpha
    falls while the policy is more random than the target entropy and rises
    when it is less.

`prior='reference'` swaps the entropy for the KL to the warm-started
reference policy: every `log pi` above becomes `log pi - log pi_ref`, the
actor's optimum becomes pi_ref exp(Q / alpha) / Z instead of
exp(Q / alpha) / Z (KL-regularised RL, as in Jaques et al. 2019, "Way
Off-Policy Batch Deep RL of Implicit Human Preferences in Dialog"), and the
temperature keeps KL(pi || pi_ref) near `target_kl`. With the uniform prior a
language model is pulled towards uniform wherever the critics are still flat
or noisy, which on the arithmetic task erases the warm start in a few dozen
steps; the reference prior leaves it in place until Q says otherwise.

Each critic is a copy of the policy's transformer (initialised from it, so
it starts from the warm start's features) with an [E, V] Q head of its own,
initialised at zero or at a multiple of the LM's output layer
(`critic_init`). Separate trunks rather than heads on the policy's trunk
keep the TD gradients, large while the critics are still wrong, away from
the policy's features. Off-policy: every rollout is added to a replay buffer
in `TrainState.algo_state` (jaxrlgen/core/replay.py) and the update learns
from a uniform sample of it.
"""

import dataclasses
import math
from typing import ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import qlearning
from jaxrlgen.core import masked
from jaxrlgen.core import replay
from jaxrlgen.core import returns
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout

CRITICS = ('q1', 'q2')
PRIORS = ('uniform', 'reference')
CRITIC_INITS = ('zero', 'policy')


def soft_state_values(q_values: jax.Array, logp: jax.Array,
                      alpha: jax.Array | float,
                      log_prior: jax.Array | float = 0.0) -> jax.Array:
  """V(s) = sum_a pi(a|s) [Q(s, a) - alpha (log pi(a|s) - log prior(a|s))].

  Christodoulou 2019, eq. 3 (the expectation over the next action is a sum
  over the finite action set instead of a sampled estimate); log_prior = 0
  is the paper's entropy, log pi_ref the KL-regularised variant.

  Args:
    q_values: f32[B, T, V] Q(s_t, a) for every action (min of the critics).
    logp: f32[B, T, V] log pi(a|s_t), normalised over the last axis.
    alpha: the temperature.
    log_prior: 0, or f32[B, T, V] log pi_ref(a|s_t).
  Returns:
    f32[B, T] soft values.
  """
  chex.assert_rank([q_values, logp], 3)
  chex.assert_equal_shape([q_values, logp])
  probs = jnp.exp(logp)
  # 0 * log 0 = 0: where a probability underflows, its term vanishes.
  return jnp.sum(probs * (q_values - alpha * (logp - log_prior)), axis=-1)


def critic_targets(target_q: jax.Array, logp: jax.Array, rewards: jax.Array,
                   mask: jax.Array, *, alpha: jax.Array | float, gamma: float,
                   log_prior: jax.Array | float = 0.0,
                   n_step: int = 1) -> jax.Array:
  """y_t = r_t + gamma V(s_{t+1}), V the exact soft value, 0 past the end.

  Christodoulou 2019, eq. 2 with the soft value of eq. 3; the sequence's
  reward arrives at its last valid step, which is terminal. With n_step > 1,
  y_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n}) (n-step returns, as
  in Hessel et al. 2018, "Rainbow"): the reward reaches the first token in
  one update instead of one target-network time constant per token; the
  soft bonuses of the n - 1 intermediate states are left out (they are the
  ones of replayed, not current, actions).

  Args:
    target_q: f32[B, T, V] min of the target critics' Q-values.
    logp: f32[B, T, V] log pi(.|s_t) of the current policy.
    rewards: f32[B] sequence rewards.
    mask: bool[B, T] valid steps (a prefix of each row).
    alpha: the temperature.
    gamma: discount.
    log_prior: 0 (entropy) or f32[B, T, V] log pi_ref (KL).
    n_step: steps before bootstrapping (>= T: Monte-Carlo returns).
  Returns:
    f32[B, T] targets, 0 at masked steps.
  """
  chex.assert_rank([rewards, mask], [1, 2])
  values = soft_state_values(target_q, logp, alpha, log_prior)
  return returns.n_step_returns(returns.terminal_rewards(rewards, mask),
                                values, mask, n=n_step, gamma=gamma)


def critic_loss(q_taken: jax.Array, targets: jax.Array, mask: jax.Array):
  """Twin-critic regression 0.5 sum_i (Q_i(s_t, a_t) - y_t)^2, token mean.

  Christodoulou 2019, eq. 2 (each critic to the same target).

  Args:
    q_taken: f32[2, B, T] each critic's Q of the taken actions.
    targets: f32[B, T] y_t (no gradient flows into them).
    mask: bool[B, T] valid steps.
  Returns:
    (loss, metrics `td_loss`, `value_loss` (its alias), `q/mean`,
    `q/target_mean`, `td_error/abs_mean`).
  """
  loss, metrics = qlearning.twin_td_loss(q_taken, targets, mask)
  loss = 0.5 * loss
  return loss, {**metrics, 'td_loss': loss, 'value_loss': loss}


def actor_loss(logp: jax.Array, q_values: jax.Array, mask: jax.Array, *,
               alpha: jax.Array | float,
               log_prior: jax.Array | float = 0.0):
  """sum_a pi(a|s) [alpha (log pi(a|s) - log prior) - Q(s, a)] (eq. 12).

  The expectation over actions is exact, so no reparameterisation or
  likelihood-ratio estimator is needed: the gradient flows through pi
  directly. Q and alpha are constants here.

  Args:
    logp: f32[B, T, V] log pi(.|s_t) of the policy being optimised.
    q_values: f32[B, T, V] min of the critics.
    mask: bool[B, T] valid steps.
    alpha: the temperature.
    log_prior: 0 (the paper's entropy) or f32[B, T, V] log pi_ref (KL).
  Returns:
    (token-mean loss, metrics `policy_loss`, `entropy` (exact, over the
    vocabulary)).
  """
  chex.assert_rank([logp, q_values, mask], [3, 3, 2])
  chex.assert_equal_shape([logp, q_values])
  q_values = jax.lax.stop_gradient(q_values)
  alpha = jax.lax.stop_gradient(alpha)
  probs = jnp.exp(logp)
  per_state = jnp.sum(probs * (alpha * (logp - log_prior) - q_values),
                      axis=-1)
  loss = masked.masked_mean(per_state, mask)
  entropy = masked.masked_mean(-jnp.sum(probs * logp, axis=-1), mask)
  return loss, {'policy_loss': loss, 'entropy': jax.lax.stop_gradient(entropy)}


def temperature_loss(log_alpha: jax.Array, divergence: jax.Array,
                     mask: jax.Array, *, target: float):
  """log alpha * (target - D), D = E_pi[log pi - log prior], token mean.

  With the paper's entropy (log prior = 0) D = -H and target = -H_target:
  log alpha * (H - H_target), eq. 11, so alpha falls while the policy is
  more random than the target and rises when it is less. With the
  reference prior D = KL(pi || pi_ref) and target the KL budget: alpha rises
  while the policy strays further. Like the paper's code this optimises
  log alpha (alpha stays positive, steps are multiplicative); D is a
  constant here.

  Args:
    log_alpha: f32[] log of the temperature.
    divergence: f32[B, T] exact D at each state.
    mask: bool[B, T] valid steps.
    target: -H_target, or the KL budget (nats per token).
  Returns:
    (loss, metrics `alpha`, `alpha_loss`).
  """
  chex.assert_rank([log_alpha, divergence, mask], [0, 2, 2])
  gap = target - masked.masked_mean(jax.lax.stop_gradient(divergence), mask)
  loss = log_alpha * gap
  return loss, {'alpha': jnp.exp(jax.lax.stop_gradient(log_alpha)),
                'alpha_loss': loss}


@dataclasses.dataclass(frozen=True)
class SACConfig:
  """Hyperparameters of discrete SAC (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'gamma': base.GAMMA_ZERO,
      'target_kl': schema.Means(
          zero="prior='reference': the policy is held at the reference"),
      'target_entropy_ratio': schema.Means(
          zero="prior='uniform': alpha lets the policy become deterministic"),
      'actor_delay_steps': schema.Means(zero='the actor trains from step 0')}

  gamma: float = 1.0  # Discount over tokens.
  n_step: int = 1  # TD steps before bootstrapping (1: the paper's targets).
  # What the temperature regularises towards: 'uniform' (the paper's
  # entropy) or 'reference' (KL to the warm-started policy).
  prior: str = 'uniform'
  target_kl: float = 0.1  # prior='reference': KL budget, nats per token.
  # Critics' Q head at the start: 'zero' (Q = 0), or 'policy': init_alpha
  # times the LM's logits, whose Boltzmann policy at init_alpha is the LM.
  critic_init: str = 'zero'
  tau: float = 0.01  # Polyak rate of the target critics per step.
  init_alpha: float = 0.01  # Initial temperature alpha.
  # prior='uniform': H_target = this fraction of log |V| (the paper: 0.98).
  target_entropy_ratio: float = 0.05
  learn_alpha: bool = True  # Learn the temperature; False: fixed init_alpha.
  # Adam moves each parameter by about the learning rate per step; log alpha
  # is stored divided by this factor so that it moves this many times faster.
  alpha_lr_scale: float = 20.0
  actor_coef: float = 1.0  # Weight of the actor loss.
  critic_coef: float = 1.0  # Weight of the critics' TD loss.
  # Updates of the critics alone before the actor (and alpha) start: the
  # critics start at Q = 0, towards which the actor would flatten the policy.
  actor_delay_steps: int = 20
  replay_capacity: int = 4096  # Sequences the replay buffer holds.
  replay_batch_size: int = 256  # Sequences sampled from it per step.
  num_epochs: int = 1  # Passes over each sample from the buffer.
  num_minibatches: int = 1  # Minibatches per pass.
  kl_coef: float = 0.0  # Weight of the k3 KL to the reference policy.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.in_range(self, 'gamma', 0.0, 1.0)
    schema.positive(self, 'actor_coef', 'critic_coef')
    schema.non_negative(self, 'actor_delay_steps', 'kl_coef')
    if self.critic_init not in CRITIC_INITS:
      raise ValueError(f'config.algo.critic_init={self.critic_init!r}; '
                       f'known: {CRITIC_INITS}.')
    if self.prior not in PRIORS:
      raise ValueError(f'config.algo.prior={self.prior!r}; known: {PRIORS}.')
    if self.n_step < 1:
      raise ValueError(f'config.algo.n_step={self.n_step} must be >= 1.')
    if self.target_kl < 0:
      raise ValueError(f'config.algo.target_kl={self.target_kl} must be >= 0.')
    if self.tau == 0:  # Polyak rate 0: the target never follows.
      raise schema.FieldError('tau', '=0 must be in (0, 1].')
    for name in ('tau', 'target_entropy_ratio'):
      value = getattr(self, name)
      if not 0 <= value <= 1:
        raise ValueError(f'config.algo.{name}={value} must be in [0, 1].')
    if self.init_alpha <= 0:
      raise ValueError(f'config.algo.init_alpha={self.init_alpha} must be > 0.')
    if self.alpha_lr_scale <= 0:
      raise ValueError(
          f'config.algo.alpha_lr_scale={self.alpha_lr_scale} must be > 0.')
    replay.check_config(self)

  @property
  def uses_reference(self) -> bool:
    return self.kl_coef > 0 or self.prior == 'reference'


def init_critic_params(policy, policy_params, *, logit_scale: float = 0.0):
  """A critic: the policy's trunk (copied) and an [E, V] Q head.

  The head starts at `logit_scale` times the LM's output layer, i.e.
  Q = logit_scale * logits: 0 gives Q = 0 everywhere; alpha gives the soft
  Q-function whose Boltzmann policy softmax(Q / alpha) is the LM itself (at
  sampling temperature 1), so the actor starts at its own optimum instead
  of being pulled towards uniform. The width E and vocabulary V are read off
  the policy's parameters (`policy`: the env's `LMPolicy`). The head is
  named `unembed` so that sharding by path suffix splits it like the LM's
  output layer.
  """
  vocab, _, dtype = policy.dims(policy_params)
  # The LM's output layers are not the critic's: it has its own head.
  trunk = jax.tree.map(jnp.copy, policy.trunk(policy_params))
  lm_head = policy.lm_head(policy_params)
  kernel = (logit_scale * lm_head.astype(jnp.float32)).astype(dtype)
  return {'trunk': trunk, 'unembed': {'kernel': kernel},
          'q_bias': jnp.zeros((vocab,), jnp.float32)}


def critic_q_values(env, critic_params, rollout: Rollout) -> jax.Array:
  """f32[B, T, V] Q(s_t, a) of every action, from one teacher-forced pass."""
  hidden = env.hidden_states(critic_params['trunk'], rollout)
  kernel = critic_params['unembed']['kernel']
  q = jnp.einsum('bte,ev->btv', hidden.astype(jnp.float32),
                 kernel.astype(jnp.float32))
  return q + critic_params['q_bias']


def policy_logprobs(env, policy_params, rollout: Rollout) -> jax.Array:
  """f32[B, T, V] log pi(.|s_t) under the env's (temperature-scaled) policy."""
  logits = env.action_logits(policy_params, rollout)
  return jax.nn.log_softmax(logits / env.sampling.scoring_temperature, axis=-1)


@flax.struct.dataclass
class SACExperience:
  """What discrete SAC learns from: a sample of the replay buffer.

  Attributes:
    rollout: the B replayed sequences.
    targets: f32[B, T] the critics' soft targets.
    actor_on: f32[B] 1 once the actor trains (after `actor_delay_steps`),
      else 0; the same for every row (per row so that minibatches carry it).
    log_prior: f32[B, T, V] the reference's log-probs over the vocabulary,
      or None when the reference is not used.
  """

  rollout: Rollout
  targets: jax.Array
  actor_on: jax.Array
  log_prior: jax.Array | None = None


def make(cfg: SACConfig) -> base.Algorithm:
  """Discrete SAC as an `Algorithm` (text environments with `hidden_states`)."""

  def log_alpha(params):
    return params['log_alpha'] * cfg.alpha_lr_scale

  logit_scale = cfg.init_alpha if cfg.critic_init == 'policy' else 0.0

  def init_params(env, policy_params, key):
    # The critics are deterministic copies of the trunk, their heads' shapes
    # read off the policy's parameters.
    del key
    params = {'policy': policy_params,
              **{name: init_critic_params(env.policy, policy_params,
                                          logit_scale=logit_scale)
                 for name in CRITICS}}
    params['log_alpha'] = jnp.asarray(
        math.log(cfg.init_alpha) / cfg.alpha_lr_scale, jnp.float32)
    return params

  def init_state(params, rollout):
    """Target critics (copies of the critics) and an empty replay buffer.

    Args:
      params: the trainable parameters (`init_params`'s output).
      rollout: an example rollout (arrays or `jax.ShapeDtypeStruct`s); only
        its per-sequence shapes are used, to size the buffer's items.
    """
    example = {'rollout': rollout,
               'rewards': jax.ShapeDtypeStruct((rollout.logp.shape[0],),
                                               jnp.float32)}
    return {'target_params': {name: jax.tree.map(jnp.copy, params[name])
                              for name in CRITICS},
            'replay': replay.init(example, cfg.replay_capacity)}

  def temperature(params):
    if cfg.learn_alpha:
      return jnp.exp(log_alpha(params))
    return jnp.asarray(cfg.init_alpha, jnp.float32)

  def prepare(env, state, rollout, rewards, key):
    algo_state = dict(state.algo_state)
    buffer = replay.add(algo_state['replay'],
                        {'rollout': rollout,
                         'rewards': rewards.astype(jnp.float32)})
    sample = replay.sample(buffer, key, cfg.replay_batch_size)
    # Targets track the critics as they were after the last update.
    targets_params = optax.incremental_update(
        {name: state.params[name] for name in CRITICS},
        algo_state['target_params'], cfg.tau)
    sampled = sample['rollout']
    q_target = jnp.minimum(*[critic_q_values(env, targets_params[n], sampled)
                             for n in CRITICS])
    logp = policy_logprobs(env, state.params['policy'], sampled)
    ref_log_prior = None
    if cfg.uses_reference:
      ref_log_prior = jax.lax.stop_gradient(
          policy_logprobs(env, state.ref_params, sampled))
    # With a uniform prior the reference is there for kl_coef only.
    log_prior = ref_log_prior if cfg.prior == 'reference' else 0.0
    targets = critic_targets(q_target, logp, sample['rewards'], sampled.mask,
                             alpha=temperature(state.params), gamma=cfg.gamma,
                             log_prior=log_prior, n_step=cfg.n_step)
    actor_on = (state.step >= cfg.actor_delay_steps).astype(jnp.float32)
    experience = SACExperience(
        rollout=sampled, targets=jax.lax.stop_gradient(targets),
        actor_on=jnp.full((cfg.replay_batch_size,), actor_on),
        log_prior=ref_log_prior)
    algo_state.update(replay=buffer, target_params=targets_params)
    # A(s, a) = Q(s, a) - sum_a' pi(a'|s) Q(s, a') of the sampled actions.
    advantages = qlearning.action_values(q_target, sampled.actions) - \
        jnp.sum(jnp.exp(logp) * q_target, axis=-1)
    metrics = {'replay/size': buffer.size.astype(jnp.float32),
               'advantages/mean': masked.masked_mean(advantages, sampled.mask)}
    return experience, algo_state, metrics

  def loss(env, params, exp: SACExperience):
    rollout = exp.rollout
    mask = rollout.mask
    q_all = jnp.stack([critic_q_values(env, params[n], rollout)
                       for n in CRITICS])
    td, metrics = critic_loss(
        jax.vmap(qlearning.action_values, (0, None))(q_all, rollout.actions),
        exp.targets, mask)
    logp = policy_logprobs(env, params['policy'], rollout)
    log_prior = exp.log_prior if cfg.prior == 'reference' else 0.0
    alpha = temperature(params)
    pi_loss, pi_metrics = actor_loss(logp, jnp.min(q_all, axis=0), mask,
                                     alpha=alpha, log_prior=log_prior)
    metrics.update(pi_metrics)
    # The actor and alpha are off (weight 0) during the critics' warm-up.
    actor_on = exp.actor_on[0]
    total = cfg.critic_coef * td + actor_on * cfg.actor_coef * pi_loss
    probs = jnp.exp(logp)
    neg_entropy = jnp.sum(probs * logp, axis=-1)
    if cfg.uses_reference:
      kl = jnp.sum(probs * (logp - exp.log_prior), axis=-1)
      metrics['kl'] = jax.lax.stop_gradient(masked.masked_mean(kl, mask))
    if cfg.prior == 'reference':
      divergence, target = kl, cfg.target_kl
    else:
      divergence = neg_entropy
      target = -cfg.target_entropy_ratio * math.log(logp.shape[-1])
    if cfg.learn_alpha:
      a_loss, a_metrics = temperature_loss(log_alpha(params), divergence,
                                           mask, target=target)
      total = total + actor_on * a_loss
      metrics.update(a_metrics)
    else:
      metrics['alpha'] = alpha
    if cfg.kl_coef:
      # The k3 estimate at the replayed actions (samples of older policies:
      # an approximation of KL(pi || pi_ref) there).
      out = PolicyOutputs(logp=qlearning.action_values(logp, rollout.actions),
                          entropy=-neg_entropy)
      reg, _ = base.regularizers(
          out, rollout,
          qlearning.action_values(exp.log_prior, rollout.actions),
          kl_coef=cfg.kl_coef)
      total = total + actor_on * reg
    return total, metrics

  return base.Algorithm(
      name='sac', prepare=prepare, loss=loss, init_state=init_state,
      init_params=init_params, policy_params=lambda params: params['policy'],
      uses_reference=cfg.uses_reference, num_epochs=cfg.num_epochs,
      num_minibatches=cfg.num_minibatches,
      env_requires=('action_logits', 'hidden_states'))
