"""A reward model: the decoder LM with a scalar head at the last valid token.

The Transformer of `models/transformer.py` with `value_head=True` reads every
position; a reward model keeps the head's output at the last real token of
prompt + completion (Ziegler et al. 2019; Ouyang et al. 2022), so one scalar
scores the whole sequence. It is usually initialised from the supervised
policy's trunk (`init_from_lm`), with the head at zero so that every sequence
starts at reward 0.

An ensemble is the same parameters stacked along a new leading axis K
(`stack`); `score_ensemble` vmaps `score` over it.
"""

import dataclasses
from typing import Any

import chex
import jax
import jax.numpy as jnp

from jaxrlgen.models import transformer as tfm

Params = Any


def reward_model_config(config: tfm.TransformerConfig) -> tfm.TransformerConfig:
  """`config` with the scalar head on (a reward model's architecture)."""
  return dataclasses.replace(config, value_head=True)


def last_valid_index(mask: jax.Array) -> jax.Array:
  """i32[B] index of the last true entry of each row of bool[B, L] (or 0)."""
  chex.assert_rank(mask, 2)
  index = jnp.arange(mask.shape[1], dtype=jnp.int32)
  return jnp.max(jnp.where(mask, index[None], 0), axis=1)


def join(prompt: jax.Array, prompt_mask: jax.Array, completion: jax.Array,
         completion_mask: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Prompt and completion as one sequence: (i32[B, P+T], bool[B, P+T]).

  Prompts are left-padded and completions right-padded, so the real tokens are
  one contiguous run and the last one is the completion's last (its EOS when
  it has one).
  """
  chex.assert_rank([prompt, prompt_mask, completion, completion_mask], 2)
  chex.assert_equal_shape([prompt, prompt_mask])
  chex.assert_equal_shape([completion, completion_mask])
  return (jnp.concatenate([prompt, completion], axis=1),
          jnp.concatenate([prompt_mask, completion_mask], axis=1))


def score(model: tfm.Transformer, params: Params, tokens: jax.Array,
          mask: jax.Array) -> jax.Array:
  """f32[B] reward of each sequence.

  Args:
    model: a Transformer whose config has `value_head=True`.
    params: its parameters.
    tokens: i32[B, L] token ids.
    mask: bool[B, L] real tokens: a contiguous run per row (see `join`).
  Returns:
    The scalar head at each row's last real token.
  """
  chex.assert_rank([tokens, mask], 2)
  chex.assert_equal_shape([tokens, mask])
  if not model.config.value_head:
    raise ValueError('A reward model needs the scalar head: build its config '
                     'with reward_model_config(...) (value_head=True).')
  hidden, _ = model.apply({'params': params}, tokens,
                          tfm.positions_from_mask(mask), mask)
  last = last_valid_index(mask)
  hidden = jnp.take_along_axis(hidden, last[:, None, None], axis=1)[:, 0]
  return model.apply({'params': params}, hidden, method=tfm.Transformer.value)


def score_completions(model: tfm.Transformer, params: Params,
                      prompt: jax.Array, prompt_mask: jax.Array,
                      completion: jax.Array,
                      completion_mask: jax.Array) -> jax.Array:
  """f32[B] reward of each prompt + completion (shapes as in `join`)."""
  return score(model, params, *join(prompt, prompt_mask, completion,
                                    completion_mask))


def score_ensemble(model: tfm.Transformer, params: Params, tokens: jax.Array,
                   mask: jax.Array) -> jax.Array:
  """f32[K, B] rewards of K members whose parameters are stacked on axis 0."""
  return jax.vmap(score, in_axes=(None, 0, None, None))(model, params, tokens,
                                                        mask)


def init(config: tfm.TransformerConfig, key: jax.Array) -> Params:
  """Fresh reward-model parameters (`config` gets the head if it lacks it)."""
  return tfm.init_params(reward_model_config(config), key)


def init_from_lm(lm_params: Params, config: tfm.TransformerConfig,
                 key: jax.Array) -> Params:
  """Reward-model parameters whose trunk is a trained LM's.

  The LM's parameters are copied (not aliased, so either may be donated); the
  head is the fresh, zero-initialised one, so the model starts by scoring
  every sequence 0 and learns differences from there.
  """
  fresh = init(config, key)
  missing = sorted(set(fresh) - set(lm_params) - {'value_proj'})
  if missing:
    raise ValueError(f'The LM parameters lack {missing}: they do not match '
                     'the reward model config.')
  params = {name: jax.tree.map(jnp.copy, lm_params[name])
            for name in fresh if name != 'value_proj'}
  params['value_proj'] = fresh['value_proj']
  return params


def stack(members) -> Params:
  """K parameter pytrees as one whose leaves have a leading axis K."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *members)
