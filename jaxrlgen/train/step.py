"""One training iteration as one pure function, jitted once.

  actor: rollout -> reward                  (`sample`, `replay`, a search)
  learner: algo.prepare (advantages, targets, reference log-probs)
    -> algo.loss minimised over epochs x minibatches (one lax.scan).

One family of steps: `rl_step` is an actor then `learner_step`; the actor is
a strategy (sampling the policy, MCTS, an offline dataset), the reward may
run on the host (its failures are counted), and the asynchronous loop runs
the same two halves on different devices. `host_step.make_split_step` runs
them as two programs with the host reward between.

The step's randomness comes from its `key` argument (the loop folds the step
number into the run's key), so a resumed run repeats an uninterrupted one.

Non-finite numbers: a step whose rewards, loss or gradient are NaN or
infinite skips its update (the guard in `algos.base.minibatch_update`, which
every step's optimizer updates go through; `learner_step` adds the rewards and
keeps `algo_state`). Its step number still advances (`algos.base.advance`),
it reports `nonfinite/skipped` and `nonfinite/skipped_steps`, and the loop
stops the run after `max_nonfinite_steps` skipped steps in a row.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxrlgen.algos import base as algo_base
from jaxrlgen.algos import sft
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Acted
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import scored

RewardFn = Callable[[Rollout, Any], jax.Array]
Actor = Callable[[Any, Any, jax.Array], Acted]


def check_reward(reward_fn: RewardFn, rollout: Rollout, batch) -> None:
  """Fails before any compute when `reward_fn` does not return f32[B].

  Args: shapes only are used (jax.ShapeDtypeStruct pytrees are fine).
  """
  out = jax.eval_shape(reward_fn, rollout, batch)
  want = (rollout.logp.shape[0],)
  if not hasattr(out, 'shape') or out.shape != want:
    raise ValueError(
        f'The reward function {getattr(reward_fn, "__name__", reward_fn)!r} '
        f'returned {out}; a reward must be (rollout, batch) -> f32{list(want)}, '
        'one scalar per sequence.')


def rollout_metrics(rollout: Rollout, rewards: jax.Array,
                    eos_id: int | None = None) -> dict[str, jax.Array]:
  """Reward and completion statistics under stable names."""
  lengths = jnp.sum(rollout.mask, axis=1)
  metrics = {'reward/mean': jnp.mean(rewards), 'reward/std': jnp.std(rewards),
             'completions/mean_length': jnp.mean(lengths)}
  if eos_id is not None:
    ended = jnp.any(rollout.mask & (rollout.actions == eos_id), axis=1)
    metrics['completions/clipped_ratio'] = 1.0 - jnp.mean(ended)
  # Per-row counts an environment keeps (a multi-turn episode's turns and
  # tool failures), as batch means.
  stats = (rollout.context.get('stats', {})
           if isinstance(rollout.context, dict) else {})
  metrics.update({f'env/{name}': jnp.mean(value.astype(jnp.float32))
                  for name, value in stats.items()})
  return metrics


FAILURES_METRIC = 'reward/host_failures'


def uses_host(reward_fn: RewardFn) -> bool:
  """Whether some of the reward runs on the host (and can fail per item)."""
  return getattr(reward_fn, 'uses_host', hasattr(reward_fn, 'with_failures'))


bind = algo_base.bind


def generate(params, batch, key: jax.Array, *, env) -> Rollout:
  """The rollout of `sample`: the batch's prompts, G samples each. The
  first of the key's three splits drives it; the learner uses the others."""
  rollout_key, _, _ = jax.random.split(key, 3)
  return env.rollout(params, batch, rollout_key)


def sample(params, batch, key: jax.Array, *, env, reward_fn: RewardFn,
           frozen=None) -> Acted:
  """The default actor: samples the policy on the batch's prompts and scores
  the completions.

  Args:
    params: the policy parameters the actor holds (possibly stale).
    batch: per-prompt data, leading axis N (`prompt`, `prompt_mask`, ...).
    key: the step's key; the first of its three splits drives the rollout
      (the learner uses the other two), whatever the actor.
    frozen: the policy's frozen base (`TrainState.frozen`), or None.
  Returns:
    Acted with B = N * G sequences.
  """
  env = bind(env, frozen)
  rollout = generate(params, batch, key, env=env)
  rewards, failed = rollout_lib.score(
      reward_fn, rollout, rollout_lib.repeat_batch(batch, env.num_samples))
  return Acted(rollout=rollout, rewards=rewards, batch=batch, failed=failed)


def replay(params, batch, key: jax.Array, frozen=None) -> Acted:
  """The offline actor: the batch is N prompts of a dataset of scored
  sequences (`jaxrlgen.data.scored`: per-prompt fields and `completion`,
  `completion_mask`, `logp` [N, G, T], `reward` [N, G]); nothing is
  generated, `reward/mean` is the stored reward. env.num_samples must be G."""
  del params, key, frozen
  rollout, rewards, per_prompt = scored.split(batch)
  return Acted(rollout=rollout, rewards=rewards, batch=per_prompt,
               failed=jnp.zeros(rewards.shape, jnp.bool_))


