"""A decoder-only transformer of the Llama family, with a preallocated KV cache.

RMSNorm, rotary position embeddings (Su et al. 2021), a SwiGLU MLP (Shazeer
2020), grouped-query attention (Ainslie et al. 2023), optional tied embeddings
and an optional scalar value head on the final hidden state.

The cache is an explicit pytree (`KVCache`) passed in and returned, so
decoding is a pure function that `lax.scan` can carry. Every sequence in a
batch writes the same cache slot at each call (`KVCache.index`); per-sequence
validity of slots (left padding of prompts of different lengths) lives in
`KVCache.mask`, and rotary positions are given per token, so a left-padded
prompt gets the same positions as the unpadded one.

Parameters carry logical axis names (`embed`, `vocab`, `heads`, `kv_heads`,
`head_dim`, `mlp`) for sharding; `init_params` strips the boxes. The main
activations are constrained by logical names too (`batch`, `length`,
`act_embed`, `act_heads`, `act_kv_heads`, `act_mlp`, `act_vocab`), which take
effect under `jaxrlgen.parallel.activate(mesh)`; jaxrlgen/parallel/sharding.py
maps both kinds of name to mesh axes.
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

Dtype = Any


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  vocab_size: int = 259
  hidden_dim: int = 128
  mlp_dim: int = 512
  num_layers: int = 2
  num_heads: int = 4
  num_kv_heads: int = 4
  head_dim: int | None = None  # None: hidden_dim // num_heads.
  max_seq_len: int = 256  # Longest prompt + completion the KV cache can hold.
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-6
  tie_embeddings: bool = False
  value_head: bool = False
  dtype: str = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.
  param_dtype: str = 'float32'
  remat: bool = False  # Rematerialise each block in the backward pass.

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'model.num_heads={self.num_heads} must be a multiple of '
          f'model.num_kv_heads={self.num_kv_heads} (grouped-query attention).')
    if self.resolved_head_dim % 2:
      raise ValueError(f'head_dim={self.resolved_head_dim} must be even for '
                       'rotary embeddings; change model.hidden_dim or '
                       'model.head_dim.')

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_dim // self.num_heads


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `S` slots.

  Attributes:
    keys: per layer, [B, S, num_kv_heads, head_dim].
    values: per layer, [B, S, num_kv_heads, head_dim].
    mask: bool[B, S] slots holding a real token.
    index: i32[] next slot to write (shared by the batch).
  """

  keys: tuple[jax.Array, ...]
  values: tuple[jax.Array, ...]
  mask: jax.Array
  index: jax.Array

  @property
  def size(self) -> int:
    return self.mask.shape[1]


def init_cache(config: TransformerConfig, batch_size: int,
               size: int) -> KVCache:
  """An empty cache of `size` slots."""
  if size > config.max_seq_len:
    raise ValueError(
        f'A KV cache of {size} slots exceeds model.max_seq_len='
        f'{config.max_seq_len}; shorten the prompt or max_new_tokens, or raise '
        'model.max_seq_len.')
  shape = (batch_size, size, config.num_kv_heads, config.resolved_head_dim)
  dtype = jnp.dtype(config.dtype)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=zeros,
                 mask=jnp.zeros((batch_size, size), jnp.bool_),
                 index=jnp.zeros((), jnp.int32))


def repeat_cache(cache: KVCache, repeats: int) -> KVCache:
  """Each row of the cache `repeats` times in a row: [B, ...] -> [B*repeats, ...].

  This is how G samples of one prompt share a single prefill.
  """
  rep = lambda x: jnp.repeat(x, repeats, axis=0)
  return cache.replace(keys=tuple(map(rep, cache.keys)),
                       values=tuple(map(rep, cache.values)),
                       mask=rep(cache.mask))


