"""SeqGAN's per-token reward: Monte-Carlo completions of every prefix.

A sequence score (a discriminator's probability of "real", BLEU, ...) rates
only finished sequences. SeqGAN (Yu et al. 2017, eq. 4) gives token t the
expected score of finishing the sequence from its prefix, estimated by N
completions sampled from a roll-out policy (a delayed copy of the generator):

  Q(x_{1:t-1}, x_t) = 1/N sum_n D(x_{1:t} ++ completion_n)   for t < T,
  Q(x_{1:T-1}, x_T) = D(x_{1:T})                              (finished).

All (T-1) x N completions of a batch are drawn by one `vmap`ped `lax.scan`
inside jit, and all scores come from one call of the score function.

Pairing trick: a completion of prefix length t needs T - t sampling steps, so
a scan that gives every prefix its own lane of T steps wastes half of them.
Instead lane (a, b = T - a) samples T steps: the first b complete prefix a
(starting from the state after a tokens), then the state is swapped for the
one after b tokens and the last a steps complete prefix b. Sampled token k
lands at position a + k in the first completion and at position k in the
second, so both are gathers of one [T] output. floor(T / 2) lanes replace
T - 1 (for T = 20: 10 lanes of 20 steps instead of 19 lanes of ~20).
"""

from typing import Callable

import chex
import jax
import jax.numpy as jnp

ScoreFn = Callable[[jax.Array], jax.Array]  # i32[M, T] -> f32[M]


