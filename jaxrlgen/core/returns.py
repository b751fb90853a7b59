"""Returns and advantages over padded [B, T] trajectories.

Conventions (batch-major, like every `Rollout` field):
  rewards[b, t]  r_t, the reward that follows action t;
  values[b, t]   v_t = V(s_t), the value of the state action t is taken in;
  mask[b, t]     step t happened. A row's valid steps are its trajectory,
                 in order, and its last valid step is terminal. They need
                 not be a prefix: a multi-turn episode's model tokens have
                 observations between them (`envs.multiturn`); the
                 recursions run over the valid steps as if they were packed
                 to the front (`pack`), so a masked step never cuts one.
A trajectory still running at the last step T - 1 was truncated by the
horizon; `bootstrap_value` f32[B] = V(s_T) then stands in for the rewards
beyond it (None: 0, i.e. the horizon ends the episode, as it does for a text
completion scored when generation stops).

Every output is 0 at masked steps. Time recursions are reverse `lax.scan`s
over the time axis (no Python loop over T), so they compile to one loop.
"""

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.core import masked


def packing(mask: jax.Array) -> jax.Array:
  """i32[B, T]: the permutation of each row that puts its valid steps
  first, in order (the identity for a prefix mask)."""
  return jnp.argsort(~mask, axis=1, stable=True)


def pack(x: jax.Array, order: jax.Array) -> jax.Array:
  """x[B, T] permuted by `packing`."""
  return jnp.take_along_axis(x, order, axis=1)


def unpack(x: jax.Array, order: jax.Array) -> jax.Array:
  """The inverse of `pack`."""
  return jnp.take_along_axis(x, jnp.argsort(order, axis=1), axis=1)


