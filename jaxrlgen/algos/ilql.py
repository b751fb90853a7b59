"""Implicit Language Q-Learning (ILQL), offline RL for language generation.

Snell et al. 2022, "Offline RL for Natural Language Generation with Implicit
Language Q Learning" (arXiv:2206.11871), which carries IQL (Kostrikov et al.
2021, "Offline Reinforcement Learning with Implicit Q-Learning") to tokens:

  * heads on the LM's hidden states: twin Q heads Q1, Q2 giving a value for
    every token, their Polyak-averaged targets, and a V head;
  * V is fitted to the target Q of the dataset's actions by EXPECTILE
    regression, L_V = |tau - 1(u < 0)| u^2, u = min_i Qhat_i(s, a) - V(s):
    with tau > 1/2 it approaches the best action's value without ever
    evaluating an action outside the data (the "implicit" max);
  * each Q head regresses on r_t + gamma V(s_{t+1}) (no gradient into V;
    V = 0 past the last token);
  * a conservative (CQL, Kumar et al. 2020) term per Q head,
    logsumexp_a Q(s, a) - Q(s, a_t): the cross-entropy of the Q-values read
    as logits, which pushes down Q-values of actions absent from the data;
  * the LM is the behaviour policy pi_beta, fitted by maximum likelihood on
    the dataset (the paper's pi_beta is "finetuned with standard supervised
    learning"), weighted by `bc_coef`;
  * ADVANTAGE-WEIGHTED DECODING: at sampling time
        logits(a|s) = log pi_beta(a|s) + beta (Q(s, a) - V(s)),
    i.e. pi(a|s) proportional to pi_beta(a|s) exp(beta A(s, a)), the paper's
    perturbation of pi_beta by the learned values. Here Q is the minimum of
    the online Q heads (the targets live in the algorithm's state, out of
    the evaluator's reach; they track the online heads).

The Q and V heads are one-hidden-layer MLPs (width `head_hidden_mult` x E)
whose output layers start at zero, so Q = V = 0 at the start and decoding
begins exactly at the warm-started LM. A DEVIATION from the paper, which
fine-tunes separate transformers for pi_beta and for the value functions:
here the heads sit on the LM's own trunk (one forward pass serves pi_beta, Q
and V, in training and in cached decoding, where `TextEnv.logits_fn` only
sees the LM's decoder state), so the value losses shape the LM's features
too.

Trained offline (`config.rl.source='offline'`) from a fixed dataset of scored
sequences; the algorithm itself only sees `Rollout`s and rewards.
"""

import dataclasses
import functools
from typing import Any, ClassVar

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.algos import qlearning
from jaxrlgen.core import masked
from jaxrlgen.core import returns
from jaxrlgen.core.types import Rollout

Q_HEADS = ('q1', 'q2')
# Key under which `policy_params` hands the heads to decoding, beside the LM's
# own parameters (Flax ignores parameters a module does not use).
HEADS_KEY = 'ilql_heads'


def expectile_loss(diff: jax.Array, mask: jax.Array, *,
                   expectile: float) -> jax.Array:
  """Token mean of |tau - 1(u < 0)| u^2 (Kostrikov et al. 2021, eq. 5).

  Args:
    diff: f32[B, T] u = target Q(s_t, a_t) - V(s_t).
    mask: bool[B, T] valid steps.
    expectile: tau in (0, 1); 0.5 gives half the squared error.
  Returns:
    f32[] loss.
  """
  chex.assert_rank([diff, mask], 2)
  chex.assert_equal_shape([diff, mask])
  weight = jnp.where(diff < 0, 1.0 - expectile, expectile)
  return masked.masked_mean(weight * jnp.square(diff), mask)