def rotary(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding of x: [B, L, H, D] at positions: [B, L]."""
  half = x.shape[-1] // 2
  freqs = theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs  # [B, L, D/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


# Logical names of the main activations (see jaxrlgen/parallel/sharding.py);
# the constraints are no-ops unless sharding rules are active.
_EMBED = ('batch', 'length', 'act_embed')
_HEADS = ('batch', 'length', 'act_heads', None)
_KV_HEADS = ('batch', 'length', 'act_kv_heads', None)


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, names)


def _dense_init(names, fan_in_axes=(0,)):
  # Variance 1 / fan-in (LeCun): at the small widths RL research starts from,
  # GPT's fixed std of 0.02 starves the residual stream and slows learning.
  init = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=fan_in_axes, out_axis=-1)
  return nn.with_logical_partitioning(init, names)


def _projection_init(names, num_in: int, fan_in_axes=(0,)):
  """`_dense_init` of a kernel with several input or output axes.

  The kernel is drawn as the [prod(inputs), prod(outputs)] matrix and
  reshaped, so it equals what `nn.DenseGeneral` draws. (It is not a
  DenseGeneral because that module boxes the 2-D draw under the 3-D kernel's
  logical names, which fails under sharding rules.) With fan_in_axes=(0, 1),
  the matrix's fan-in counts both of its dimensions: the attention output
  projection starts sqrt(hidden_dim) times smaller than LeCun's, the
  initialisation every reported result was measured with.
  """
  base = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=fan_in_axes, out_axis=-1)

  def init(key, shape, dtype=jnp.float32):
    flat = (math.prod(shape[:num_in]), math.prod(shape[num_in:]))
    return base(key, flat, dtype).reshape(shape)

  return nn.with_logical_partitioning(init, names)


class Attention(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, layer_cache):
    """x: [B, L, E]; positions: i32[B, L]; key_mask: see `Transformer`."""
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    head_dim, num_kv = cfg.resolved_head_dim, cfg.num_kv_heads
    group = cfg.num_heads // num_kv
    proj = lambda heads, names, name: nn.Einsum(
        (x.shape[-1], heads, head_dim), 'ble,ehd->blhd', use_bias=False,
        dtype=dtype, param_dtype=pdtype,
        kernel_init=_projection_init(names, num_in=1), name=name)
    q = proj(cfg.num_heads, ('embed', 'heads', 'head_dim'), 'q')(x)
    k = proj(num_kv, ('embed', 'kv_heads', 'head_dim'), 'k')(x)
    v = proj(num_kv, ('embed', 'kv_heads', 'head_dim'), 'v')(x)
    q = _constrain(rotary(q, positions, cfg.rope_theta), _HEADS)
    k = _constrain(rotary(k, positions, cfg.rope_theta), _KV_HEADS)
    v = _constrain(v, _KV_HEADS)

    if layer_cache is not None:
      cache_k, cache_v, index = layer_cache
      k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype),
                                              index, axis=1)
      v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype),
                                              index, axis=1)
      k, v = _constrain(k, _KV_HEADS), _constrain(v, _KV_HEADS)
    new_kv = (k, v)

    b, l = q.shape[:2]
    q = q.reshape(b, l, num_kv, group, head_dim)
    scores = jnp.einsum('blkgd,bskd->bkgls', q, k,
                        preferred_element_type=jnp.float32)
    scores = scores / jnp.sqrt(jnp.float32(head_dim))
    scores = jnp.where(key_mask[:, None, None], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum('bkgls,bskd->blkgd', probs, v)
    out = out.reshape(b, l, cfg.num_heads, head_dim)
    out = nn.Einsum((cfg.num_heads, head_dim, x.shape[-1]), 'blhd,hde->ble',
                    use_bias=False, dtype=dtype, param_dtype=pdtype,
                    kernel_init=_projection_init(
                        ('heads', 'head_dim', 'embed'), num_in=2,
                        fan_in_axes=(0, 1)),
                    name='o')(out)
    return out, new_kv


class MLP(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda feats, names, name: nn.Dense(
        feats, use_bias=False, dtype=jnp.dtype(cfg.dtype),
        param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=_dense_init(names),
        name=name)
    gate = dense(cfg.mlp_dim, ('embed', 'mlp'), 'gate')(x)
    up = dense(cfg.mlp_dim, ('embed', 'mlp'), 'up')(x)
    hidden = _constrain(nn.silu(gate) * up, ('batch', 'length', 'act_mlp'))
    return dense(x.shape[-1], ('mlp', 'embed'), 'down')(hidden)


def _norm(cfg: TransformerConfig, name: str) -> nn.RMSNorm:
  return nn.RMSNorm(epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                    param_dtype=jnp.dtype(cfg.param_dtype),
                    scale_init=nn.with_logical_partitioning(
                        nn.initializers.ones, ('embed',)), name=name)


class Block(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, layer_cache):
    attn_out, new_kv = Attention(self.config, name='attn')(
        _norm(self.config, 'attn_norm')(x), positions, key_mask, layer_cache)
    x = _constrain(x + attn_out, _EMBED)
    x = x + MLP(self.config, name='mlp')(_norm(self.config, 'mlp_norm')(x))
    return _constrain(x, _EMBED), new_kv


class Transformer(nn.Module):
  """Decoder-only LM.

  `__call__(tokens, positions, token_mask, cache=None) -> (hidden, cache)`:
    tokens: i32[B, L]; positions: i32[B, L] rotary positions;
    token_mask: bool[B, L] real tokens (false for padding, which no query
      attends to).
    Without a cache, attention is causal over the L tokens. With a cache, the
    L tokens are written to slots [cache.index, cache.index + L) and attend to
    every earlier valid slot; the returned cache has index advanced by L.
    hidden: [B, L, E] final-normed hidden states (compute dtype).
  `logits(hidden) -> f32[..., V]` and `value(hidden) -> f32[...]` project them.
  """

  config: TransformerConfig

  def setup(self):
    cfg = self.config
    pdtype = jnp.dtype(cfg.param_dtype)
    self.embed = nn.Embed(
        cfg.vocab_size, cfg.hidden_dim, dtype=jnp.dtype(cfg.dtype),
        param_dtype=pdtype,
        embedding_init=nn.with_logical_partitioning(
            nn.initializers.normal(1.0), ('vocab', 'embed')))
    block = nn.remat(Block) if cfg.remat else Block
    self.blocks = [block(cfg, name=f'block_{i}')
                   for i in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, 'final_norm')
    if not cfg.tie_embeddings:
      self.unembed = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype),
          param_dtype=pdtype, kernel_init=_dense_init(('embed', 'vocab')))
    if cfg.value_head:
      self.value_proj = nn.Dense(
          1, dtype=jnp.float32, param_dtype=pdtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ('embed', None)),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, (None,)))

  def __call__(self, tokens, positions, token_mask, cache: KVCache | None = None):
    # The lookup reads a replicated table: XLA cannot partition a row gather
    # from a vocab- and fsdp-sharded table into batch-sharded rows, and would
    # replicate far more (with a warning) than this one all-gather does.
    table = _constrain(self.embed.embedding, (None, 'act_embed'))
    x = jnp.take(table, tokens, axis=0).astype(self.config.dtype)
    x = _constrain(x, _EMBED)
    if cache is None:
      length = tokens.shape[1]
      causal = jnp.tril(jnp.ones((length, length), jnp.bool_))
      key_mask = causal[None] & token_mask[:, None, :]  # [B, L, L]
    else:
      slots = jnp.arange(cache.size)
      cache_mask = jax.lax.dynamic_update_slice_in_dim(
          cache.mask, token_mask, cache.index, axis=1)
      query_slots = cache.index + jnp.arange(tokens.shape[1])
      key_mask = (slots[None, :] <= query_slots[:, None])[None] & \
          cache_mask[:, None, :]  # [B, L, S]
    new_keys, new_values = [], []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (
          cache.keys[i], cache.values[i], cache.index)
      x, (k, v) = block(x, positions, key_mask, layer_cache)
      new_keys.append(k)
      new_values.append(v)
    hidden = self.final_norm(x)
    if cache is not None:
      cache = KVCache(keys=tuple(new_keys), values=tuple(new_values),
                      mask=cache_mask, index=cache.index + tokens.shape[1])
    if self.is_initializing():
      # Create the output projections, which are only used through methods.
      self.logits(hidden)
      if self.config.value_head:
        self.value(hidden)
    return hidden, cache

  def logits(self, hidden):
    """f32 logits of hidden states [..., E] -> [..., V]."""
    if self.config.tie_embeddings:
      logits = self.embed.attend(hidden)
    else:
      logits = self.unembed(hidden)
    if logits.ndim == 3:
      logits = _constrain(logits, ('batch', 'length', 'act_vocab'))
    return logits.astype(jnp.float32)

  def value(self, hidden):
    """Scalar value of hidden states [..., E] -> f32[...]."""
    if not self.config.value_head:
      raise ValueError('This model has no value head; set '
                       'model.value_head=True.')
    return self.value_proj(hidden.astype(jnp.float32))[..., 0]


def positions_from_mask(mask: jax.Array) -> jax.Array:
  """Rotary positions of a left-padded batch: the count of real tokens before."""
  return jnp.maximum(jnp.cumsum(mask, axis=-1) - 1, 0).astype(jnp.int32)


def _boxed_init(config: TransformerConfig, key: jax.Array):
  one = jnp.ones((1, 1), jnp.int32)
  return Transformer(config).init(key, one, one - 1, one > 0)['params']


def init_params(config: TransformerConfig, key: jax.Array):
  """Parameters of a fresh model (a nested dict of arrays)."""
  return nn.meta.unbox(_boxed_init(config, key))


def logical_axes(config: TransformerConfig):
  """The logical axis names of every parameter: a pytree of PartitionSpecs."""
  boxed = jax.eval_shape(lambda key: _boxed_init(config, key),
                         jax.random.key(0))
  return nn.get_partition_spec(boxed)
