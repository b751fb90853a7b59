"""The rollout: a `lax.scan` over an environment step."""

from typing import Any, Callable

import jax
import jax.numpy as jnp

# step(state, key) -> (state, transition); both pytrees.
StepFn = Callable[[Any, jax.Array], tuple[Any, Any]]


def unroll(step: StepFn, state, key: jax.Array, num_steps: int):
  """Runs `step` `num_steps` times with fresh keys.

  Returns:
    (final_state, transitions), the transitions' leaves stacked batch-major,
    [B, num_steps, ...], the layout algorithms use.
  """
  def body(state, key):
    return step(state, key)

  state, transitions = jax.lax.scan(body, state,
                                    jax.random.split(key, num_steps))
  return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), transitions)
