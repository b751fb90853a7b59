"""Learning from preferences: reward models, DPO and its relatives.

All losses are pure functions of per-sequence scores or log-prob sums over
(prompt, chosen, rejected) triples:

  * `bradley_terry_loss`: -log sigmoid(r_chosen - r_rejected) for a reward
    model (Bradley & Terry 1952; Ziegler et al. 2019; Ouyang et al. 2022).
  * `dpo_loss`: Direct Preference Optimisation (Rafailov et al. 2023); with
    `label_smoothing` > 0 the conservative DPO of Mitchell 2023, which treats
    each label as flipped with that probability.
  * `ipo_loss`: Identity Preference Optimisation (Azar et al. 2023), a squared
    loss that pulls the log-ratio margin to 1 / (2 beta) instead of to
    infinity.
  * `simpo_loss`: SimPO (Meng et al. 2024), reference-free, on length-averaged
    log-probs with a target margin gamma.

Training:
  * `reward_model_step`: one optimizer step of a reward model (or an ensemble
    of K, each on its own bootstrap weights) on a batch of triples.
  * `offline_step`: one DPO / IPO / SimPO step on a batch of triples.
  * `make_online_dpo`: online DPO as an `Algorithm` (Guo et al. 2024, "Direct
    language model alignment from online AI feedback"): for each prompt the
    best and worst of its G samples under the reward form the pair.

A batch of triples is a dict: `prompt` i32[N, P], `prompt_mask` bool[N, P],
`chosen` / `rejected` i32[N, T] and `chosen_mask` / `rejected_mask`
bool[N, T] (completions right-padded, EOS included); see
`jaxrlgen.data.preferences`. A reward model enters as its scoring function
`score_fn(params, prompt, prompt_mask, completion, completion_mask) -> f32[N]`
(e.g. `functools.partial(models.reward_model.score_completions, model)`).
"""

import dataclasses
from typing import Any, Callable, ClassVar, Mapping

import chex
import flax.struct
import jax
import jax.numpy as jnp
import optax

from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState

LOSSES = ('dpo', 'ipo', 'simpo')
Params = Any
# (params, prompt, prompt_mask, completion, completion_mask) -> f32[N].
ScoreFn = Callable[..., jax.Array]


def _pair_metrics(margin: jax.Array, weights: jax.Array) -> dict:
  total = jnp.maximum(jnp.sum(weights), 1e-8)
  # A tie is half right, as a coin flip would be.
  right = jnp.where(margin > 0, 1.0, jnp.where(margin == 0, 0.5, 0.0))
  return {'accuracy': jnp.sum(right * weights) / total,
          'margin': jnp.sum(margin * weights) / total}