def cql_loss(q_values: jax.Array, actions: jax.Array,
             mask: jax.Array) -> jax.Array:
  """sum_i token mean of logsumexp_a Q_i(s_t, a) - Q_i(s_t, a_t) (ILQL eq. 4).

  Args:
    q_values: f32[K, B, T, V] each head's Q-values over the vocabulary.
    actions: i32[B, T] dataset actions.
    mask: bool[B, T] valid steps.
  """
  chex.assert_rank([q_values, actions, mask], [4, 2, 2])
  chex.assert_equal_shape_prefix([q_values[0], actions, mask], 2)

  def one(q):
    return masked.masked_mean(
        optax.softmax_cross_entropy_with_integer_labels(q, actions), mask)

  return jnp.sum(jax.vmap(one)(q_values))


def advantage_weighted_logits(logp: jax.Array, q: jax.Array, v: jax.Array, *,
                              beta: float) -> jax.Array:
  """log pi_beta(a|s) + beta (Q(s, a) - V(s)), ILQL's decoding (section 4.3).

  Args:
    logp: f32[..., V] log pi_beta(.|s).
    q: f32[..., V] Q(s, .).
    v: f32[...] V(s).
    beta: advantage weight; 0 decodes pi_beta.
  Returns:
    f32[..., V] unnormalised logits of the perturbed policy.
  """
  chex.assert_equal_shape([logp, q])
  chex.assert_equal_shape_prefix([logp, v], v.ndim)
  return logp + beta * (q - v[..., None])


def _dense(key, fan_in: int, fan_out: int, dtype):
  # LeCun (truncated) normal, as the transformer's layers.
  return nn.initializers.lecun_normal()(key, (fan_in, fan_out), dtype)


def init_heads(dims: tuple[int, int, Any], key: jax.Array,
               hidden_mult: int = 2):
  """Q1, Q2 and V heads: E -> hidden_mult * E (ReLU) -> V or 1, zero outputs.

  `dims` is (vocabulary V, width E, dtype), as the policy reads them off its
  parameters (`LMPolicy.dims`). Output layers are named `unembed` /
  `value_proj` so sharding by path suffix treats them like the LM's own
  output layers.
  """
  vocab, width, dtype = dims
  hidden = hidden_mult * width
  keys = jax.random.split(key, len(Q_HEADS) + 1)
  heads = {}
  for name, k in zip(Q_HEADS, keys):
    heads[name] = {'mlp_in': {'kernel': _dense(k, width, hidden, dtype),
                              'bias': jnp.zeros((hidden,), dtype)},
                   'unembed': {'kernel': jnp.zeros((hidden, vocab), dtype)},
                   'out_bias': jnp.zeros((vocab,), dtype)}
  heads['v'] = {'mlp_in': {'kernel': _dense(keys[-1], width, hidden, dtype),
                           'bias': jnp.zeros((hidden,), dtype)},
                'value_proj': {'kernel': jnp.zeros((hidden, 1), dtype),
                               'bias': jnp.zeros((1,), dtype)}}
  return heads


def _mlp_in(head, hidden: jax.Array) -> jax.Array:
  x = hidden.astype(jnp.float32) @ head['mlp_in']['kernel'].astype(jnp.float32)
  return jax.nn.relu(x + head['mlp_in']['bias'].astype(jnp.float32))


def q_head(head, hidden: jax.Array) -> jax.Array:
  """f32[..., V] Q-values from decoder states hidden [..., E]."""
  x = _mlp_in(head, hidden)
  return (x @ head['unembed']['kernel'].astype(jnp.float32)
          + head['out_bias'].astype(jnp.float32))


def v_head(head, hidden: jax.Array) -> jax.Array:
  """f32[...] V(s) from decoder states hidden [..., E]."""
  x = _mlp_in(head, hidden)
  out = (x @ head['value_proj']['kernel'].astype(jnp.float32)
         + head['value_proj']['bias'].astype(jnp.float32))
  return out[..., 0]