def learner_step(state: TrainState, acted: Acted, key: jax.Array, *, env,
                 reward_fn: RewardFn, algo: algo_base.Algorithm,
                 tx: optax.GradientTransformation):
  """Prepares and learns from one actor's output: `rl_step`'s second half.

  With actor params equal to the learner's (no lag) and the same key,
  `learner_step(state, actor(params, batch, key), key)` is `rl_step(state,
  batch, key, actor=actor)`. `reward_fn` and `acted.batch` reach
  `algo.prepare` only as its `score` (`Algorithm.needs_score`): the reward
  of another rollout of the batch's prompts.

  A non-finite reward skips every update of the step (a NaN reward would
  reach the advantages of its whole group, or running reward statistics);
  a non-finite loss or gradient skips its optimizer update
  (`algos.base.minibatch_update`). A step that skipped any update keeps
  its `algo_state` too (baselines, KL controllers, target networks: what
  `prepare` computed from the bad numbers); only `step` and
  `skipped_steps` change.

  Returns:
    (new_state, metrics) with `rl_step`'s metrics.
  """
  env = bind(env, state.frozen)
  _, prepare_key, update_key = jax.random.split(key, 3)
  rollout, rewards, batch = acted.rollout, acted.rewards, acted.batch
  extra = ({'score': lambda other: reward_fn(other, batch)}
           if algo.needs_score else {})
  experience, algo_state, prep_metrics = algo.prepare(
      env, state, rollout, rewards, prepare_key, **extra)
  params, opt_state, loss_metrics = algo_base.minibatch_update(
      lambda p, exp: algo.loss(env, p, exp), tx, state.params,
      state.opt_state, experience, update_key, num_epochs=algo.num_epochs,
      num_minibatches=algo.num_minibatches,
      enabled=jnp.all(jnp.isfinite(rewards)))
  algo_state = algo_base.select(loss_metrics[algo_base.SKIPPED] > 0,
                                state.algo_state, algo_state)
  metrics = {
      **rollout_metrics(rollout, rewards, getattr(env, 'eos_id', None)),
      **prep_metrics, **loss_metrics}
  if uses_host(reward_fn):
    metrics[FAILURES_METRIC] = jnp.sum(acted.failed, dtype=jnp.float32)
  return algo_base.advance(state, metrics, params=params, opt_state=opt_state,
                           algo_state=algo_state)


def rl_step(state: TrainState, batch, key: jax.Array, *, env, reward_fn: RewardFn,
            algo: algo_base.Algorithm, tx: optax.GradientTransformation,
            actor: Actor | None = None):
  """One RL iteration: an actor with the current policy, then `learner_step`.

  Args:
    state: the training state (donate it).
    batch: per-prompt data, leading axis N: `prompt` i32[N, P], `prompt_mask`
      bool[N, P], and whatever the reward reads (e.g. `answer` i32[N]).
    key: this step's PRNG key.
    env, reward_fn, algo, tx: static pieces (closed over by the caller's jit).
    actor: `(policy_params, batch, key, frozen=) -> Acted`, how the batch is
      acted on: `sample` (the default: sample the policy), `replay` (an
      offline dataset); a search is `sample` with the sampler as `env`.
      `frozen` is `state.frozen`, the base of a policy with adapters.
  Returns:
    (new_state, metrics) with scalar metrics; `reward/host_failures` when
    the reward runs on the host.
  """
  actor = actor or functools.partial(sample, env=env, reward_fn=reward_fn)
  acted = actor(algo.policy_params(state.params), batch, key,
                frozen=state.frozen)
  return learner_step(state, acted, key, env=env, reward_fn=reward_fn,
                      algo=algo, tx=tx)


def supervised_rollout(batch) -> Rollout:
  """A supervised batch (`prompt`, `prompt_mask`, `target`, `target_mask`) as
  the Rollout whose actions are the targets."""
  return Rollout(context={'tokens': batch['prompt'], 'mask': batch['prompt_mask']},
                 actions=batch['target'],
                 logp=jnp.zeros(batch['target'].shape, jnp.float32),
                 mask=batch['target_mask'])


def sft_step(state: TrainState, batch, key: jax.Array, *, env,
             tx: optax.GradientTransformation):
  """One maximum-likelihood step on a supervised batch; a non-finite loss
  or gradient skips its update (`algos.base.minibatch_update`)."""
  env = bind(env, state.frozen)
  params, opt_state, metrics = algo_base.minibatch_update(
      lambda p, r: sft.loss(env, p, r), tx, state.params, state.opt_state,
      supervised_rollout(batch), key)
  return algo_base.advance(state, metrics, params=params, opt_state=opt_state)


def greedy_eval_step(params, batch, frozen=None, *, env, reward_fn: RewardFn):
  """Greedy completions of the batch's prompts (`env` decodes greedily, one
  sample each): (rewards f32[N], failed bool[N], rollout). `frozen`: the
  base of a policy with adapters."""
  rollout = bind(env, frozen).rollout(params, batch, jax.random.key(0))
  return (*rollout_lib.score(reward_fn, rollout, batch), rollout)