def _weighted_mean(x: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(x * weights) / jnp.maximum(jnp.sum(weights), 1e-8)


def _weights(weights, like):
  return jnp.ones_like(like) if weights is None else weights.astype(like.dtype)


def bradley_terry_loss(chosen: jax.Array, rejected: jax.Array,
                       weights: jax.Array | None = None):
  """Bradley-Terry negative log-likelihood of the preferences.

  P(chosen > rejected) = sigmoid(r_chosen - r_rejected).

  Args:
    chosen: f32[N] scores of the preferred completions.
    rejected: f32[N] scores of the others.
    weights: optional f32[N] pair weights (0 drops a pair).
  Returns:
    (weighted mean loss, metrics `accuracy` (fraction with r_chosen >
    r_rejected, ties half) and `margin` (mean r_chosen - r_rejected)).
  """
  chex.assert_rank([chosen, rejected], 1)
  chex.assert_equal_shape([chosen, rejected])
  margin = (chosen - rejected).astype(jnp.float32)
  weights = _weights(weights, margin)
  loss = _weighted_mean(-jax.nn.log_sigmoid(margin), weights)
  return loss, _pair_metrics(margin, weights)


def _log_ratio_margin(policy_chosen, policy_rejected, ref_chosen, ref_rejected):
  chex.assert_rank(
      [policy_chosen, policy_rejected, ref_chosen, ref_rejected], 1)
  chex.assert_equal_shape([policy_chosen, policy_rejected, ref_chosen,
                           ref_rejected])
  chosen = (policy_chosen - ref_chosen).astype(jnp.float32)
  rejected = (policy_rejected - ref_rejected).astype(jnp.float32)
  return chosen, rejected


def _implicit_reward_metrics(chosen, rejected, beta, weights):
  # beta * log(pi / pi_ref) is DPO's implicit reward (Rafailov et al. 2023).
  metrics = _pair_metrics(beta * (chosen - rejected), weights)
  metrics['rewards/chosen'] = _weighted_mean(beta * chosen, weights)
  metrics['rewards/rejected'] = _weighted_mean(beta * rejected, weights)
  return metrics


def dpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array,
             ref_chosen: jax.Array, ref_rejected: jax.Array, *,
             beta: float, label_smoothing: float = 0.0,
             weights: jax.Array | None = None):
  """DPO (Rafailov et al. 2023, eq. 7), optionally conservative (Mitchell 2023).

  With h = beta * [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l) -
  log pi_ref(y_l))], the loss is -(1 - eps) log sigmoid(h) - eps log
  sigmoid(-h), eps the label smoothing.

  Args:
    policy_chosen, policy_rejected: f32[N] log-prob sums of the completions
      under the policy.
    ref_chosen, ref_rejected: f32[N] the same under the reference policy.
    beta: the KL strength (larger: stay closer to the reference).
    label_smoothing: eps in [0, 0.5), the assumed rate of flipped labels.
    weights: optional f32[N] pair weights.
  Returns:
    (loss, metrics `accuracy` and `margin` of the implicit rewards,
    `rewards/chosen`, `rewards/rejected`).
  """
  chosen, rejected = _log_ratio_margin(policy_chosen, policy_rejected,
                                       ref_chosen, ref_rejected)
  weights = _weights(weights, chosen)
  h = beta * (chosen - rejected)
  per_pair = -((1.0 - label_smoothing) * jax.nn.log_sigmoid(h)
               + label_smoothing * jax.nn.log_sigmoid(-h))
  return (_weighted_mean(per_pair, weights),
          _implicit_reward_metrics(chosen, rejected, beta, weights))


def ipo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array,
             ref_chosen: jax.Array, ref_rejected: jax.Array, *, beta: float,
             weights: jax.Array | None = None):
  """IPO (Azar et al. 2023): (h - 1 / (2 beta))^2 per pair.

  h is the log-ratio margin [(log pi(y_w) - log pi_ref(y_w)) - (log pi(y_l)
  - log pi_ref(y_l))] of the log-prob sums given. Args and metrics as
  `dpo_loss`.
  """
  chosen, rejected = _log_ratio_margin(policy_chosen, policy_rejected,
                                       ref_chosen, ref_rejected)
  weights = _weights(weights, chosen)
  per_pair = jnp.square(chosen - rejected - 1.0 / (2.0 * beta))
  return (_weighted_mean(per_pair, weights),
          _implicit_reward_metrics(chosen, rejected, beta, weights))


def simpo_loss(policy_chosen: jax.Array, policy_rejected: jax.Array,
               chosen_length: jax.Array, rejected_length: jax.Array, *,
               beta: float, gamma: float,
               weights: jax.Array | None = None):
  """SimPO (Meng et al. 2024), reference-free.

  -log sigmoid(beta * (log pi(y_w) / |y_w| - log pi(y_l) / |y_l|) - gamma).

  Args:
    policy_chosen, policy_rejected: f32[N] log-prob sums under the policy.
    chosen_length, rejected_length: [N] token counts of the completions.
    beta: scale of the length-normalised reward.
    gamma: target reward margin.
    weights: optional f32[N] pair weights.
  Returns:
    (loss, metrics `accuracy`, `margin`, `rewards/chosen`, `rewards/rejected`
    of the reward beta * mean token log-prob).
  """
  chex.assert_rank([policy_chosen, policy_rejected, chosen_length,
                    rejected_length], 1)
  chex.assert_equal_shape([policy_chosen, policy_rejected, chosen_length,
                           rejected_length])
  chosen = policy_chosen / jnp.maximum(chosen_length, 1).astype(jnp.float32)
  rejected = policy_rejected / jnp.maximum(rejected_length, 1).astype(
      jnp.float32)
  weights = _weights(weights, chosen)
  per_pair = -jax.nn.log_sigmoid(beta * (chosen - rejected) - gamma)
  return (_weighted_mean(per_pair, weights),
          _implicit_reward_metrics(chosen, rejected, beta, weights))