def decoding_logits_fn(*, beta: float):
  """`TextEnv.logits_fn` of ILQL's advantage-weighted policy.

  The function takes the environment, `policy_params(params)` (the LM's
  parameters with the heads under HEADS_KEY) and decoder states hidden
  [N, E]; `env.lm_logits` gives the LM's own logits.
  """
  def logits_fn(env, params, hidden):
    heads = params[HEADS_KEY]
    lm_logits = env.lm_logits(params, hidden)
    logp = jax.nn.log_softmax(lm_logits.astype(jnp.float32), axis=-1)
    q = jnp.minimum(*[q_head(heads[n], hidden) for n in Q_HEADS])
    return advantage_weighted_logits(logp, q, v_head(heads['v'], hidden),
                                     beta=beta)

  return logits_fn


def decoding_env(env, beta: float):
  """`env` sampling (and decoding greedily) from ILQL's advantage-weighted
  policy; its rollouts take `policy_params(params)`."""
  return dataclasses.replace(env, logits_fn=decoding_logits_fn(beta=beta))


@dataclasses.dataclass(frozen=True)
class ILQLConfig:
  """Hyperparameters of ILQL (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL, 'gamma': base.GAMMA_ZERO,
      'cql_coef': schema.Means(zero='no CQL term'),
      'bc_coef': schema.Means(zero="pi_beta is not trained (the warm start's)"),
      'beta': schema.Means(zero='decode with pi_beta alone')}

  gamma: float = 0.99  # Discount over tokens.
  expectile: float = 0.7  # tau of the expectile value loss (> 0.5: optimism).
  cql_coef: float = 0.01  # Weight of the CQL term (alpha in ILQL eq. 5).
  bc_coef: float = 1.0  # Weight of pi_beta's log-likelihood term.
  value_coef: float = 1.0  # Weight of the expectile V loss.
  beta: float = 4.0  # Advantage weight of the decoding policy.
  tau: float = 0.01  # Polyak rate of the target Q heads per step.
  head_hidden_mult: int = 2  # Heads' hidden width, in multiples of E.
  num_epochs: int = 1  # Passes over each dataset batch.
  num_minibatches: int = 1  # Minibatches per pass.
  entropy_coef: float = 0.0  # Bonus on pi_beta's token entropy.
  kl_coef: float = 0.0  # Weight of the k3 KL of pi_beta to the reference.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.positive(self, 'value_coef')
    schema.non_negative(self, 'entropy_coef')
    if not 0 < self.expectile < 1:
      raise ValueError(f'config.algo.expectile={self.expectile} must be in '
                       '(0, 1).')
    if self.tau == 0:  # Polyak rate 0: the target never follows.
      raise schema.FieldError('tau', '=0 must be in (0, 1].')
    for name in ('gamma', 'tau'):
      value = getattr(self, name)
      if not 0 <= value <= 1:
        raise ValueError(f'config.algo.{name}={value} must be in [0, 1].')
    for name in ('cql_coef', 'bc_coef', 'value_coef', 'beta', 'kl_coef'):
      if getattr(self, name) < 0:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '>= 0.')
    if self.head_hidden_mult < 1:
      raise ValueError(f'config.algo.head_hidden_mult={self.head_hidden_mult}'
                       ' must be >= 1.')

  @property
  def uses_reference(self) -> bool:
    return self.kl_coef > 0


@flax.struct.dataclass
class ILQLExperience:
  """What ILQL learns from.

  Attributes:
    rollout: the B dataset sequences.
    rewards: f32[B] sequence rewards.
    target_q: f32[B, T] min over the target Q heads of the taken actions.
    ref_logp: f32[B, T] reference log-probs, or None without a KL term.
  """

  rollout: Rollout
  rewards: jax.Array
  target_q: jax.Array
  ref_logp: jax.Array | None = None


def make(cfg: ILQLConfig) -> base.Algorithm:
  """ILQL as an `Algorithm`.

  params = {'policy': the LM (pi_beta), 'heads': {'q1', 'q2', 'v'}};
  algo_state = {'target_params': the target Q heads}. `policy_params` gives
  the LM's parameters with the heads beside them (under HEADS_KEY), which
  the LM reads as its own and `decoding_env`'s sampler reads as ILQL's.
  """

  def init_params(env, policy_params, key):
    # The heads' shapes are read off the policy's parameters.
    return {'policy': policy_params,
            'heads': init_heads(env.policy.dims(policy_params), key,
                                cfg.head_hidden_mult)}

  def policy_params(params):
    return {**params['policy'], HEADS_KEY: params['heads']}

  def init_state(params):
    return {'target_params': {n: jax.tree.map(jnp.copy, params['heads'][n])
                              for n in Q_HEADS}}

  def prepare(env, state, rollout, rewards, key):
    del key
    # Targets track the online heads as they were after the last update.
    target = optax.incremental_update(
        {n: state.params['heads'][n] for n in Q_HEADS},
        state.algo_state['target_params'], cfg.tau)
    hidden = env.hidden_states(state.params['policy'], rollout)
    target_q = jnp.minimum(*[
        qlearning.action_values(q_head(target[n], hidden), rollout.actions)
        for n in Q_HEADS])
    experience = ILQLExperience(
        rollout=rollout, rewards=rewards.astype(jnp.float32),
        target_q=jax.lax.stop_gradient(target_q),
        ref_logp=(base.reference_logp(env, state, rollout)
                  if cfg.uses_reference else None))
    return experience, {'target_params': target}, {
        'q/target_taken_mean': masked.masked_mean(target_q, rollout.mask)}

  def loss(env, params, exp: ILQLExperience):
    rollout = exp.rollout
    mask, actions = rollout.mask, rollout.actions
    hidden = env.hidden_states(params['policy'], rollout)
    heads = params['heads']
    q_all = jnp.stack([q_head(heads[n], hidden) for n in Q_HEADS])
    v = v_head(heads['v'], hidden)
    # Q's target uses V of the next state, held fixed (IQL eq. 6).
    targets = returns.n_step_returns(
        returns.terminal_rewards(exp.rewards, mask),
        jax.lax.stop_gradient(v), mask, n=1, gamma=cfg.gamma)
    td, metrics = qlearning.twin_td_loss(
        jax.vmap(qlearning.action_values, (0, None))(q_all, actions),
        targets, mask)
    v_loss = expectile_loss(exp.target_q - v, mask,
                            expectile=cfg.expectile)
    cql = cql_loss(q_all, actions, mask)
    # pi_beta: maximum likelihood on the dataset, the LM's own head, read
    # off the same trunk pass as the heads.
    out = env.evaluate_hidden(params['policy'], hidden, actions)
    nll = -masked.masked_mean(out.logp, mask)
    reg, reg_metrics = base.regularizers(
        out, rollout, exp.ref_logp, entropy_coef=cfg.entropy_coef,
        kl_coef=cfg.kl_coef)
    total = (td + cfg.value_coef * v_loss + cfg.cql_coef * cql
             + cfg.bc_coef * nll + reg)
    metrics.update({
        'value_loss': v_loss, 'cql_loss': cql, 'policy_loss': nll,
        'v/mean': masked.masked_mean(v, mask),
        'advantages/mean': masked.masked_mean(
            jnp.min(jax.vmap(qlearning.action_values, (0, None))(
                q_all, actions), axis=0) - v, mask),
        **reg_metrics})
    return total, jax.tree.map(jax.lax.stop_gradient, metrics)

  return base.Algorithm(
      name='ilql', prepare=prepare, loss=loss, init_state=init_state,
      init_params=init_params, policy_params=policy_params,
      uses_reference=cfg.uses_reference, num_epochs=cfg.num_epochs,
      num_minibatches=cfg.num_minibatches,
      decoding_env=functools.partial(decoding_env, beta=cfg.beta),
      env_requires=('hidden_states', 'evaluate_hidden', 'lm_logits',
                    'logits_fn'))
