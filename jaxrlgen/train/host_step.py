"""The RL step as two programs with a host reward between them.

`step.rl_step` already takes a host reward (`jaxrlgen.rewards.host`): it runs
as a `jax.pure_callback` inside the one jitted step, and its failures are
logged as `reward/host_failures`. `make_split_step` gives the same numbers
(same keys, rewards, update and metrics) with the reward computed in plain
Python between a jitted generation and a jitted learner step, for backends
or reward functions that should not run inside a callback.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen.algos import base as algo_base
from jaxrlgen.core.types import Acted
from jaxrlgen.rewards.host import TextReward
from jaxrlgen.train import step as step_lib


def _rollout_half(params, batch, key: jax.Array, *, env):
  # The first of rl_step's three key splits drives the rollout there too.
  rollout_key, _, _ = jax.random.split(key, 3)
  return env.rollout(params, batch['prompt'], batch['prompt_mask'],
                     rollout_key)


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
    acted = Acted(rollout=rollout, rewards=jnp.asarray(rewards), batch=batch,
                  failed=jnp.asarray(failed))
    return learn(state, acted, key)

  return step_fn
