"""The rollout: a `lax.scan` over an environment step."""

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

# step(state, key) -> (state, transition); both pytrees.
StepFn = Callable[[Any, jax.Array], tuple[Any, Any]]


def repeat_batch(batch, group_size: int):
  """Repeats every per-prompt field G times, [N, ...] -> [N*G, ...]: the
  per-sequence data of a rollout with G consecutive samples per prompt."""
  return jax.tree.map(lambda x: jnp.repeat(x, group_size, axis=0), batch)


def _scan(step: StepFn, state, keys: jax.Array):
  """`step` once per key in a `lax.scan`; transitions [B, len(keys), ...]."""
  state, transitions = jax.lax.scan(step, state, keys)
  return state, jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), transitions)


def _scan_until(step: StepFn, state, keys: jax.Array, stop, fill):
  """`_scan` in a `lax.while_loop` that ends once `stop(state)` is true;
  the steps not taken hold `fill`."""
  num_steps = keys.shape[0]
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


def unroll(step: StepFn, state, key: jax.Array, num_steps: int):
  """Runs `step` `num_steps` times with fresh keys.

  Returns:
    (final_state, transitions), the transitions' leaves stacked batch-major,
    [B, num_steps, ...], the layout algorithms use.
  """
  return _scan(step, state, jax.random.split(key, num_steps))


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
  return _scan_until(step, state, jax.random.split(key, num_steps), stop,
                     fill)


def unroll_segments(step: StepFn, state, key: jax.Array, num_steps: int, *,
                    bounds: Sequence[int], grow: Callable[[Any, int], Any],
                    stop: Callable[[Any], jax.Array] | None = None,
                    fill=None):
  """`unroll` (or `unroll_until`, given `stop` and `fill`) in segments.

  Segment j runs steps [bounds[j], bounds[j + 1]) in a loop of its own,
  after `grow(state, bounds[j + 1])` has made the state ready for the steps
  up to that bound. The state may change shape between segments: a KV cache
  sized for the tokens written so far, so that early steps attend over a
  short cache instead of the whole preallocated one. Each segment compiles
  its own loop body. Step t uses the same key as in `unroll`, so the result
  equals `unroll`'s wherever the step itself does not depend on the shape.

  Args:
    step, state, key, num_steps: as in `unroll`.
    bounds: 0 = bounds[0] < ... < bounds[-1] = num_steps.
    grow: (state, end) -> the state for steps before `end`.
    stop, fill: as in `unroll_until`; a stopped segment's successors run no
      steps (their loops test `stop` first).
  Returns:
    (final_state, transitions [B, num_steps, ...]).
  """
  bounds = tuple(bounds)
  if (bounds[0] != 0 or bounds[-1] != num_steps
      or any(a >= b for a, b in zip(bounds, bounds[1:]))):
    raise ValueError(f'bounds={bounds} must rise strictly from 0 to '
                     f'num_steps={num_steps}.')
  keys = jax.random.split(key, num_steps)
  pieces = []
  for start, end in zip(bounds, bounds[1:]):
    state = grow(state, end)
    if stop is None:
      state, transitions = _scan(step, state, keys[start:end])
    else:
      state, transitions = _scan_until(step, state, keys[start:end], stop,
                                       fill)
    pieces.append(transitions)
  return state, jax.tree.map(lambda *x: jnp.concatenate(x, axis=1), *pieces)


# The rollout context key of rewards an environment gives at individual
# steps, f32[B, T] (a multi-turn episode's turn rewards placed at each
# turn's last token). They count toward the return: `score` adds their sum;
# algorithms with per-step returns place them (`returns.token_rewards`).
STEP_REWARDS = 'step_rewards'


def step_rewards(rollout) -> jax.Array | None:
  """The rollout's `STEP_REWARDS` (masked to its valid steps), or None."""
  context = rollout.context
  if not isinstance(context, dict) or STEP_REWARDS not in context:
    return None
  return jnp.where(rollout.mask, context[STEP_REWARDS], 0.0)


def score(reward_fn, rollout, batch) -> tuple[jax.Array, jax.Array]:
  """(rewards f32[B], failed bool[B]) of any reward `(rollout, batch) ->
  f32[B]`: a host reward (one with `with_failures`) reports the items that
  failed and got their penalty; a pure one never fails. Rewards the
  environment gave at steps (`STEP_REWARDS`) are added: the result is each
  trajectory's return."""
  if hasattr(reward_fn, 'with_failures'):
    rewards, failed = reward_fn.with_failures(rollout, batch)
  else:
    rewards = reward_fn(rollout, batch)
    failed = jnp.zeros(rewards.shape, jnp.bool_)
  steps = step_rewards(rollout)
  if steps is not None:
    rewards = rewards + jnp.sum(steps, axis=1)
  return rewards, failed
