"""RL steps with a host reward (`jaxrlgen.rewards.host.TextReward`).

Both give `step.rl_step`'s numbers (same keys, same rewards, same update) and
add the metric `reward/host_failures`, the number of items of the batch whose
reward function raised or timed out:

  * `host_rl_step`: one jitted step; the reward is a `jax.pure_callback`
    inside it.
  * `make_split_step`: two jitted halves, generate then learn, with the reward
    computed in plain Python between them, for backends or reward functions
    that should not run inside a callback.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen.algos import base as algo_base
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import TrainState
from jaxrlgen.rewards.host import TextReward
from jaxrlgen.train import step as step_lib

FAILURES_METRIC = 'reward/host_failures'


def _rollout_half(params, batch, key: jax.Array, *, env):
  # The first of rl_step's three key splits drives the rollout there too.
  rollout_key, _, _ = jax.random.split(key, 3)
  return env.rollout(params, batch['prompt'], batch['prompt_mask'],
                     rollout_key)


def host_rl_step(state: TrainState, batch, key: jax.Array, *, env,
                 reward: TextReward, algo: algo_base.Algorithm,
                 tx: optax.GradientTransformation):
  """`step.rl_step` with a host reward, also reporting its failures.

  Args: as `rl_step`, with `reward` a TextReward or any reward with its
    `with_failures(rollout, batch) -> (f32[B], bool[B])` (e.g.
    `rewards.image.ImageReward`). Jit it like `rl_step`.
  Returns:
    (new_state, rl_step's metrics plus `reward/host_failures`).
  """
  rollout = _rollout_half(algo.policy_params(state.params), batch, key, env=env)
  rewards, failed = reward.with_failures(
      rollout, rollout_lib.repeat_batch(batch, env.num_samples))
  state, metrics = step_lib.learner_step(state, rollout, rewards, batch, key,
                                         env=env, reward_fn=reward, algo=algo,
                                         tx=tx)
  return state, {**metrics,
                 FAILURES_METRIC: jnp.sum(failed, dtype=jnp.float32)}


def make_split_step(*, env, reward: TextReward, algo: algo_base.Algorithm,
                    tx: optax.GradientTransformation, donate: bool = True):
  """The RL step as two jitted halves with the host reward between them.

  `reward` is a TextReward (its `host` method scores host arrays).

  Returns:
    `step_fn(state, batch, key) -> (state, metrics)` for `loop.fit`. Its
    halves are jitted here (do not jit it again); it waits for the rollout to
    score it on the host. An algorithm that scores extra rollouts inside
    `prepare` (SCST, ReMax: `Algorithm.needs_score`) reaches the reward
    there through its callback.
  """
  generate = jax.jit(functools.partial(_rollout_half, env=env))
  learn = jax.jit(functools.partial(step_lib.learner_step, env=env,
                                    reward_fn=reward, algo=algo, tx=tx),
                  donate_argnums=(0,) if donate else ())

  def step_fn(state, batch, key):
    rollout = generate(algo.policy_params(state.params), batch, key)
    per_sequence = jax.tree.map(
        lambda x: np.repeat(np.asarray(x), env.num_samples, axis=0), batch)
    rewards, failed = reward.host(rollout, per_sequence)
    state, metrics = learn(state, rollout, jnp.asarray(rewards), batch, key)
    return state, {**metrics, FAILURES_METRIC: np.float32(failed.sum())}

  return step_fn
