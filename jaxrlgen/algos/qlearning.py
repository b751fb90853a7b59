"""Value-based target math shared by the Q-learning family (rlax style).

Everything is a pure function of arrays over [B, T] sequences with masks:
row b, step t is the state s_t before action a_t (t = 0: the prompt), and
`mask` is true for the steps that happened (a prefix of each row: a sequence
ends at EOS or at the budget T). The step after the last valid one is
terminal, whether the sequence emitted EOS or hit the budget: nothing follows
it, so its value is 0 and no bootstrap crosses it. A sequence-level reward
(exact match, a reward model) arrives at the last valid step
(`core.returns.terminal_rewards`); TD targets are
`core.returns.n_step_returns` (no bootstrap past the last valid step) and
Monte-Carlo returns `core.returns.discounted_returns`; target networks follow
the online ones by `optax.incremental_update` (Polyak averaging).

  hard value:  V(s) = max_a Q(s, a)                      (Q-learning, DQN)
  soft value:  V(s) = tau * logsumexp_a Q(s, a) / tau    (soft Q-learning,
               Haarnoja et al. 2017, eq. 4; Guo et al. 2021, eq. 5)
"""

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.core import masked


def reference_values(env, state, rollout, *, enabled: bool,
                     tau: float = 1.0) -> jax.Array:
  """f32[B, T] soft values of the frozen reference's logits read as Q
  (zeros when not `enabled`): subtracted from Q, they measure Q from the
  warm start's log-partition (`normalize_q`) without changing the policy."""
  if not enabled:
    return jnp.zeros(rollout.mask.shape, jnp.float32)
  return jax.lax.stop_gradient(
      soft_value(env.action_logits(state.ref_params, rollout), tau))


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


def td_fit_metrics(q_taken: jax.Array, targets: jax.Array,
                   mask: jax.Array) -> dict[str, jax.Array]:
  """How much better than a constant the critic predicts its targets.

  A critic that has learnt nothing state-specific does no better than the
  targets' mean, whose squared error is their variance; these compare the
  critic's squared TD error with it, over all valid steps and over the last
  valid step of each sequence alone (where the target is the sequence's
  reward, with nothing bootstrapped: whether the critic can tell a right
  answer from a wrong one).

  Args:
    q_taken: f32[B, T] Q(s_t, a_t) of the taken actions (one critic).
    targets: f32[B, T] y_t.
    mask: bool[B, T] valid steps.
  Returns:
    `td/mse`, `td/target_var` (the constant predictor's mse) and
    `td/explained` = 1 - mse / var (0: no better than a constant, 1: exact;
    0 when the targets are constant), and the same three at the last valid
    step as `td/last_mse`, `td/last_target_var`, `td/last_explained`.
  """
  chex.assert_equal_shape([q_taken, targets, mask])
  q_taken = jax.lax.stop_gradient(q_taken.astype(jnp.float32))
  targets = jax.lax.stop_gradient(targets.astype(jnp.float32))
  steps = jnp.arange(mask.shape[1])
  last_step = jnp.max(jnp.where(mask, steps, -1), axis=1, keepdims=True)
  last = mask & (steps[None] == last_step)
  metrics = {}
  for prefix, where in (('td/', mask), ('td/last_', last)):
    mse = masked.masked_mean(jnp.square(targets - q_taken), where)
    var = masked.masked_var(targets, where)
    metrics[prefix + 'mse'] = mse
    metrics[prefix + 'target_var'] = var
    metrics[prefix + 'explained'] = jnp.where(
        var > 0, 1.0 - mse / jnp.maximum(var, 1e-12), 0.0)
  return metrics


def twin_td_loss(q_taken: jax.Array, targets: jax.Array, mask: jax.Array):
  """sum_i token mean of (Q_i(s_t, a_t) - y_t)^2: twin Q heads regressed to
  one target (ILQL eq. 2; SAC halves it, Christodoulou 2019 eq. 2).

  Args:
    q_taken: f32[K, B, T] each head's Q of the taken actions.
    targets: f32[B, T] y_t = r_t + gamma V(s_{t+1}) (no gradient flows in).
    mask: bool[B, T] valid steps.
  Returns:
    (loss, metrics `td_loss`, `q/mean`, `q/target_mean`, `td_error/abs_mean`
    and the first head's `td_fit_metrics`).
  """
  chex.assert_rank([q_taken, targets, mask], [3, 2, 2])
  chex.assert_equal_shape([q_taken[0], targets, mask])
  td_error = q_taken - jax.lax.stop_gradient(targets)[None]
  loss = jnp.sum(jax.vmap(
      lambda e: masked.masked_mean(jnp.square(e), mask))(td_error))
  return loss, {
      'td_loss': loss,
      'q/mean': masked.masked_mean(jnp.mean(q_taken, axis=0), mask),
      'q/target_mean': masked.masked_mean(targets, mask),
      'td_error/abs_mean': masked.masked_mean(
          jnp.mean(jnp.abs(td_error), axis=0), mask),
      **td_fit_metrics(q_taken[0], targets, mask)}
