"""Value-based target math shared by the Q-learning family (rlax style).

Everything is a pure function of arrays over [B, T] sequences with masks:
row b, step t is the state s_t before action a_t (t = 0: the prompt), and
`mask` is true for the steps that happened (a prefix of each row: a sequence
ends at EOS or at the budget T). The step after the last valid one is
terminal, whether the sequence emitted EOS or hit the budget: nothing follows
it, so its value is 0 and no bootstrap crosses it. A sequence-level reward
(exact match, a reward model) arrives at the last valid step
(`sequence_rewards`).

  hard value:  V(s) = max_a Q(s, a)                      (Q-learning, DQN)
  soft value:  V(s) = tau * logsumexp_a Q(s, a) / tau    (soft Q-learning,
               Haarnoja et al. 2017, eq. 4; Guo et al. 2021, eq. 5)
  n-step TD:   y_t = sum_{k<n} gamma^k r_{t+k} + gamma^n V(s_{t+n})
               (Sutton & Barto 2018, eq. 7.1), truncated at the terminal.
"""

from typing import Any

import chex
import jax
import jax.numpy as jnp

PyTree = Any


def action_values(q: jax.Array, actions: jax.Array) -> jax.Array:
  """f32[B, T]: Q(s_t, a_t) of the taken actions, from q f32[B, T, V]."""
  chex.assert_rank([q, actions], [3, 2])
  chex.assert_equal_shape_prefix([q, actions], 2)
  return jnp.take_along_axis(q, actions[..., None], axis=-1)[..., 0]


def hard_value(q: jax.Array) -> jax.Array:
  """[...]: max_a Q(s, a) over the last axis of q [..., V]."""
  return jnp.max(q, axis=-1)


def soft_value(q: jax.Array, tau: float = 1.0) -> jax.Array:
  """[...]: tau * logsumexp(Q(s, .) / tau), the soft (max-entropy) value.

  As tau -> 0 it tends to the hard value; the policy it implies is
  softmax(Q / tau) and Q - V is tau * log pi.
  """
  if tau <= 0:
    raise ValueError(f'soft_value: tau={tau} must be > 0.')
  return tau * jax.nn.logsumexp(q.astype(jnp.float32) / tau, axis=-1)


def last_step(mask: jax.Array) -> jax.Array:
  """bool[B, T]: the last valid step of each (prefix-masked) row."""
  chex.assert_rank(mask, 2)
  following = jnp.concatenate(
      [mask[:, 1:], jnp.zeros_like(mask[:, :1])], axis=1)
  return mask & ~following


def sequence_rewards(rewards: jax.Array, mask: jax.Array) -> jax.Array:
  """f32[B, T]: each sequence's reward f32[B] placed at its last valid step."""
  chex.assert_rank([rewards, mask], [1, 2])
  chex.assert_equal_shape_prefix([rewards, mask], 1)
  return jnp.where(last_step(mask), rewards[:, None].astype(jnp.float32), 0.0)


def _shift(x: jax.Array, k: int, fill) -> jax.Array:
  """x[:, t + k] at column t; `fill` beyond the end."""
  if k == 0:
    return x
  pad = jnp.full((x.shape[0], min(k, x.shape[1]), *x.shape[2:]), fill, x.dtype)
  return jnp.concatenate([x[:, k:], pad], axis=1)[:, :x.shape[1]]


def n_step_targets(rewards_t: jax.Array, values_t: jax.Array,
                   mask: jax.Array, discount: float, n: int = 1) -> jax.Array:
  """n-step TD targets y_t over [B, T] with terminal handling.

    y_t = sum_{k=0}^{n-1} gamma^k r_{t+k} [t+k valid]
          + gamma^n V(s_{t+n}) [t+n valid]

  A step past the end of the row or past its last valid step is terminal
  (contributes neither reward nor bootstrap). With n >= T this is the
  Monte-Carlo return.

  Args:
    rewards_t: f32[B, T] reward received after action t.
    values_t: f32[B, T] V(s_t), the value of the state before action t (hard
      or soft, usually from a target network).
    mask: bool[B, T] valid steps, a prefix of each row.
    discount: gamma.
    n: steps before bootstrapping (>= 1).
  Returns:
    f32[B, T] targets; 0 at invalid steps.
  """
  chex.assert_rank([rewards_t, values_t, mask], 2)
  chex.assert_equal_shape([rewards_t, values_t, mask])
  if n < 1:
    raise ValueError(f'n_step_targets: n={n} must be >= 1.')
  rewards_t = jnp.where(mask, rewards_t.astype(jnp.float32), 0.0)
  values_t = jnp.where(mask, values_t.astype(jnp.float32), 0.0)
  # n is a small static number of shifts, not a loop over time.
  target = jnp.zeros_like(rewards_t)
  for k in range(min(n, rewards_t.shape[1])):
    target = target + discount ** k * _shift(rewards_t, k, 0.0)
  target = target + discount ** n * _shift(values_t, n, 0.0)
  return jnp.where(mask, target, 0.0)


def one_step_targets(rewards_t: jax.Array, values_t: jax.Array,
                     mask: jax.Array, discount: float) -> jax.Array:
  """y_t = r_t + gamma * V(s_{t+1}) [t+1 valid]; see `n_step_targets`."""
  return n_step_targets(rewards_t, values_t, mask, discount, n=1)


def discounted_suffix_sum(x: jax.Array, mask: jax.Array,
                          discount: float) -> jax.Array:
  """f32[B, T]: sum_{s >= t} gamma^{s - t} x_s over the valid steps s.

  One [T, T] matrix of discount powers instead of a reverse scan: T is a
  completion length, and a matmul differentiates and batches trivially.
  """
  chex.assert_rank([x, mask], 2)
  chex.assert_equal_shape([x, mask])
  t = x.shape[1]
  idx = jnp.arange(t)
  gap = idx[None, :] - idx[:, None]  # [t, s] = s - t.
  weights = jnp.where(gap >= 0, jnp.float32(discount) ** jnp.maximum(gap, 0),
                      0.0)
  x = jnp.where(mask, x.astype(jnp.float32), 0.0)
  return jnp.where(mask, x @ weights.T, 0.0)


def polyak(target: PyTree, online: PyTree, tau: float) -> PyTree:
  """target <- (1 - tau) * target + tau * online, leaf by leaf.

  tau = 1 copies the online network (a hard update); tau = 0 freezes the
  target. Leaves keep the target's dtype.
  """
  if not 0 <= tau <= 1:
    raise ValueError(f'polyak: tau={tau} must be in [0, 1].')
  return jax.tree.map(
      lambda t, o: ((1.0 - tau) * t + tau * o.astype(t.dtype)).astype(t.dtype),
      target, online)
