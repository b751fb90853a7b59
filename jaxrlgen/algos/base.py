"""What every algorithm is: `prepare` a rollout, then minimise a `loss`.

An `Algorithm` is a bundle of pure functions over core's `Rollout`, so the
same algorithm trains any environment that offers `evaluate(params, rollout)`:

  experience, algo_state, metrics = algo.prepare(env, state, rollout, rewards,
                                                 key)
  loss, metrics = algo.loss(env, params, minibatch_of_experience)

An algorithm that scores rollouts of its own (SCST's and ReMax's greedy
baseline) sets `needs_score` and gets one more argument, `score`: the run's
reward of a rollout of the batch's prompts (see `Algorithm`).

`state.params` are the algorithm's trainable parameters: the policy's, or a
pytree holding the policy's and more (PPO's separate critic), in which case
`policy_params(params)` picks the policy's out.

`experience` is the algorithm's own `flax.struct.dataclass` (e.g.
`PolicyGradientExperience`) whose leaves all have a leading batch axis B;
`minibatch_update` shuffles it into minibatches with `jax.tree.map` and runs
epochs x minibatches of optimizer steps as one `lax.scan`.

Non-finite numbers: `minibatch_update` is where every step's optimizer
updates happen (RL, SFT, preference and reward-model steps), so the guard
lives there: an update whose loss or gradient norm is not finite is skipped
(parameters and optimizer state kept) inside the compiled step, with no host
sync. The steps add the reward (`enabled`), keep `algo_state` on a skipped
step and count it (`advance`); `train.loop` stops a run after too many
skipped steps in a row.
"""

import dataclasses
import inspect
from typing import Any, Callable, Mapping, NamedTuple

import flax.struct
import jax
import jax.numpy as jnp
import ml_collections
import optax

from jaxrlgen import schema
from jaxrlgen.core import masked
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState

PyTree = Any
Metrics = Mapping[str, jax.Array]


def _identity(params):
  return params


def _policy_params_as_is(env, policy_params, key):
  del env, key
  return policy_params


class Algorithm(NamedTuple):
  """An RL algorithm as pure functions.

  Attributes:
    name: registry name.
    prepare: (env, state, rollout, rewards f32[B], key) -> (experience,
      new_algo_state, metrics); computes advantages / targets / reference
      log-probs once per rollout. With `needs_score` it also takes `score`.
    loss: (env, params, experience) -> (scalar loss, metrics).
    needs_score: whether `prepare` takes a keyword argument `score`:
      (rollout of the batch's N prompts, one sequence of each, in the
      batch's order) -> f32[N], the run's reward of it. The step builds it
      from its reward function and the batch (SCST and ReMax score greedy
      decodes with it).
    init_state: the algorithm's running state (`TrainState.algo_state`);
      takes nothing, or asks by name for `params` (the initial trainable
      parameters: target networks start from them) and/or `rollout` (an
      example rollout, arrays or shapes: replay buffers are sized from it).
      Call it through `init_algo_state`.
    init_params: (env, policy_params, key) -> the trainable parameters
      (default: the policy's own; PPO's separate critic asks the env for a
      value head).
    policy_params: trainable parameters -> the policy's (default: identity).
    uses_reference: whether `state.ref_params` is needed at all.
    num_epochs: passes over each rollout (GRPO's mu, PPO's epochs).
    num_minibatches: minibatches per pass.
    decoding_env: env -> the environment that samples this algorithm's
      policy from `policy_params(params)` (default: `env` itself; ILQL:
      advantage-weighted decoding). Evaluation decodes with it.
    env_requires: what `prepare` / `loss` use of the environment beyond
      `rollout` and `evaluate`, as its attribute names (`value` for a
      critic on the trunk, `hidden_states` for Q heads, `action_logits`,
      `greedy`, `transitions`, ...); recipes check them with `check_env`
      before computing.
  """

  name: str
  prepare: Callable[..., tuple[PyTree, PyTree, Metrics]]
  loss: Callable[..., tuple[jax.Array, Metrics]]
  needs_score: bool = False
  init_state: Callable[[], PyTree] = dict
  init_params: Callable[[Any, PyTree, jax.Array], PyTree] = (
      _policy_params_as_is)
  policy_params: Callable[[PyTree], PyTree] = _identity
  uses_reference: bool = False
  num_epochs: int = 1
  num_minibatches: int = 1
  decoding_env: Callable[[Any], Any] = _identity
  env_requires: tuple[str, ...] = ()


