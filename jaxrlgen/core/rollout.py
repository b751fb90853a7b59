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


def unroll_until(step: StepFn, state, key: jax.Array, num_steps: int, *,
                 stop: Callable[[Any], jax.Array], fill):
  """`unroll` that stops as soon as `stop(state)` is true.

  A `lax.while_loop` writes each transition into preallocated [B, num_steps]
  buffers, so shapes stay static and the steps after the stop hold `fill`.
  With the same keys as `unroll` (step t uses `split(key, num_steps)[t]`),
  the result equals `unroll`'s whenever every step after the stop would
  have produced `fill` (e.g. padding once every sequence has ended).

  Args:
    step, state, key, num_steps: as in `unroll`.
    stop: state -> bool[] whether nothing remains to be generated.
    fill: one transition (leaves [B, ...]) written at the skipped steps.
  Returns:
    (final_state, transitions [B, num_steps, ...]); the final state is the
    one at the stop, not after num_steps steps.
  """
  keys = jax.random.split(key, num_steps)
  buffer = jax.tree.map(
      lambda x: jnp.repeat(jnp.expand_dims(x, 1), num_steps, axis=1), fill)

  def cond(carry):
    t, state, _ = carry
    return (t < num_steps) & ~stop(state)

  def body(carry):
    t, state, buffer = carry
    state, transition = step(state, keys[t])
    buffer = jax.tree.map(
        lambda b, x: jax.lax.dynamic_update_index_in_dim(b, x, t, axis=1),
        buffer, transition)
    return t + 1, state, buffer

  _, state, buffer = jax.lax.while_loop(
      cond, body, (jnp.zeros((), jnp.int32), state, buffer))
  return state, buffer
