"""A hand-made policy the environment tests share."""

import jax
import jax.numpy as jnp

from jaxrlgen.models import transformer as tfm


def fixed_policy_params(config: tfm.TransformerConfig, probs):
  """Parameters of a model whose next-token distribution is always `probs`.

  Attention and MLP outputs are zeroed and every embedding is all ones, so the
  final hidden state is the RMS-normed ones vector whatever the context; the
  first row of the unembedding then holds the logits. A value head, if the
  config has one, stays at its zero initialisation.
  """
  params = tfm.init_params(config, jax.random.key(0))
  zero = lambda path, x: jnp.zeros_like(x) if any(
      getattr(k, 'key', None) in ('o', 'down') for k in path) else x
  params = jax.tree_util.tree_map_with_path(zero, params)
  params['embed']['embedding'] = jnp.ones_like(params['embed']['embedding'])
  kernel = jnp.zeros_like(params['unembed']['kernel'])
  params['unembed']['kernel'] = kernel.at[0].set(jnp.log(jnp.asarray(probs)))
  return params
