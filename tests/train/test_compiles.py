"""Nothing compiles after a run's first two steps (issue 21, the soak).

A short `loop.fit` run of the toy GRPO step as recipes run it (sampling, a
reward function, the state donated, logging, checkpoints) counts XLA
compilations through JAX's monitoring events. One of its steps has a NaN
reward, so the skipped step is checked to compile nothing either.
"""

import functools

import jax
from jax._src import dispatch
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import base
from jaxrlgen.core.types import TrainState
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import writers
from tests.algos import toy
from tests.train.test_nonfinite import toy_model

# Recorded for every XLA compilation (a persistent-cache hit included).
COMPILE_EVENT = dispatch.BACKEND_COMPILE_EVENT
NUM_PROMPTS, TOTAL, POISONED = 2, 6, 4


def poisoned_reward(rollout, batch):
  """The toy reward plus the batch's `poison` (0 or NaN per prompt)."""
  return toy.fives_reward(rollout, batch) + batch['poison']


def test_nothing_compiles_after_the_second_step(tmp_path):
  assert COMPILE_EVENT == '/jax/core/compile/backend_compile_duration'
  env, params = toy_model(num_samples=4, max_new_tokens=4)
  config = algos.default_config('grpo')
  config.beta = 0.0  # No reference pass: a smaller program to compile.
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = TrainState.create(
      params, tx, algo_state=base.init_algo_state(algo, params),
      ref_params=(jax.tree.map(jnp.copy, params) if algo.uses_reference
                  else None))
  step_fn = jax.jit(functools.partial(
      step_lib.rl_step, env=env, reward_fn=poisoned_reward, algo=algo, tx=tx),
                    donate_argnums=0)

  compiled = []  # (loop step being run, function compiled, seconds)
  running = [0]

  def listener(event, duration, **kwargs):
    if event == COMPILE_EVENT:
      compiled.append((running[0], kwargs.get('fun_name'), duration))

  def batch_fn(step):  # Called first in each step: marks where we are.
    running[0] = step + 1
    poison = np.zeros(NUM_PROMPTS, np.float32)
    if step + 1 == POISONED:
      poison[0] = np.nan
    return {'prompt': jnp.full((NUM_PROMPTS, 3), 7, jnp.int32),
            'prompt_mask': jnp.ones((NUM_PROMPTS, 3), bool),
            'poison': jnp.asarray(poison)}

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    with checkpoint_lib.Checkpointer(tmp_path / 'checkpoints') as ckpt, \
        writers.MetricWriter(str(tmp_path)) as writer:
      # Checkpoints from step 2 on: the parameters' finiteness check
      # compiles at the first one.
      state = loop.fit(state, step_fn=step_fn, batch_fn=batch_fn,
                       key=jax.random.key(0), checkpointer=ckpt,
                       writer=writer,
                       config=loop.LoopConfig(total_steps=TOTAL,
                                              checkpoint_every=2))
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)

  assert any(c[0] == 1 for c in compiled), compiled  # The count counts.
  assert [c for c in compiled if c[0] > 2] == []
  rows = writers.read_metrics(str(tmp_path))
  assert [r[base.SKIPPED] for r in rows] == [
      float(r['step'] == POISONED) for r in rows]
  assert int(state.step) == TOTAL and int(state.skipped_steps) == 1