def prefix_completions(env, params, actions: jax.Array, num_rollouts: int,
                       key: jax.Array, *,
                       rollouts_per_scan: int | None = None) -> jax.Array:
  """N completions of every proper prefix of every sequence.

  Args:
    env: an environment with `prefix_states(params, tokens)` (state pytree,
      leaves [B, T, ...], index t = the state after t tokens) and
      `step(params, state, key) -> (state, transition with .token)`, e.g.
      `envs.recurrent.RecurrentEnv`.
    params: the roll-out policy's parameters.
    actions: i32[B, T] the sequences.
    num_rollouts: N, completions per prefix.
    key: PRNG key.
    rollouts_per_scan: completions of each prefix drawn by one scan (its
      steps sample floor(T/2) * rollouts_per_scan * B rows); the N / this
      scans run one after another in a `lax.map`. Default N: all in one scan.
      On CPU a smaller batch per step keeps its [rows, V] logits in cache and
      is several times faster overall.
  Returns:
    i32[T-1, N, B, T]: entry [t-1, n, b] is actions[b, :t] followed by a
    sampled completion of T - t tokens.
  """
  chex.assert_rank(actions, 2)
  per_scan = rollouts_per_scan or num_rollouts
  if num_rollouts % per_scan:
    raise ValueError(f'num_rollouts={num_rollouts} is not a multiple of '
                     f'rollouts_per_scan={rollouts_per_scan}.')
  if per_scan == num_rollouts:
    return _completions(env, params, actions, num_rollouts, key)
  groups = jax.lax.map(
      lambda k: _completions(env, params, actions, per_scan, k),
      jax.random.split(key, num_rollouts // per_scan))  # [G, T-1, n, B, T]
  groups = jnp.moveaxis(groups, 0, 1)
  return groups.reshape(groups.shape[0], num_rollouts, *actions.shape)


def _completions(env, params, actions, n, key):
  """`prefix_completions` by one vmapped scan."""
  b, t = actions.shape
  if t < 2:
    return jnp.zeros((0, n, b, t), actions.dtype)
  states = env.prefix_states(params, actions)
  at = lambda i: jax.tree.map(  # The states after i tokens, repeated N times.
      lambda x: jnp.tile(x[:, i], (n,) + (1,) * (x.ndim - 2)), states)
  num_lanes = t // 2
  first = jnp.arange(1, num_lanes + 1)  # a = 1 .. floor(T/2)
  second = t - first  # b = T - a (equal to a in the middle lane when T is even)

  def lane(a, b_, key):
    start, swap = at(a), at(b_)

    def body(state, inputs):
      k, step_key = inputs
      state = jax.tree.map(lambda s, w: jnp.where(k == b_, w, s), state, swap)
      state, transition = env.step(params, state, step_key)
      return state, transition.token

    _, tokens = jax.lax.scan(body, start,
                             (jnp.arange(t), jax.random.split(key, t)))
    return tokens  # [T, N*B]: token k of every roll-out of this lane.

  sampled = jax.vmap(lane)(first, second, jax.random.split(key, num_lanes))
  sampled = jnp.moveaxis(sampled.reshape(num_lanes, t, n, b), 1, -1)
  position = jnp.arange(t)
  given = actions[None, None]  # [1, 1, B, T]
  # Prefix a: positions >= a hold sampled tokens 0, 1, ... (shifted by a).
  shift = jnp.clip(position[None] - first[:, None], 0, t - 1)  # [L, T]
  shifted = jnp.take_along_axis(sampled, shift[:, None, None, :], axis=-1)
  keep = position[None] < first[:, None]  # [L, T]
  complete_first = jnp.where(keep[:, None, None], given, shifted)
  # Prefix b: sampled token k already sits at position k.
  keep = position[None] < second[:, None]
  complete_second = jnp.where(keep[:, None, None], given, sampled)
  # Prefix lengths 1..floor(T/2) are the first completions, in order; the
  # longer ones T - a (a = ceil(T/2) - 1 .. 1) the second, in reverse lane order.
  num_second = (t + 1) // 2 - 1
  return jnp.concatenate(
      [complete_first, complete_second[:num_second][::-1]], axis=0)


def rewards_from_scores(prefix_scores: jax.Array, final_scores: jax.Array,
                        mask: jax.Array) -> jax.Array:
  """Per-token rewards from the scores of completions and of the sequences.

  Args:
    prefix_scores: f32[T-1, N, B] scores of the completions of each prefix.
    final_scores: f32[B] scores of the sequences themselves.
    mask: bool[B, T] valid positions (a prefix of each row).
  Returns:
    f32[B, T]: position t-1 gets the mean score of the completions of the
    t-token prefix; the last valid position gets the sequence's own score
    (it is finished, nothing is left to sample); invalid positions get 0.
  """
  chex.assert_rank([prefix_scores, final_scores, mask], [3, 1, 2])
  t = mask.shape[1]
  chex.assert_shape(prefix_scores, (t - 1, None, mask.shape[0]))
  rewards = jnp.concatenate(
      [jnp.mean(prefix_scores, axis=1).T, final_scores[:, None]], axis=1)
  last = jnp.sum(mask, axis=1) - 1
  is_last = jnp.arange(t)[None] == last[:, None]
  rewards = jnp.where(is_last, final_scores[:, None], rewards)
  return jnp.where(mask, rewards, 0.0).astype(jnp.float32)


def monte_carlo_rewards(env, params, actions: jax.Array, mask: jax.Array,
                        score_fn: ScoreFn, num_rollouts: int,
                        key: jax.Array, *,
                        rollouts_per_scan: int | None = None) -> jax.Array:
  """SeqGAN's per-token rewards f32[B, T] (see the module docstring).

  Args:
    env: see `prefix_completions`.
    params: the roll-out policy's parameters.
    actions: i32[B, T] the generated sequences.
    mask: bool[B, T] valid positions.
    score_fn: i32[M, T] -> f32[M], called once on all (T-1) N B completions
      and the B sequences.
    num_rollouts: N.
    key: PRNG key.
    rollouts_per_scan: see `prefix_completions`.
  """
  chex.assert_rank([actions, mask], 2)
  chex.assert_equal_shape([actions, mask])
  b, t = actions.shape
  completions = prefix_completions(env, params, actions, num_rollouts, key,
                                   rollouts_per_scan=rollouts_per_scan)
  scores = score_fn(jnp.concatenate(
      [completions.reshape(-1, t), actions], axis=0))
  chex.assert_shape(scores, ((t - 1) * num_rollouts * b + b,))
  prefix_scores = scores[:-b].reshape(t - 1, num_rollouts, b)
  return rewards_from_scores(prefix_scores, scores[-b:], mask)