def terminal_rewards(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """f32[B, T] holding each trajectory's score at its last valid step, else 0.

  How a sequence-level reward (one score per completion) becomes per-step
  rewards r_t for the recursions below.

  Args:
    scores: f32[B] one reward per trajectory.
    mask: bool[B, T] valid steps.
  """
  chex.assert_rank([scores, mask], [1, 2])
  chex.assert_equal_shape_prefix([scores, mask], 1)
  steps = jnp.arange(mask.shape[1])
  last = jnp.max(jnp.where(mask, steps[None, :], -1), axis=1)
  at_last = steps[None, :] == last[:, None]
  return jnp.where(at_last & mask, scores[:, None].astype(jnp.float32), 0.0)


def token_rewards(scores: jax.Array, mask: jax.Array,
                  step_rewards: jax.Array | None = None) -> jax.Array:
  """f32[B, T] per-step rewards of trajectories whose returns are `scores`.

  Without `step_rewards` this is `terminal_rewards`. With them (rewards an
  environment gave at individual steps, f32[B, T], e.g. a multi-turn
  episode's turn rewards at each turn's last token; `scores` includes their
  sum, as `core.rollout.score` makes it) each step keeps its own reward and
  the rest of the return lands at the last valid step, so the rewards still
  sum to `scores`.
  """
  if step_rewards is None:
    return terminal_rewards(scores, mask)
  chex.assert_equal_shape([step_rewards, mask])
  step = jnp.where(mask, step_rewards.astype(jnp.float32), 0.0)
  return terminal_rewards(scores - jnp.sum(step, axis=1), mask) + step


def _continues_tp1(mask: jax.Array, bootstrap_value: jax.Array | None):
  """bool[B, T]: whether step t + 1 exists, i.e. whether to bootstrap past t.

  Past the last step the trajectory continues only if it is still running
  there and a bootstrap value was given.
  """
  last = mask[:, -1:] if bootstrap_value is not None else jnp.zeros_like(
      mask[:, -1:])
  return jnp.concatenate([mask[:, 1:], last], axis=1)


def _values_tp1(values: jax.Array, bootstrap_value: jax.Array | None):
  """f32[B, T]: v_{t+1}, with V(s_T) = bootstrap_value (or 0)."""
  if bootstrap_value is None:
    bootstrap_value = jnp.zeros_like(values[:, 0])
  return jnp.concatenate([values[:, 1:], bootstrap_value[:, None]], axis=1)


def reverse_discounted_cumsum(x_t: jax.Array, discount_t: jax.Array,
                              init: jax.Array | None = None) -> jax.Array:
  """y_t = x_t + discount_t * y_{t+1}, with y_T = init, by a reverse scan.

  Args:
    x_t: f32[B, T].
    discount_t: f32[B, T] discount applied to y_{t+1} at step t (0 cuts).
    init: f32[B] y_T (default 0).
  Returns:
    f32[B, T] y.
  """
  chex.assert_rank([x_t, discount_t], 2)
  chex.assert_equal_shape([x_t, discount_t])
  if init is None:
    init = jnp.zeros_like(x_t[:, 0])

  def body(y_tp1, inputs):
    x, discount = inputs
    y = x + discount * y_tp1
    return y, y

  _, y = jax.lax.scan(body, init.astype(x_t.dtype),
                      (x_t.T, discount_t.astype(x_t.dtype).T), reverse=True)
  return y.T


def discounted_returns(rewards: jax.Array, mask: jax.Array, *, gamma: float,
                       bootstrap_value: jax.Array | None = None) -> jax.Array:
  """Monte-Carlo returns G_t = sum_k gamma^k r_{t+k} to the episode's end.

  Args:
    rewards: f32[B, T] r_t.
    mask: bool[B, T] valid steps .
    gamma: discount.
    bootstrap_value: f32[B] V(s_T) for rows still running at T - 1, or None.
  Returns:
    f32[B, T] G_t, 0 at masked steps.
  """
  chex.assert_rank([rewards, mask], 2)
  chex.assert_equal_shape([rewards, mask])
  order = packing(mask)
  rewards, mask = pack(rewards, order), pack(mask, order)
  rewards = jnp.where(mask, rewards.astype(jnp.float32), 0.0)
  discount = gamma * _continues_tp1(mask, bootstrap_value).astype(jnp.float32)
  init = None if bootstrap_value is None else bootstrap_value.astype(
      jnp.float32)
  return unpack(jnp.where(
      mask, reverse_discounted_cumsum(rewards, discount, init), 0.0), order)


def n_step_returns(rewards: jax.Array, values: jax.Array, mask: jax.Array, *,
                   n: int, gamma: float,
                   bootstrap_value: jax.Array | None = None) -> jax.Array:
  """n-step bootstrapped returns (Mnih et al. 2016, A3C; Sutton & Barto 7.1).

  G_t = r_t + gamma r_{t+1} + ... + gamma^{n-1} r_{t+n-1} + gamma^n v_{t+n},
  truncated at the episode's end (no bootstrap past a terminal step), and
  with v_T = bootstrap_value past the horizon.

  Computed by the recursion G^(k)_t = r_t + gamma c_{t+1} G^(k-1)_{t+1},
  G^(0)_t = v_t, applied n times to the whole [B, T] array (n is a small
  static integer; there is no loop over time).

  Args:
    rewards: f32[B, T] r_t.
    values: f32[B, T] v_t = V(s_t) (garbage at masked steps is ignored).
    mask: bool[B, T] valid steps .
    n: number of rewards before bootstrapping (n >= T: Monte-Carlo returns).
    gamma: discount.
    bootstrap_value: f32[B] V(s_T) for rows still running at T - 1, or None.
  Returns:
    f32[B, T] G_t, 0 at masked steps.
  """
  chex.assert_rank([rewards, values, mask], 2)
  chex.assert_equal_shape([rewards, values, mask])
  if n < 1:
    raise ValueError(f'n_step_returns: n={n} must be >= 1.')
  order = packing(mask)
  rewards, values, mask = (pack(x, order) for x in (rewards, values, mask))
  rewards = jnp.where(mask, rewards.astype(jnp.float32), 0.0)
  values = jnp.where(mask, values.astype(jnp.float32), 0.0)
  discount_t = gamma * _continues_tp1(mask, bootstrap_value).astype(
      jnp.float32)
  v_tp1 = _values_tp1(values, bootstrap_value)
  # G^(k) over t = 1..T, with G^(k)_T = V(s_T) for every k: it already stands
  # for all the rewards past the horizon.
  g_tp1 = v_tp1
  for _ in range(min(n, rewards.shape[1])):
    g_t = rewards + discount_t * g_tp1
    g_tp1 = jnp.concatenate([g_t[:, 1:], v_tp1[:, -1:]], axis=1)
  return unpack(jnp.where(mask, g_t, 0.0), order)


def generalized_advantage_estimation(
    rewards: jax.Array, values: jax.Array, mask: jax.Array, *, gamma: float,
    lambda_: float, bootstrap_value: jax.Array | None = None) -> jax.Array:
  """GAE(gamma, lambda) (Schulman et al. 2016), token-level for text.

  delta_t = r_t + gamma c_{t+1} v_{t+1} - v_t,
  A_t = delta_t + gamma lambda c_{t+1} A_{t+1},
  where c_{t+1} says whether step t + 1 exists. The value targets are
  A_t + v_t (the lambda-returns).

  Args:
    rewards: f32[B, T] r_t.
    values: f32[B, T] v_t = V(s_t) (garbage at masked steps is ignored).
    mask: bool[B, T] valid steps .
    gamma: discount.
    lambda_: GAE's lambda (0: one-step TD error, 1: Monte-Carlo return - v_t).
    bootstrap_value: f32[B] V(s_T) for rows still running at T - 1, or None.
  Returns:
    f32[B, T] advantages A_t, 0 at masked steps.
  """
  chex.assert_rank([rewards, values, mask], 2)
  chex.assert_equal_shape([rewards, values, mask])
  order = packing(mask)
  rewards, values, mask = (pack(x, order) for x in (rewards, values, mask))
  rewards = jnp.where(mask, rewards.astype(jnp.float32), 0.0)
  # `where`, not a product: padded steps may hold NaN or inf values.
  v_t = jnp.where(mask, values.astype(jnp.float32), 0.0)
  continues = _continues_tp1(mask, bootstrap_value).astype(jnp.float32)
  v_tp1 = _values_tp1(v_t, bootstrap_value)
  delta_t = rewards + gamma * continues * v_tp1 - v_t
  advantages = reverse_discounted_cumsum(delta_t,
                                         gamma * lambda_ * continues)
  return unpack(jnp.where(mask, advantages, 0.0), order)


def explained_variance(values: jax.Array, targets: jax.Array,
                       mask: jax.Array) -> jax.Array:
  """1 - Var[targets - values] / Var[targets] over the valid steps.

  How much of the targets' variance the value function accounts for: 1 for a
  perfect critic, 0 for one no better than a constant (a batch-mean
  baseline), negative for a harmful one. f32[] (0 when the targets are
  constant).
  """
  chex.assert_equal_shape([values, targets, mask])
  values = jnp.where(mask, values.astype(jnp.float32), 0.0)
  var_targets = masked.masked_var(targets, mask)
  var_error = masked.masked_var(targets - values, mask)
  return jnp.where(var_targets > 0,
                   1.0 - var_error / jnp.maximum(var_targets, 1e-12), 0.0)