@dataclasses.dataclass(frozen=True)
class PreferenceConfig:
  """Hyperparameters of a direct preference loss (`config.algo`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'label_smoothing': schema.Means(zero='plain DPO (no label flips)'),
      'simpo_gamma': schema.Means(zero='no target margin')}

  loss: str = 'dpo'  # dpo | ipo | simpo.
  beta: float = 0.1  # KL strength (DPO / IPO) or reward scale (SimPO).
  label_smoothing: float = 0.0  # Conservative DPO's flip rate; dpo only.
  simpo_gamma: float = 0.5  # SimPO's target margin.
  num_epochs: int = 1  # Online: passes over each batch of pairs.
  num_minibatches: int = 1  # Online: minibatches (of prompts) per pass.

  def __post_init__(self):
    schema.positive(self, 'num_epochs', 'num_minibatches')
    schema.non_negative(self, 'simpo_gamma')
    if self.loss not in LOSSES:
      raise ValueError(f'config.algo.loss={self.loss!r}; known: {LOSSES}.')
    if self.beta <= 0:
      raise ValueError(f'config.algo.beta={self.beta} must be > 0.')
    if not 0.0 <= self.label_smoothing < 0.5:
      raise ValueError(f'config.algo.label_smoothing={self.label_smoothing} '
                       'must be in [0, 0.5).')
    if self.label_smoothing and self.loss != 'dpo':
      raise ValueError('config.algo.label_smoothing (conservative DPO) applies '
                       f"to loss='dpo' only, not {self.loss!r}; set it to 0.")

  @property
  def uses_reference(self) -> bool:
    return self.loss != 'simpo'


def preference_loss(cfg: PreferenceConfig, policy_chosen, policy_rejected,
                    ref_chosen, ref_rejected, chosen_length, rejected_length,
                    weights=None):
  """The loss `cfg.loss` of f32[N] log-prob sums (refs unused by SimPO)."""
  if cfg.loss == 'dpo':
    return dpo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                    beta=cfg.beta, label_smoothing=cfg.label_smoothing,
                    weights=weights)
  if cfg.loss == 'ipo':
    return ipo_loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected,
                    beta=cfg.beta, weights=weights)
  return simpo_loss(policy_chosen, policy_rejected, chosen_length,
                    rejected_length, beta=cfg.beta, gamma=cfg.simpo_gamma,
                    weights=weights)


@flax.struct.dataclass
class PreferenceExperience:
  """Triples with the reference's log-prob sums: what the direct preference
  losses learn from.

  Attributes:
    triples: the batch of N (prompt, chosen, rejected) triples, a dict as in
      the module docstring.
    ref_chosen, ref_rejected: f32[N] the reference policy's log-prob sums
      of the completions (zeros for SimPO).
    weight: f32[N] pair weights (online DPO: 0 for groups without a
      preference), or None for equal weights.
  """

  triples: Mapping[str, jax.Array]
  ref_chosen: jax.Array
  ref_rejected: jax.Array
  weight: jax.Array | None = None


def completion_rollout(prompt, prompt_mask, completion,
                       completion_mask) -> Rollout:
  """Completions of prompts as the Rollout `env.evaluate` scores."""
  return Rollout(context={'tokens': prompt, 'mask': prompt_mask},
                 actions=completion,
                 logp=jnp.zeros(completion.shape, jnp.float32),
                 mask=completion_mask)


def sequence_logp(env, params, rollout: Rollout) -> jax.Array:
  """f32[B] sum of the completion tokens' log-probs under `params`."""
  logp = env.evaluate(params, rollout).logp
  return jnp.sum(jnp.where(rollout.mask, logp, 0.0), axis=1)


def _both(batch) -> Rollout:
  """Chosen then rejected completions as one Rollout of 2N rows. Pairs of
  multi-turn episodes also carry their real slots (`chosen_attend`,
  `rejected_attend`: `envs.multiturn`), which the environment reads."""
  cat = lambda a, b: jnp.concatenate([a, b], axis=0)
  both = completion_rollout(cat(batch['prompt'], batch['prompt']),
                            cat(batch['prompt_mask'], batch['prompt_mask']),
                            cat(batch['chosen'], batch['rejected']),
                            cat(batch['chosen_mask'], batch['rejected_mask']))
  if 'chosen_attend' in batch:
    both = both.replace(context={
        **both.context,
        'attend': cat(batch['chosen_attend'], batch['rejected_attend'])})
  return both


