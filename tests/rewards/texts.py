"""Completions given as text, as the Rollout a reward reads (shared by the
reward tests)."""

import jax.numpy as jnp

from jaxrlgen.core.types import Rollout


def rollout(tokenizer, texts) -> Rollout:
  """`texts` encoded with EOS and right-padded as the completions of
  one-token prompts."""
  ids = [tokenizer.encode(t, add_eos=True) for t in texts]
  actions, mask = tokenizer.pad_batch(ids, max(map(len, ids)), 'right')
  return Rollout(context={'tokens': jnp.zeros((len(texts), 1), jnp.int32),
                          'mask': jnp.ones((len(texts), 1), bool)},
                 actions=jnp.asarray(actions),
                 logp=jnp.zeros(actions.shape), mask=jnp.asarray(mask))
