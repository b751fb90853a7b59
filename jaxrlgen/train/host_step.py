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
import optax

from jaxrlgen.algos import base as algo_base
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Acted
from jaxrlgen.rewards.host import TextReward
from jaxrlgen.train import step as step_lib


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
  generate = jax.jit(functools.partial(step_lib.generate, env=env))
  learn = jax.jit(functools.partial(step_lib.learner_step, env=env,
                                    reward_fn=reward, algo=algo, tx=tx),
                  donate_argnums=(0,) if donate else ())

  def step_fn(state, batch, key):
    rollout = generate(algo.policy_params(state.params), batch, key)
    rewards, failed = reward.host(
        rollout, rollout_lib.repeat_batch(batch, env.num_samples))
    acted = Acted(rollout=rollout, rewards=jnp.asarray(rewards), batch=batch,
                  failed=jnp.asarray(failed))
    return learn(state, acted, key)

  return step_fn
