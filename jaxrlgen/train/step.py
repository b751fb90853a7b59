"""One training iteration as one pure function, jitted once.

  rollout -> reward -> algo.prepare (advantages, targets, reference log-probs)
  -> algo.loss minimised over epochs x minibatches (one lax.scan).

The step's randomness comes from its `key` argument (the loop folds the step
number into the run's key), so a resumed run repeats an uninterrupted one.
"""

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxrlgen.algos import base as algo_base
from jaxrlgen.algos import sft
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import scored

RewardFn = Callable[[Rollout, Any], jax.Array]


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
  return metrics


def actor_step(params, batch, key: jax.Array, *, env,
               reward_fn: RewardFn) -> tuple[Rollout, jax.Array]:
  """Generates and scores one batch: `rl_step`'s first half.

  Args:
    params: the policy parameters the actor holds (possibly stale).
    batch: per-prompt data, leading axis N (`prompt`, `prompt_mask`, ...).
    key: the step's key; its first of three splits is used, as in `rl_step`.
  Returns:
    (rollout of B = N * G sequences, rewards f32[B]).
  """
  rollout_key, _, _ = jax.random.split(key, 3)
  rollout = env.rollout(params, batch['prompt'], batch['prompt_mask'],
                        rollout_key)
  rewards = reward_fn(rollout, rollout_lib.repeat_batch(batch, env.num_samples))
  return rollout, rewards


def learner_step(state: TrainState, rollout: Rollout, rewards: jax.Array,
                 batch, key: jax.Array, *, env, reward_fn: RewardFn,
                 algo: algo_base.Algorithm, tx: optax.GradientTransformation):
  """Prepares and learns from one generated batch: `rl_step`'s second half.

  With actor params equal to the learner's (no lag) and the same key,
  `learner_step(state, *actor_step(params, batch, key), batch, key)` is
  `rl_step(state, batch, key)`. `reward_fn` and `batch` reach `algo.prepare`
  only as its `score` (`Algorithm.needs_score`): the reward of another
  rollout of the batch's prompts.

  Returns:
    (new_state, metrics) with `rl_step`'s metrics.
  """
  _, prepare_key, update_key = jax.random.split(key, 3)
  extra = ({'score': lambda other: reward_fn(other, batch)}
           if algo.needs_score else {})
  experience, algo_state, prep_metrics = algo.prepare(
      env, state, rollout, rewards, prepare_key, **extra)
  params, opt_state, loss_metrics = algo_base.minibatch_update(
      lambda p, exp: algo.loss(env, p, exp), tx, state.params,
      state.opt_state, experience, update_key, num_epochs=algo.num_epochs,
      num_minibatches=algo.num_minibatches)
  state = state.replace(step=state.step + 1, params=params,
                        opt_state=opt_state, algo_state=algo_state)
  metrics = {
      **rollout_metrics(rollout, rewards, getattr(env, 'eos_id', None)),
      **prep_metrics, **loss_metrics}
  return state, metrics


def rl_step(state: TrainState, batch, key: jax.Array, *, env, reward_fn: RewardFn,
            algo: algo_base.Algorithm, tx: optax.GradientTransformation):
  """One RL iteration: `actor_step` with the current policy, then `learner_step`.

  Args:
    state: the training state (donate it).
    batch: per-prompt data, leading axis N: `prompt` i32[N, P], `prompt_mask`
      bool[N, P], and whatever the reward reads (e.g. `answer` i32[N]).
    key: this step's PRNG key.
    env, reward_fn, algo, tx: static pieces (closed over by the caller's jit).
  Returns:
    (new_state, metrics) with scalar metrics.
  """
  rollout, rewards = actor_step(algo.policy_params(state.params), batch, key,
                                env=env, reward_fn=reward_fn)
  return learner_step(state, rollout, rewards, batch, key, env=env,
                      reward_fn=reward_fn, algo=algo, tx=tx)


def offline_step(state: TrainState, batch, key: jax.Array, *, env,
                 reward_fn: RewardFn, algo: algo_base.Algorithm,
                 tx: optax.GradientTransformation):
  """`learner_step` on a batch of an offline dataset of scored sequences.

  Args:
    batch: N prompts of the dataset (`jaxrlgen.data.scored`): per-prompt
      fields and `completion`, `completion_mask`, `logp` [N, G, T],
      `reward` [N, G]; env.num_samples must be G.
  Returns:
    `rl_step`'s (new_state, metrics); `reward/mean` is the batch's stored
    reward.
  """
  rollout, rewards, per_prompt = scored.split(batch)
  return learner_step(state, rollout, rewards, per_prompt, key, env=env,
                      reward_fn=reward_fn, algo=algo, tx=tx)


def supervised_rollout(batch) -> Rollout:
  """A supervised batch (`prompt`, `prompt_mask`, `target`, `target_mask`) as
  the Rollout whose actions are the targets."""
  return Rollout(context={'tokens': batch['prompt'], 'mask': batch['prompt_mask']},
                 actions=batch['target'],
                 logp=jnp.zeros(batch['target'].shape, jnp.float32),
                 mask=batch['target_mask'])


def sft_step(state: TrainState, batch, key: jax.Array, *, env,
             tx: optax.GradientTransformation):
  """One maximum-likelihood step on a supervised batch."""
  params, opt_state, metrics = algo_base.minibatch_update(
      lambda p, r: sft.loss(env, p, r), tx, state.params, state.opt_state,
      supervised_rollout(batch), key)
  return state.replace(step=state.step + 1, params=params,
                       opt_state=opt_state), metrics


def greedy_eval_step(params, batch, *, env, reward_fn: RewardFn):
  """Per-example rewards of greedy completions: f32[N] (one per prompt)."""
  rollout = env.rollout(params, batch['prompt'], batch['prompt_mask'],
                        jax.random.key(0))
  return reward_fn(rollout, batch), rollout
