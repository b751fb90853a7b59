"""V-trace off-policy value targets and policy-gradient advantages.

Espeholt et al. 2018, "IMPALA: Scalable Distributed Deep-RL with Importance
Weighted Actor-Learner Architectures", eq. (1) and Sec. 4.2. For a trajectory
sampled by a behaviour policy mu and a target policy pi, with truncated
importance weights

  rho_s = min(rho_bar, pi(a_s|x_s) / mu(a_s|x_s)),
  c_s = lambda * min(c_bar, pi(a_s|x_s) / mu(a_s|x_s)),

the n-step V-trace target of V(x_s) is

  v_s = V(x_s) + sum_{t>=s} gamma^{t-s} (c_s ... c_{t-1}) delta_t V,
  delta_t V = rho_t (r_t + gamma V(x_{t+1}) - V(x_t)),

computed backwards by v_s - V(x_s) = delta_s V + gamma c_s (v_{s+1} - V(x_{s+1}))
(the paper's Remark 1), and the policy-gradient advantage is

  A_s = rho_s (r_s + gamma v_{s+1} - V(x_s)).

rho_bar sets the fixed point the values converge to (the value function of a
policy between mu and pi, pi itself when rho_bar = inf); c_bar and lambda only
trade the variance of the targets against how fast they contract. With pi = mu
and rho_bar, c_bar >= 1 the targets are the TD(lambda) lambda-returns (with
lambda = 1, the n-step returns to the end of the trajectory).

Trajectories are [B, T] arrays with a mask of the steps that happened; a
row's last valid step is terminal (its next value is 0) unless it is the last
step of the array, which bootstraps from `bootstrap_value`. Masked steps
between valid ones (a multi-turn episode's observations) are skipped over.
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.core import returns


class VTraceOutput(NamedTuple):
  """V-trace outputs, all f32[B, T] and 0 at masked-out steps.

  Attributes:
    vs: the value targets v_s.
    pg_advantages: rho_s (r_s + gamma v_{s+1} - V(x_s)).
    clipped_rhos: the truncated importance weights rho_s.
  """

  vs: jax.Array
  pg_advantages: jax.Array
  clipped_rhos: jax.Array


def _next(x: jax.Array, last: jax.Array) -> jax.Array:
  """x shifted one step left along time, `last` [B] filling the final step."""
  return jnp.concatenate([x[:, 1:], last[:, None]], axis=1)


def vtrace(values: jax.Array, rewards: jax.Array, log_rhos: jax.Array,
           mask: jax.Array, *, bootstrap_value: jax.Array | None = None,
           discount: float = 1.0, lambda_: float = 1.0, rho_bar: float = 1.0,
           c_bar: float = 1.0,
           stop_target_gradients: bool = True) -> VTraceOutput:
  """V-trace targets and advantages of B trajectories (Espeholt et al. 2018).

  Args:
    values: f32[B, T] V(x_s), the value of the state each action was taken in
      (garbage at masked steps is ignored).
    rewards: f32[B, T] r_s, the reward after action s.
    log_rhos: f32[B, T] log pi(a_s|x_s) - log mu(a_s|x_s).
    mask: bool[B, T] steps that happened; a row's last valid step ends its
      episode (masked steps between valid ones are skipped over).
    bootstrap_value: f32[B] V(x_T) after the last step of the array, for
      trajectories cut off there (default 0: every trajectory terminates).
    discount: gamma.
    lambda_: the trace coefficient lambda in c_s.
    rho_bar: truncation of the importance weights in delta_t V and A_s.
    c_bar: truncation of the trace coefficients c_s (the paper assumes
      rho_bar >= c_bar).
    stop_target_gradients: stop gradients through the outputs, as the paper's
      learner treats v_s and A_s as fixed targets.
  Returns:
    VTraceOutput of f32[B, T] arrays.
  """
  chex.assert_rank([values, rewards, log_rhos, mask], 2)
  chex.assert_equal_shape([values, rewards, log_rhos, mask])
  # A row's valid steps are its trajectory even with masked steps between
  # them (a multi-turn episode's observations): run on them packed.
  order = returns.packing(mask)
  out = _vtrace(*(returns.pack(x, order)
                  for x in (values, rewards, log_rhos, mask)),
                bootstrap_value=bootstrap_value, discount=discount,
                lambda_=lambda_, rho_bar=rho_bar, c_bar=c_bar,
                stop_target_gradients=stop_target_gradients)
  return jax.tree.map(lambda x: returns.unpack(x, order), out)


def _vtrace(values, rewards, log_rhos, mask, *, bootstrap_value, discount,
            lambda_, rho_bar, c_bar, stop_target_gradients) -> VTraceOutput:
  """`vtrace` on a prefix mask."""
  batch_size = values.shape[0]
  if bootstrap_value is None:
    bootstrap_value = jnp.zeros((batch_size,), jnp.float32)
  chex.assert_shape(bootstrap_value, (batch_size,))

  # Masked steps may hold garbage (even inf): select, never multiply by 0.
  values = jnp.where(mask, values, 0.0).astype(jnp.float32)
  rewards = jnp.where(mask, rewards, 0.0).astype(jnp.float32)
  rhos = jnp.exp(jnp.where(mask, log_rhos, 0.0).astype(jnp.float32))
  clipped_rhos = jnp.where(mask, jnp.minimum(rho_bar, rhos), 0.0)
  cs = lambda_ * jnp.minimum(c_bar, rhos)
  next_valid = _next(mask, jnp.ones((batch_size,), jnp.bool_))
  next_values = jnp.where(
      next_valid, _next(values, bootstrap_value.astype(jnp.float32)), 0.0)
  deltas = clipped_rhos * (rewards + discount * next_values - values)

  def backward(acc_tp1, inputs):
    # acc_t = v_t - V(x_t); a masked step contributes nothing, so the
    # recursion restarts at every episode end.
    delta_t, c_t, valid_t = inputs
    acc_t = jnp.where(valid_t, delta_t + discount * c_t * acc_tp1, 0.0)
    return acc_t, acc_t

  _, acc = jax.lax.scan(
      backward, jnp.zeros((batch_size,), jnp.float32),
      (deltas.T, cs.T, mask.T), reverse=True)
  vs = jnp.where(mask, values + acc.T, 0.0)
  next_vs = jnp.where(next_valid, _next(vs, bootstrap_value), 0.0)
  pg_advantages = jnp.where(
      mask, clipped_rhos * (rewards + discount * next_vs - values), 0.0)
  if stop_target_gradients:
    vs = jax.lax.stop_gradient(vs)
    pg_advantages = jax.lax.stop_gradient(pg_advantages)
  return VTraceOutput(vs=vs, pg_advantages=pg_advantages,
                      clipped_rhos=clipped_rhos)
