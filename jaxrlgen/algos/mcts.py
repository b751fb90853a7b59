"""Expert iteration: distil MCTS-improved decoding back into the policy.

The expert is the tree search of `jaxrlgen.envs.search` (the policy as its
prior, its value head at the leaves); the apprentice is the policy. Each step
the expert decodes a batch, then the apprentice is trained towards it:

  loss = policy_coef * CE(pi_search(.|s_t), pi_theta(.|s_t))
       + value_coef * (v_theta(s_t) - z)^2            (token means)

the tree-policy target of Anthony et al. 2017 ("Thinking Fast and Slow with
Deep Learning and Tree Search", ExIt: the apprentice imitates the search's
visit distribution at every visited state, which they found better than
imitating only the chosen move) and AlphaZero's loss (Silver et al. 2017,
"Mastering the game of Go without human knowledge": (z - v)^2 - pi^T log p,
z the final outcome). With gumbel_muzero the target is the search's improved
policy softmax(prior + completed Q) (Danihelka et al. 2022). The chosen-move
target (ExIt's "CAT": maximum likelihood of the search's tokens) is offered
as `policy_target='chosen_action'`.

The reward arrives once, when the sequence ends, and the search does not
discount, so the value target of every state of a sequence is its reward z.
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
from jaxrlgen.core import logprob
from jaxrlgen.core import masked
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout

POLICY_TARGETS = ('tree_policy', 'chosen_action')


def search_targets(search_policy: jax.Array, actions: jax.Array,
                   num_actions: int, policy_target: str) -> jax.Array:
  """f32[B, T, V] the distribution the policy is trained towards.

  Args:
    search_policy: f32[B, T, V] the search's action weights.
    actions: i32[B, T] the tokens the search chose.
    num_actions: V.
    policy_target: 'tree_policy' (the weights) or 'chosen_action' (one-hot
      of the chosen token).
  """
  if policy_target == 'tree_policy':
    return search_policy
  if policy_target == 'chosen_action':
    return jax.nn.one_hot(actions, num_actions, dtype=jnp.float32)
  raise ValueError(f'Unknown policy target {policy_target!r}; known: '
                   f'{POLICY_TARGETS}.')


def sequence_returns(rewards: jax.Array, mask: jax.Array) -> jax.Array:
  """f32[B, T] undiscounted return of every step: the sequence reward z.

  Args:
    rewards: f32[B] the reward paid at the end of each sequence.
    mask: bool[B, T] valid steps (the returns of the others are 0).
  """
  chex.assert_rank([rewards, mask], [1, 2])
  return jnp.where(mask, rewards[:, None].astype(jnp.float32), 0.0)


def expert_iteration_loss(logits: jax.Array, targets: jax.Array,
                          values: jax.Array, returns: jax.Array,
                          mask: jax.Array, *, policy_coef: float = 1.0,
                          value_coef: float = 1.0):
  """The ExIt / AlphaZero distillation loss, to minimise.

    policy_loss = mean_t [-sum_a targets_t(a) log softmax(logits_t)(a)]
    value_loss  = mean_t [(values_t - returns_t)^2]
    loss        = policy_coef * policy_loss + value_coef * value_loss

  means over the valid steps (the cross-entropy is measured against the
  target's own entropy: the policy matches the search exactly at the loss's
  minimum, the search's entropy).

  Args:
    logits: f32[B, T, V] the policy's logits at each step.
    targets: f32[B, T, V] the search's distribution (rows sum to 1 on valid
      steps).
    values: f32[B, T] the value head at each step's state.
    returns: f32[B, T] the regression targets.
    mask: bool[B, T] valid steps.
    policy_coef, value_coef: the terms' weights.
  Returns:
    (loss, metrics `policy_loss`, `value_loss`).
  """
  chex.assert_rank([logits, targets, values, returns, mask], [3, 3, 2, 2, 2])
  chex.assert_equal_shape([logits, targets])
  chex.assert_equal_shape([values, returns, mask])
  chex.assert_equal_shape_prefix([logits, mask], 2)
  # 0 * log 0 is 0: the search gives no weight to tokens the policy rules out.
  cross_entropy = optax.safe_softmax_cross_entropy(
      logits.astype(jnp.float32), targets)
  policy_loss = masked.masked_mean(cross_entropy, mask)
  value_loss = masked.masked_mean(jnp.square(values - returns), mask)
  loss = policy_coef * policy_loss + value_coef * value_loss
  return loss, {'policy_loss': policy_loss, 'value_loss': value_loss}


@dataclasses.dataclass(frozen=True)
class ExpertIterationConfig:
  """Hyperparameters of MCTS expert iteration (`config.algo`).

  The search itself is configured by `config.mcts` (see
  `jaxrlgen.envs.search.MCTSConfig`), the sampler of these runs.
  """

  SPECIAL: ClassVar[schema.Special] = {
      **base.SPECIAL,
      'policy_coef': schema.Means(zero='no policy distillation: values only'),
      'value_coef': schema.Means(zero='no value regression: policy only')}

  NAME: ClassVar[str] = 'mcts_expert_iteration'

  policy_target: str = 'tree_policy'  # tree_policy (ExIt TPT) | chosen_action.
  policy_coef: float = 1.0  # Weight of the cross-entropy to the search.
  value_coef: float = 1.0  # Weight of the value regression (AlphaZero: 1).
  entropy_coef: float = 0.0  # Bonus on the policy's token entropy.
  kl_coef: float = 0.0  # k3 KL to the warm-started reference; 0: none.
  num_epochs: int = 1  # Passes over each search batch.
  num_minibatches: int = 1  # Minibatches per pass.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    if self.policy_target not in POLICY_TARGETS:
      raise ValueError(f'config.algo.policy_target={self.policy_target!r}; '
                       f'known: {POLICY_TARGETS}.')
    for name in ('policy_coef', 'value_coef', 'entropy_coef', 'kl_coef'):
      if getattr(self, name) < 0:
        raise ValueError(f'config.algo.{name}={getattr(self, name)} must be '
                         '>= 0.')


@flax.struct.dataclass
class ExpertIterationExperience:
  """What expert iteration learns from.

  Attributes:
    rollout: the B sequences the search decoded; its `context` carries the
      search's `search_policy` f32[B, T, V] (the policy's target).
    returns: f32[B, T] the value targets (the sequence reward z).
    ref_logp: f32[B, T] reference log-probs, or None without a KL term.
  """

  rollout: Rollout
  returns: jax.Array
  ref_logp: jax.Array | None = None


def make(cfg: ExpertIterationConfig) -> base.Algorithm:
  """Expert iteration as an `Algorithm` over MCTS rollouts.

  The rollouts must come from `jaxrlgen.envs.search.MCTSSampler` (their
  context carries `search_policy`); the environment's model needs a value
  head when value_coef > 0.
  """

  def prepare(env, state, rollout, rewards, key):
    del key
    if 'search_policy' not in rollout.context:
      raise ValueError(
          "mcts_expert_iteration learns from MCTS rollouts: set "
          "config.rl.sampler='mcts' (the rollout has no search_policy).")
    mask = rollout.mask
    experience = ExpertIterationExperience(
        rollout=rollout, returns=sequence_returns(rewards, mask),
        ref_logp=(base.reference_logp(env, state, rollout) if cfg.kl_coef
                  else None))
    weights = rollout.context['search_policy']
    search_entropy = jnp.sum(jax.scipy.special.entr(weights), axis=-1)
    metrics = {
        'search/value': masked.masked_mean(rollout.context['search_value'],
                                           mask),
        'search/entropy': masked.masked_mean(search_entropy, mask),
    }
    return experience, state.algo_state, metrics

  def loss(env, params, exp: ExpertIterationExperience):
    rollout = exp.rollout
    hidden = env.hidden_states(params, rollout)
    logits = env.lm_logits(params, hidden).astype(jnp.float32)
    if cfg.value_coef:
      values = env.value(params, hidden)
    else:
      values = jnp.zeros(rollout.mask.shape, jnp.float32)
    targets = search_targets(rollout.context['search_policy'],
                             rollout.actions, logits.shape[-1],
                             cfg.policy_target)
    value, metrics = expert_iteration_loss(
        logits, targets, values, exp.returns, rollout.mask,
        policy_coef=cfg.policy_coef, value_coef=cfg.value_coef)
    logp, entropy = logprob.token_logprobs(logits, rollout.actions)
    out = PolicyOutputs(logp=logp, entropy=entropy, values=values)
    reg, reg_metrics = base.regularizers(
        out, rollout, exp.ref_logp, entropy_coef=cfg.entropy_coef,
        kl_coef=cfg.kl_coef)
    return value + reg, {**metrics, **reg_metrics}

  return base.Algorithm(name=cfg.NAME, prepare=prepare, loss=loss,
                        env_requires=('hidden_states', 'lm_logits', 'value'),
                        uses_reference=cfg.kl_coef > 0,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