def pair_logp(env, params, batch) -> tuple[jax.Array, jax.Array]:
  """(chosen, rejected) f32[N] log-prob sums, from one forward pass of 2N."""
  chex.assert_equal_shape([batch['chosen'], batch['rejected']])
  both = sequence_logp(env, params, _both(batch))
  n = batch['chosen'].shape[0]
  return both[:n], both[n:]


def _lengths(batch):
  return (jnp.sum(batch['chosen_mask'], axis=1),
          jnp.sum(batch['rejected_mask'], axis=1))


def offline_loss(cfg: PreferenceConfig, env, params,
                 exp: PreferenceExperience):
  """The preference loss of a batch of triples and their reference sums."""
  policy_chosen, policy_rejected = pair_logp(env, params, exp.triples)
  loss, metrics = preference_loss(
      cfg, policy_chosen, policy_rejected, exp.ref_chosen, exp.ref_rejected,
      *_lengths(exp.triples), exp.weight)
  # Log-prob sums: the chosen one should rise, and DPO lets both fall.
  metrics['logp/chosen'] = jnp.mean(policy_chosen)
  metrics['logp/rejected'] = jnp.mean(policy_rejected)
  return loss, metrics


def with_reference(cfg: PreferenceConfig, env, ref_params, triples,
                   weight: jax.Array | None = None) -> PreferenceExperience:
  """`triples` with the reference policy's log-prob sums (zeros for SimPO)."""
  n = triples['chosen'].shape[0]
  if cfg.uses_reference:
    ref_chosen, ref_rejected = jax.lax.stop_gradient(
        pair_logp(env, ref_params, triples))
  else:
    ref_chosen = ref_rejected = jnp.zeros((n,), jnp.float32)
  return PreferenceExperience(triples=triples, ref_chosen=ref_chosen,
                              ref_rejected=ref_rejected, weight=weight)


def offline_step(state: TrainState, batch, key: jax.Array, *,
                 cfg: PreferenceConfig, env,
                 tx: optax.GradientTransformation):
  """One optimizer step of DPO / IPO / SimPO on a batch of triples.

  `state.ref_params` is the frozen reference (None for SimPO). Jit with
  `cfg`, `env`, `tx` bound; the step's randomness is unused (no sampling).
  """
  if cfg.uses_reference and state.ref_params is None:
    raise ValueError(f'Loss {cfg.loss!r} needs the reference policy: build the '
                     'TrainState with ref_params.')
  env = base.bind(env, state.frozen)
  experience = with_reference(cfg, env, state.ref_params, batch)
  params, opt_state, metrics = base.minibatch_update(
      lambda p, b: offline_loss(cfg, env, p, b), tx, state.params,
      state.opt_state, experience, key)
  return base.advance(state, metrics, params=params, opt_state=opt_state)


# --- Reward models -----------------------------------------------------------

def pair_scores(score_fn: ScoreFn, params: Params, batch):
  """(chosen, rejected) f32[N] reward-model scores of a batch of triples,
  from one forward pass of 2N sequences."""
  both = _both(batch)
  scores = score_fn(params, both.context['tokens'], both.context['mask'],
                    both.actions, both.mask)
  n = batch['chosen'].shape[0]
  return scores[:n], scores[n:]


def reward_model_loss(score_fn: ScoreFn, params: Params, batch,
                      weights: jax.Array | None = None):
  """Bradley-Terry loss of a reward model on a batch of triples."""
  return bradley_terry_loss(*pair_scores(score_fn, params, batch), weights)


def reward_model_step(state: TrainState, batch, key: jax.Array, *,
                      score_fn: ScoreFn,
                      tx: optax.GradientTransformation,
                      ensemble_size: int = 1):
  """One Bradley-Terry step of a reward model or a stacked ensemble.

  With `ensemble_size` K > 1, `state.params` and `state.opt_state` are
  stacked on a leading axis K (`reward_model.stack`, `jax.vmap(tx.init)`);
  member k weighs each pair by its own Poisson(1) count drawn from
  `fold_in(key, k)`, the online bootstrap that keeps members apart (Osband
  et al. 2016) even when they start from the same trunk.

  Returns:
    (new_state, metrics `loss`, `accuracy`, `margin`, `grad_norm` and
    `nonfinite/skipped` (a member's non-finite update is skipped, the
    others' kept), averaged over the members; `nonfinite/skipped_steps`).
  """
  def member(params, opt_state, member_key):
    weights = None
    if ensemble_size > 1:
      weights = jax.random.poisson(member_key, 1.0,
                                   batch['chosen'].shape[:1]).astype(
                                       jnp.float32)
    return base.minibatch_update(
        lambda p, b: reward_model_loss(score_fn, p, b, weights), tx, params,
        opt_state, batch, member_key)

  if ensemble_size > 1:
    keys = jax.vmap(lambda k: jax.random.fold_in(key, k))(
        jnp.arange(ensemble_size))
    params, opt_state, metrics = jax.vmap(member)(state.params,
                                                  state.opt_state, keys)
    metrics = jax.tree.map(jnp.mean, metrics)
  else:
    params, opt_state, metrics = member(state.params, state.opt_state, key)
  return base.advance(state, metrics, params=params, opt_state=opt_state)


