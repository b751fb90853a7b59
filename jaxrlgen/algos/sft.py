"""Supervised fine-tuning (maximum likelihood) over the same Rollout type.

A supervised example is a rollout whose actions are the target tokens, so SFT
reuses the environment's teacher-forced `evaluate` and the generic minibatch
update.
"""

import jax

from jaxrlgen.core import masked


def sft_loss(logp: jax.Array, mask: jax.Array) -> jax.Array:
  """Mean negative log-likelihood per target token. logp, mask: [B, T]."""
  return -masked.masked_mean(logp, mask)


def loss(env, params, rollout):
  """(loss, metrics) of a supervised batch given as a Rollout."""
  out = env.evaluate(params, rollout)
  nll = sft_loss(out.logp, rollout.mask)
  return nll, {'nll': nll, 'entropy': masked.masked_mean(out.entropy,
                                                         rollout.mask)}
