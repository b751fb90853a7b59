"""A decoder-only language model as a policy.

`LMPolicy` is everything the rest of the library calls on a Transformer:
prefill and cached decoding (what an environment steps), teacher-forced
decoder states of stored sequences, and the heads read off them (the LM's
logits, a critic's value). Environments and algorithms hold a policy, never
the module, so a policy with another parameterisation (adapters, a quantized
base) serves them unchanged.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import lora as lora_lib

Params = Any
KVCache = tfm.KVCache


@dataclasses.dataclass(frozen=True)
class LMPolicy(lora_lib.AdaptablePolicy):
  """A Transformer LM and its heads (hashable: a static jit argument).

  Attributes:
    model: the Flax module.
    adapters: low-rank adapters on a frozen base (`lora.Adapters`), or None
      for a policy whose parameters are all trained. With adapters, the
      methods' `params` are the trainable tree (adapter factors and heads)
      and the base is bound with `bind`.
  """

  model: tfm.Transformer
  adapters: lora_lib.Adapters | None = None
  trainable_heads = ('value_proj',)  # A critic's value head trains.

  @property
  def config(self) -> tfm.TransformerConfig:
    return self.model.config

  @property
  def has_value_head(self) -> bool:
    return self.model.config.value_head

  def init_params(self, key: jax.Array) -> Params:
    return tfm.init_params(self.model.config, key)

  def _example(self) -> tuple[jax.Array, ...]:
    one = jnp.ones((1, 1), jnp.int32)
    return one, jnp.zeros((1, 1), jnp.int32), one.astype(jnp.bool_)

  def init_cache(self, batch_size: int, slots: int) -> KVCache:
    """An empty KV cache of `slots` positions for `batch_size` sequences."""
    return tfm.init_cache(self.model.config, batch_size, slots)

  @staticmethod
  def repeat_cache(cache: KVCache, repeats: int) -> KVCache:
    """Each sequence's cache `repeats` times in consecutive rows."""
    return tfm.repeat_cache(cache, repeats)

  @staticmethod
  def grow_cache(cache: KVCache, slots: int) -> KVCache:
    """The cache with room for `slots` positions (the filled ones kept)."""
    return tfm.grow_cache(cache, slots)

  def prefill(self, params: Params, tokens: jax.Array, mask: jax.Array,
              cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Runs left-padded prompts through the model, filling `cache`.

    Args:
      params: the model's parameters.
      tokens: i32[N, P]; mask: bool[N, P] true for real tokens.
      cache: an empty cache (`init_cache`) of at least P slots.
    Returns:
      (hidden [N, E] the decoder state at the last position, cache).
    """
    hidden, cache = self._apply(params, tokens, tfm.positions_from_mask(mask),
                                mask, cache)
    return hidden[:, -1], cache

  def decode(self, params: Params, token: jax.Array, position: jax.Array,
             cache: KVCache, mask: jax.Array | None = None
             ) -> tuple[jax.Array, KVCache]:
    """One cached decode step: token i32[N] at rotary position i32[N].

    `mask` bool[N] (default all true) says which rows' tokens are real; a
    false row's slot is written but never attended to, as a padded prompt
    slot is (a multi-turn row waiting for the others).

    Returns (hidden [N, E] the decoder state after the token, cache).
    """
    if mask is None:
      mask = jnp.ones(token.shape, jnp.bool_)
    hidden, cache = self._apply(params, token[:, None], position[:, None],
                                mask[:, None], cache)
    return hidden[:, 0], cache

  def extend(self, params: Params, tokens: jax.Array, positions: jax.Array,
             mask: jax.Array, cache: KVCache) -> tuple[jax.Array, KVCache]:
    """Appends L tokens per row to a filled cache in one pass (an
    environment's observation): tokens, positions i32[N, L], mask bool[N, L]
    (false slots are never attended to).

    Returns (hidden [N, L, E] the decoder state after each token, cache).
    """
    return self._apply(params, tokens, positions, mask, cache)

  def hidden_states(self, params: Params, tokens: jax.Array,
                    mask: jax.Array) -> jax.Array:
    """[N, L, E] teacher-forced decoder states of whole sequences (no cache);
    position i is the state after tokens[:, :i + 1]."""
    hidden, _ = self._apply(params, tokens, tfm.positions_from_mask(mask),
                            mask)
    return hidden

  def packed_hidden_states(self, params: Params, tokens: jax.Array,
                           positions: jax.Array,
                           segment_ids: jax.Array) -> jax.Array:
    """[R, S, E] teacher-forced decoder states of packed rows
    (`core.packing`): tokens, rotary positions and segment ids i32[R, S]
    (0: an empty slot); a token attends to the earlier tokens of its own
    segment only."""
    hidden, _ = self._apply(params, tokens, positions, segment_ids > 0,
                            segment_ids=segment_ids)
    return hidden

  def logits(self, params: Params, hidden: jax.Array) -> jax.Array:
    """[..., V] the LM head's logits (the model's dtype) at hidden [..., E]."""
    return self._apply(params, hidden, method=tfm.Transformer.logits)

  def value(self, params: Params, hidden: jax.Array) -> jax.Array:
    """f32[...] the value head at decoder states hidden [..., E]."""
    return self._apply(params, hidden, method=tfm.Transformer.value)

  def dims(self, params: Params) -> tuple[int, int, Any]:
    """(vocabulary V, width E, parameter dtype) of `params`, read off the
    parameters (loaded ones may differ in dtype from the config): what a
    new head on the decoder states needs."""
    params = self._full(params)
    vocab, width = params['embed']['embedding'].shape
    return vocab, width, params['final_norm']['scale'].dtype

  def lm_head(self, params: Params) -> jax.Array:
    """[E, V] the LM head's kernel (the embedding, transposed, when tied)."""
    params = self._full(params)
    if 'unembed' in params:
      return params['unembed']['kernel']
    return params['embed']['embedding'].T

  @staticmethod
  def trunk(params: Params) -> Params:
    """`params` without the output heads (LM and value): the decoder whose
    states `hidden_states` gives, for a critic with a head of its own."""
    return {k: v for k, v in params.items()
            if k not in ('unembed', 'value_proj')}

  def with_value_head(self) -> 'LMPolicy':
    """This policy with a value head on its model: a critic's."""
    config = dataclasses.replace(self.model.config, value_head=True)
    return dataclasses.replace(self, model=tfm.Transformer(config))

  def init_critic(self, params: Params, key: jax.Array) -> Params:
    """A critic's parameters (`with_value_head`): a copy of the policy's
    `params` with a fresh value head.

    The head's shape and initialiser are the Transformer's own, taken from a
    head-only model of the policy's width (width and dtype read off the
    parameters' final norm, so loaded parameters of another dtype match).
    """
    _, width, dtype = self.dims(params)
    head_only = tfm.TransformerConfig(
        vocab_size=1, hidden_dim=width, mlp_dim=1, num_layers=0,
        num_heads=1, num_kv_heads=1, head_dim=2, value_head=True,
        param_dtype=jnp.dtype(dtype).name)
    head = tfm.init_params(head_only, key)['value_proj']
    return {**jax.tree.map(jnp.copy, params), 'value_proj': head}