@flax.struct.dataclass
class PolicyGradientExperience:
  """What the REINFORCE family (REINFORCE, SCST, ReMax, RLOO) learns from.

  Attributes:
    rollout: the B sampled sequences.
    advantages: f32[B] per-sequence or f32[B, T] per-token advantages.
    ref_logp: f32[B, T] reference log-probs, or None without a KL term.
  """

  rollout: Rollout
  advantages: jax.Array
  ref_logp: jax.Array | None = None


def bind(env, frozen):
  """`env` (an environment or a sampling strategy of one) with its policy's
  frozen base bound: `TrainState.frozen` of a policy with adapters. The
  identity when nothing is frozen. Steps call it first, so that losses and
  rollouts see the adapted policy whole."""
  return env if frozen is None else env.bind(frozen)


def check_env(algo: Algorithm, env: Any) -> None:
  """Raises if the environment (an instance or its class) lacks what the
  algorithm uses; called by recipes before anything is computed."""
  missing = [name for name in algo.env_requires if not hasattr(env, name)]
  if missing:
    kind = env if isinstance(env, type) else type(env)
    raise ValueError(
        f'config.algo.name={algo.name!r} uses env.{", env.".join(missing)}, '
        f'which {kind.__name__} does not have; choose another algorithm.')


def init_algo_state(algo, params: PyTree, rollout=None) -> PyTree:
  """`algo.init_state`, given what it asks for by argument name.

  Value-based algorithms start their target networks from the initial
  parameters (`params`) and size replay buffers from an example rollout
  (`rollout`: arrays or `jax.ShapeDtypeStruct`s); the other algorithms'
  `init_state()` takes nothing.
  """
  try:
    wanted = inspect.signature(algo.init_state).parameters
  except (TypeError, ValueError):  # Builtins such as `dict`.
    wanted = {}
  given = {'params': params, 'rollout': rollout}
  kwargs = {k: given[k] for k in wanted if k in given}
  if 'rollout' in kwargs and rollout is None:
    raise ValueError(f'Algorithm {algo.name!r} sizes its replay buffer from '
                     'an example rollout: pass init_algo_state(..., rollout=).')
  return algo.init_state(**kwargs)


SKIPPED = 'nonfinite/skipped'
SKIPPED_STEPS = 'nonfinite/skipped_steps'


def all_finite(tree: PyTree) -> jax.Array:
  """bool[]: whether every floating-point leaf of `tree` is finite."""
  checks = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.result_type(x), jnp.inexact)]
  return jnp.all(jnp.stack(checks)) if checks else jnp.array(True)