def reward_model_eval(score_fn: ScoreFn, params: Params, batch, *,
                      ensemble: bool = False):
  """Bradley-Terry loss, accuracy and margin on held-out triples.

  With `ensemble`, of the members' mean score.
  """
  if not ensemble:
    loss, metrics = reward_model_loss(score_fn, params, batch)
    return {**metrics, 'loss': loss}
  scores = jax.vmap(lambda p: pair_scores(score_fn, p, batch))(params)
  chosen, rejected = jnp.mean(scores[0], axis=0), jnp.mean(scores[1], axis=0)
  loss, metrics = bradley_terry_loss(chosen, rejected)
  return {**metrics, 'loss': loss}


# --- Online DPO --------------------------------------------------------------

def best_worst_pairs(rewards: jax.Array, group_size: int):
  """The best and worst sample of each group of G as a preference pair.

  Args:
    rewards: f32[N * G], G consecutive samples per prompt.
    group_size: G >= 2.
  Returns:
    (chosen i32[N], rejected i32[N]) row indices into the N * G samples, and
    valid bool[N]: false where the group's rewards are all equal (no
    preference to learn from).
  """
  chex.assert_rank(rewards, 1)
  if group_size < 2:
    raise ValueError(f'Pairs need at least 2 samples per prompt; got a group '
                     f'of {group_size} (config.rl.group_size).')
  groups = rewards.reshape(-1, group_size)
  offsets = jnp.arange(groups.shape[0], dtype=jnp.int32) * group_size
  best = jnp.argmax(groups, axis=1).astype(jnp.int32)
  worst = jnp.argmin(groups, axis=1).astype(jnp.int32)
  valid = jnp.max(groups, axis=1) > jnp.min(groups, axis=1)
  return offsets + best, offsets + worst, valid


def make_online_dpo(cfg: PreferenceConfig) -> base.Algorithm:
  """Online DPO as an `Algorithm`: pairs from the policy's own samples.

  `prepare` picks, for each prompt, its best and worst samples under the
  step's reward (`best_worst_pairs`) and the reference log-prob sums;
  `loss` is `cfg.loss` on those pairs, groups without a preference weighted
  0. The rollout needs G >= 2 samples per prompt; minibatches split prompts.
  """

  def prepare(env, state, rollout, rewards, key):
    del key
    chosen, rejected, valid = best_worst_pairs(rewards, env.num_samples)
    take = lambda x, idx: x[idx]
    triples = {
        'prompt': take(rollout.context['tokens'], chosen),
        'prompt_mask': take(rollout.context['mask'], chosen),
        'chosen': take(rollout.actions, chosen),
        'chosen_mask': take(rollout.mask, chosen),
        'rejected': take(rollout.actions, rejected),
        'rejected_mask': take(rollout.mask, rejected),
    }
    if 'attend' in rollout.context:  # Multi-turn episodes.
      triples['chosen_attend'] = take(rollout.context['attend'], chosen)
      triples['rejected_attend'] = take(rollout.context['attend'], rejected)
    ref = state.ref_params if cfg.uses_reference else None
    experience = with_reference(cfg, env, ref, triples,
                                weight=valid.astype(jnp.float32))
    metrics = {'pairs/valid_fraction': jnp.mean(valid),
               'pairs/reward_gap': jnp.mean(jnp.where(
                   valid, rewards[chosen] - rewards[rejected], 0.0))}
    return experience, state.algo_state, metrics

  def loss(env, params, experience):
    return offline_loss(cfg, env, params, experience)

  return base.Algorithm(name='online_dpo', prepare=prepare, loss=loss,
                        uses_reference=cfg.uses_reference,
                        num_epochs=cfg.num_epochs,
                        num_minibatches=cfg.num_minibatches)