def select(pred: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
  """`on_true` where the scalar `pred` holds, else `on_false`, leaf by leaf
  (both already computed; both stay in memory until the select)."""
  return jax.tree.map(lambda a, b: jnp.where(pred, a, b), on_true, on_false)


def minibatch_update(loss_fn, tx: optax.GradientTransformation, params,
                     opt_state, experience, key: jax.Array, *,
                     num_epochs: int = 1, num_minibatches: int = 1,
                     enabled: jax.Array | bool = True):
  """`num_epochs` shuffled passes of `num_minibatches` optimizer steps.

  The non-finite guard: an optimizer step whose loss or gradient norm is NaN
  or infinite leaves `params` and `opt_state` as they were (its counters and
  schedules included), so one bad minibatch never reaches the parameters.
  The check is per optimizer step, before the update: a `lax.cond` runs
  the optimizer only on a finite gradient, so the new parameters and
  optimizer state overwrite the old in place (a `jnp.where` between old
  and new would keep both: measured on CPU with AdamW, 16 MB of parameters
  took 28 MB more temporaries that way, 4 MB with the cond; reverting a
  whole multi-minibatch step would need a copy too). With several
  minibatches, the finite ones keep their updates.

  Args:
    loss_fn: (params, minibatch) -> (loss, metrics).
    tx: the optimizer.
    params, opt_state: what is optimised.
    experience: pytree with leading axis B, B divisible by num_minibatches.
    key: PRNG key for the shuffles.
    enabled: bool[] (or a Python bool); false skips every update (the
      step's rewards are not finite).
  Returns:
    (params, opt_state, metrics averaged over all steps, plus `loss`,
    `grad_norm` and `nonfinite/skipped`: the fraction of the optimizer
    steps skipped, 0 or 1 with one minibatch and one epoch).
  """
  batch_size = jax.tree.leaves(experience)[0].shape[0]
  if batch_size % num_minibatches:
    raise ValueError(f'The rollout batch ({batch_size} sequences) is not '
                     f'divisible by algo.num_minibatches={num_minibatches}.')
  mb_size = batch_size // num_minibatches

  def sgd_step(carry, minibatch):
    params, opt_state = carry
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        params, minibatch)
    grad_norm = optax.tree.norm(grads)
    # A NaN or inf anywhere in the gradient makes its norm non-finite (a
    # finite gradient whose squares overflow does too: also worth skipping).
    ok = jnp.logical_and(enabled,
                         jnp.isfinite(loss) & jnp.isfinite(grad_norm))

    def apply(grads, params, opt_state):
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    params, opt_state = jax.lax.cond(
        ok, apply, lambda _, params, opt_state: (params, opt_state),
        grads, params, opt_state)
    metrics = {**metrics, 'loss': loss, 'grad_norm': grad_norm,
               SKIPPED: 1.0 - ok.astype(jnp.float32)}
    return (params, opt_state), metrics

  def epoch(carry, key):
    data = experience
    if num_minibatches > 1:
      order = jax.random.permutation(key, batch_size)
      data = jax.tree.map(lambda x: x[order], data)
    data = jax.tree.map(
        lambda x: x.reshape(num_minibatches, mb_size, *x.shape[1:]), data)
    return jax.lax.scan(sgd_step, carry, data)

  (params, opt_state), metrics = jax.lax.scan(
      epoch, (params, opt_state), jax.random.split(key, num_epochs))
  return params, opt_state, jax.tree.map(jnp.mean, metrics)


def advance(state: TrainState, metrics: Metrics, **changes):
  """The state after one step, and its metrics with the skip count.

  Applies `changes` (the update's `params`, `opt_state`, `algo_state`),
  adds one to `step` and, when the step skipped any update
  (`metrics['nonfinite/skipped'] > 0`), to `skipped_steps`.

  A skipped step still advances `step`: the loop draws each step's batch and
  key from the step number, so the next step reads the next batch and the
  run stays aligned with an uninterrupted one (the skipped batch is not
  retried: retrying it would make the data order depend on where NaNs
  struck, and a batch that gives NaN would likely give it again).

  Returns:
    (new state, metrics plus `nonfinite/skipped_steps`: the count so far).
  """
  skipped = (metrics[SKIPPED] > 0).astype(jnp.int32)
  count = state.skipped_steps + skipped
  state = state.replace(step=state.step + 1, skipped_steps=count, **changes)
  return state, {**metrics, SKIPPED_STEPS: count.astype(jnp.float32)}


def regularizers(out, rollout: Rollout, ref_logp: jax.Array | None, *,
                 entropy_coef: float = 0.0, kl_coef: float = 0.0):
  """The entropy bonus and KL-to-reference penalty every algorithm offers.

  Args:
    out: PolicyOutputs of the policy being optimised ([B, T] logp, entropy).
    rollout: the rollout (its mask selects the steps).
    ref_logp: f32[B, T] reference log-probs (needed when kl_coef > 0).
    entropy_coef: weight of the entropy bonus (subtracted from the loss).
    kl_coef: weight of the k3 estimate of KL(pi || pi_ref) (added).
  Returns:
    (loss term to add, metrics `entropy` and, with kl_coef, `kl`).
  """
  entropy = masked.masked_mean(out.entropy, rollout.mask)
  term = -entropy_coef * entropy
  metrics = {'entropy': entropy}
  if kl_coef:
    if ref_logp is None:
      raise ValueError('A KL-to-reference penalty needs reference log-probs.')
    kl = masked.masked_mean(k3_kl(out.logp, ref_logp), rollout.mask)
    term = term + kl_coef * kl
    metrics['kl'] = kl
  return term, metrics


def k3_kl(logp: jax.Array, ref_logp: jax.Array) -> jax.Array:
  """Unbiased, positive per-token estimate of KL(pi || pi_ref) from samples of pi.

  exp(ref - logp) - (ref - logp) - 1 (Schulman 2020, "Approximating KL
  divergence").
  """
  log_ratio = ref_logp - logp
  return jnp.exp(log_ratio) - log_ratio - 1.0


def reference_logp(env, state: TrainState, rollout: Rollout) -> jax.Array:
  """f32[B, T] log-probs of the rollout under the frozen reference policy."""
  return jax.lax.stop_gradient(env.evaluate(state.ref_params, rollout).logp)


def behaviour_logp(env, state: TrainState, rollout: Rollout,
                   policy_params=_identity) -> jax.Array:
  """f32[B, T] log-probs of the rollout under the policy being trained.

  Samplers report log-probs of their (possibly truncated) sampling
  distribution; when that is the policy itself they are reused, otherwise one
  teacher-forced pass recomputes them so the importance ratio starts at 1.
  """
  sampling = getattr(env, 'sampling', None)
  if sampling is None or (sampling.top_k == 0 and sampling.top_p >= 1.0
                          and not sampling.greedy):
    return rollout.logp
  return jax.lax.stop_gradient(
      env.evaluate(policy_params(state.params), rollout).logp)


def kept_steps(fraction: float, num_steps: int) -> int:
  """Steps of a `num_steps`-step rollout trained per sample at `fraction`
  (at least one)."""
  return max(1, round(fraction * num_steps))


def check_step_fraction(fraction: float) -> None:
  """Raises unless 0 < `config.algo.timestep_fraction` <= 1."""
  if not 0 < fraction <= 1:
    raise schema.FieldError(
        'timestep_fraction', f'={fraction} must be in (0, 1]: the fraction '
        "of each sample's steps trained (1: all of them).")


def step_subset_requires(fraction: float) -> tuple[str, ...]:
  """What training on a subset of steps needs of the environment."""
  return ('subsample_steps',) if fraction < 1 else ()


def train_steps(env, rollout: Rollout, fraction: float,
                key: jax.Array) -> Rollout:
  """The rollout restricted to a random `fraction` of each sample's steps.

  Environments whose every step carries its own state (the denoising MDP:
  `env.subsample_steps`) let a loss train on a random subset of the steps
  of each sample, which cuts every gradient step by that fraction (DDPO's
  training on a subset of timesteps; DanceGRPO's and Flow-GRPO-Fast's
  timestep selection for the group-relative losses). Rewards and
  advantages are per sample and come before it. At fraction 1, or when the
  fraction keeps every step, the rollout is returned as it is.
  """
  kept = kept_steps(fraction, rollout.num_steps)
  if kept == rollout.num_steps:
    return rollout
  return env.subsample_steps(rollout, kept, key)


# What 0 means for hyperparameters that many algorithms share; each config
# class lists its own in `SPECIAL` (see `schema.Means`).
SPECIAL: Mapping[str, schema.Means] = {
    'kl_coef': schema.Means(zero='no KL term: no reference model'),
    'kl_reward_coef': schema.Means(zero='no KL penalty in the reward'),
    'entropy_coef': schema.Means(zero='no entropy bonus'),
}
GAMMA_ZERO = schema.Means(zero='a one-step horizon: no later reward counts')


def make_config(cls, algo_config: ml_collections.ConfigDict):
  """Builds the frozen hyperparameter dataclass `cls` from `config.algo`.

  The dataclass is the one schema of an algorithm's hyperparameters; a field
  that it does not have fails here, naming the field and the known ones.
  """
  fields = {f.name for f in dataclasses.fields(cls)}
  # None: unset (`algos.any_config`'s placeholders), the default.
  given = {k: v for k, v in algo_config.items()
           if k != 'name' and v is not None}
  unknown = sorted(set(given) - fields)
  if unknown:
    raise ValueError(f'Unknown field(s) config.algo.{", config.algo.".join(unknown)}'
                     f' for algorithm {algo_config.get("name")!r}; known '
                     f'fields: {sorted(fields)}.')
  # Types coerced, and the checks' errors named 'config.algo.<field>'.
  return schema.parse(cls, given, 'config.algo')


def config_dict(cls, name: str) -> ml_collections.ConfigDict:
  """`config.algo` defaults for an algorithm: its name and dataclass fields."""
  return ml_collections.ConfigDict(
      {'name': name, **dataclasses.asdict(cls())})
