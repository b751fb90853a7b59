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
import functools
import math
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen import schema

Dtype = Any

NORM_TYPES = ('rms', 'layer')
MLP_TYPES = ('swiglu', 'geglu', 'gelu')
POSITION_TYPES = ('rope', 'learned')
ROPE_SCALINGS = ('none', 'linear', 'llama3')
# Attention kernels of the passes without a cache (training and scoring):
# 'einsum' (ours: any mask, f32 scores, every backend), 'xla' and 'cudnn'
# (`jax.nn.dot_product_attention`'s implementations; cuDNN's fused flash
# attention needs an NVIDIA GPU and a 16-bit dtype), 'auto' (cudnn where it
# applies, else einsum).
ATTENTION_KERNELS = ('einsum', 'xla', 'cudnn', 'auto')


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  SPECIAL: ClassVar[schema.Special] = {
      'num_layers': schema.Means(
          zero='no blocks: embeddings and heads only (a critic head init)'),
      'head_dim': schema.Means(zero='hidden_dim // num_heads (as None)'),
      'max_positions': schema.Means(zero='max_seq_len'),
      'query_scale': schema.Means(zero='head_dim'),
      'attn_softcap': schema.Means(zero='no soft cap'),
      'final_softcap': schema.Means(zero='no soft cap'),
      'sliding_window': schema.Means(zero='no window: full attention')}

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
  # Where model families differ (the defaults are Llama's); jaxrlgen/models/
  # hf.py sets these from a Hugging Face config.json.
  norm_type: str = 'rms'  # 'rms', or 'layer' (LayerNorm with bias: GPT-2).
  mlp_type: str = 'swiglu'  # 'swiglu', 'geglu' (Gemma), 'gelu' (GPT-2).
  qkv_bias: bool = False  # Biases on q, k, v (Qwen2, GPT-2).
  out_bias: bool = False  # Bias on the attention output projection (GPT-2).
  mlp_bias: bool = False  # Biases in the MLP (GPT-2).
  qk_norm: bool = False  # RMSNorm over each head of q and k (Qwen3).
  position_type: str = 'rope'  # 'rope', or 'learned' (GPT-2's table).
  max_positions: int = 0  # Rows of the learned table; 0: max_seq_len.
  rope_scaling: str = 'none'  # 'none', 'linear' or 'llama3' (Llama 3.1+).
  rope_factor: float = 1.0  # Frequency divisor of the scaled rotary bands.
  rope_low_freq_factor: float = 1.0  # llama3: wavelengths above
  rope_high_freq_factor: float = 4.0  # original / low are divided by factor,
  rope_original_max_len: int = 8192  # below original / high kept, blended between.
  embed_scale: bool = False  # Embeddings times sqrt(hidden_dim) (Gemma).
  query_scale: float = 0.0  # Scores / sqrt(query_scale); 0: head_dim (Gemma 2).
  attn_softcap: float = 0.0  # Scores -> c * tanh(scores / c); 0: off (Gemma 2).
  final_softcap: float = 0.0  # The same for the logits (Gemma 2).
  sliding_window: int = 0  # Keys at most this many tokens back; 0: none.
  sliding_layers: tuple[int, ...] = ()  # Layers with the window; (): all.
  post_norms: bool = False  # Norm each block's attention and MLP output (Gemma 2).
  # Attention of teacher-forced passes (ATTENTION_KERNELS). Cached decoding
  # always reads the heads-major cache with the einsum: a fused kernel would
  # need the whole cache transposed at every step.
  attention: str = 'einsum'

  def __post_init__(self):
    schema.positive(self, 'vocab_size', 'hidden_dim', 'mlp_dim', 'num_heads',
                    'num_kv_heads', 'max_seq_len', 'rope_theta', 'norm_eps',
                    'rope_factor', 'rope_low_freq_factor',
                    'rope_high_freq_factor', 'rope_original_max_len')
    schema.non_negative(self, 'num_layers', 'max_positions', 'query_scale',
                        'attn_softcap', 'final_softcap', 'sliding_window')
    if self.head_dim is not None:
      schema.non_negative(self, 'head_dim')
    # Configs arrive from ml_collections with lists where tuples belong.
    object.__setattr__(self, 'sliding_layers', tuple(self.sliding_layers))
    for name, value, known in (
        ('norm_type', self.norm_type, NORM_TYPES),
        ('mlp_type', self.mlp_type, MLP_TYPES),
        ('position_type', self.position_type, POSITION_TYPES),
        ('rope_scaling', self.rope_scaling, ROPE_SCALINGS),
        ('attention', self.attention, ATTENTION_KERNELS)):
      if value not in known:
        raise ValueError(f'model.{name}={value!r}; known: {known}.')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f'model.num_heads={self.num_heads} must be a multiple of '
          f'model.num_kv_heads={self.num_kv_heads} (grouped-query attention).')
    if not self.head_dim and self.hidden_dim % self.num_heads:
      raise schema.FieldError(
          'hidden_dim', f'={self.hidden_dim} must be divisible by num_heads='
          f'{self.num_heads} (each head gets hidden_dim // num_heads), or '
          'set head_dim.')
    if self.position_type == 'rope' and self.resolved_head_dim % 2:
      raise ValueError(f'head_dim={self.resolved_head_dim} must be even for '
                       'rotary embeddings; change model.hidden_dim or '
                       'model.head_dim.')
    if self.attention in ('xla', 'cudnn') and self.attn_softcap:
      raise schema.FieldError(
          'attention', f'={self.attention!r} cannot soft-cap scores '
          f'(attn_softcap={self.attn_softcap}); use attention=\'einsum\'.')

  @property
  def resolved_head_dim(self) -> int:
    return self.head_dim or self.hidden_dim // self.num_heads

  def attention_kernel(self) -> str:
    """The kernel teacher-forced passes run on this backend: 'auto'
    resolves to 'cudnn' on an NVIDIA GPU in a 16-bit dtype without a score
    soft cap, else 'einsum'."""
    if self.attention != 'auto':
      return self.attention
    device = jax.devices()[0]
    nvidia = device.platform == 'gpu' and 'nvidia' in device.device_kind.lower()
    sixteen_bit = jnp.dtype(self.dtype).itemsize == 2
    return ('cudnn' if nvidia and sixteen_bit and not self.attn_softcap
            else 'einsum')

  def uses_window(self, layer: int) -> bool:
    return self.sliding_window > 0 and (not self.sliding_layers
                                        or layer in self.sliding_layers)


@flax.struct.dataclass
class KVCache:
  """Keys and values of every layer for `S` slots.

  Attributes:
    keys: per layer, [B, num_kv_heads, S, head_dim].
    values: per layer, [B, num_kv_heads, S, head_dim].
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
  shape = (batch_size, config.num_kv_heads, size, config.resolved_head_dim)
  dtype = jnp.dtype(config.dtype)
  zeros = tuple(jnp.zeros(shape, dtype) for _ in range(config.num_layers))
  return KVCache(keys=zeros, values=zeros,
                 mask=jnp.zeros((batch_size, size), jnp.bool_),
                 index=jnp.zeros((), jnp.int32))


def grow_cache(cache: KVCache, size: int) -> KVCache:
  """The cache with empty slots appended up to `size` (>= cache.size).

  Attention reads every slot of the cache, so decoding can start on a cache
  just long enough for the tokens so far and grow it in a few steps
  (`TextEnv.cache_segments`) instead of attending over the whole budget.
  """
  if size < cache.size:
    raise ValueError(f'Cannot grow a cache of {cache.size} slots to {size}.')
  pad = size - cache.size
  pad_slots = lambda x: jnp.pad(x, ((0, 0), (0, 0), (0, pad), (0, 0)))
  return cache.replace(keys=tuple(map(pad_slots, cache.keys)),
                       values=tuple(map(pad_slots, cache.values)),
                       mask=jnp.pad(cache.mask, ((0, 0), (0, pad))))


def repeat_cache(cache: KVCache, repeats: int) -> KVCache:
  """Each row of the cache `repeats` times in a row: [B, ...] -> [B*repeats, ...].

  This is how G samples of one prompt share a single prefill.
  """
  rep = lambda x: jnp.repeat(x, repeats, axis=0)
  return cache.replace(keys=tuple(map(rep, cache.keys)),
                       values=tuple(map(rep, cache.values)),
                       mask=rep(cache.mask))


def rope_frequencies(config: TransformerConfig) -> jax.Array:
  """Angular frequency of each rotary band: f32[head_dim / 2]."""
  half = config.resolved_head_dim // 2
  freqs = config.rope_theta ** (-jnp.arange(half, dtype=jnp.float32) / half)
  if config.rope_scaling == 'linear':
    freqs = freqs / config.rope_factor
  elif config.rope_scaling == 'llama3':
    # Llama 3.1's long-context scaling: bands whose wavelength exceeds the
    # original context / low_freq_factor are slowed by `factor`, bands shorter
    # than original / high_freq_factor are kept, and those between blend.
    wavelength = 2 * jnp.pi / freqs
    original = config.rope_original_max_len
    low, high = config.rope_low_freq_factor, config.rope_high_freq_factor
    blend = (original / wavelength - low) / (high - low)
    blended = (1 - blend) * freqs / config.rope_factor + blend * freqs
    freqs = jnp.where(wavelength > original / low, freqs / config.rope_factor,
                      jnp.where(wavelength < original / high, freqs, blended))
  return freqs


def rotary(x: jax.Array, positions: jax.Array,
           freqs: jax.Array | float) -> jax.Array:
  """Rotary position embedding of x: [B, L, H, D] at positions: [B, L].

  `freqs` are the bands' frequencies, f32[D / 2] (`rope_frequencies`), or a
  base theta for the unscaled bands theta^(-2i / D). The two halves of the
  head dimension are rotated as pairs (the Hugging Face layout).
  """
  half = x.shape[-1] // 2
  if not hasattr(freqs, 'shape'):
    freqs = freqs ** (-jnp.arange(half, dtype=jnp.float32) / half)
  angles = positions[..., None].astype(jnp.float32) * freqs  # [B, L, D/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap): x squashed smoothly into (-cap, cap)."""
  return cap * jnp.tanh(x / cap)


# Logical names of the main activations (see jaxrlgen/parallel/sharding.py);
# the constraints are no-ops unless sharding rules are active.
_EMBED = ('batch', 'length', 'act_embed')
_HEADS = ('batch', 'length', 'act_heads', None)
_CACHE = ('batch', 'act_kv_heads', 'length', None)  # Keys, values: [B, KV, S, D].


def _constrain(x: jax.Array, names: tuple[str | None, ...]) -> jax.Array:
  return nn.with_logical_constraint(x, names)


def _dense_init(names, fan_in_axes=(0,)):
  # Variance 1 / fan-in (LeCun): at the small widths RL research starts from,
  # GPT's fixed std of 0.02 starves the residual stream and slows learning.
  init = nn.initializers.variance_scaling(
      1.0, 'fan_in', 'truncated_normal', in_axis=fan_in_axes, out_axis=-1)
  return nn.with_logical_partitioning(init, names)


def _row_dot_general(lhs, rhs, dimension_numbers, precision=None,
                     preferred_element_type=None, *, out_dtype=None):
  """`lax.dot_general` of x [..., *K] and a kernel [*K, *N] over flat rows.

  The k contracted axes are x's last k and the kernel's first k (k = 1 for
  a dense layer; 2 for the attention output's [H, D] heads). The kernel is
  never reshaped, so adapters and quantized kernels (qwix) see the
  parameter itself.

  Why flatten the rows: the weight gradient of a product whose rows span
  batch and length contracts over both axes, and XLA:CPU then writes the
  cotangent transposed inside the elementwise fusion that produces it (a
  strided loop); on [B * L, *K] rows the matmul reads it transposed itself.
  The MLP of workload W trains 2.5x faster this way. The leading axis stays
  batch-major, so batch sharding carries over.

  Low-precision (bfloat16) inputs accumulate in float32 and the result is
  cast to `out_dtype` (default: the input's): that is the form matrix units
  run (tensor cores, TPU MXUs, the CPU's AMX), and on XLA:CPU a product with
  bfloat16 output is 4-7x slower. `nn.Dense` takes this as its `dot_general`.
  """
  out_dtype = out_dtype or lhs.dtype
  if preferred_element_type is None and jnp.dtype(lhs.dtype).itemsize < 4:
    preferred_element_type = jnp.float32
  (contract_lhs, contract_rhs), batch = dimension_numbers
  k = len(contract_rhs)
  if (tuple(contract_lhs), tuple(contract_rhs), batch) != (
      tuple(range(lhs.ndim - k, lhs.ndim)), tuple(range(k)), ((), ())):
    raise ValueError(f'Expected x [..., *K] . kernel [*K, *N]; got '
                     f'dimension_numbers={dimension_numbers}.')
  lead = lhs.shape[:lhs.ndim - k]
  rows = lhs.reshape((-1,) + lhs.shape[lhs.ndim - k:])
  out = jax.lax.dot_general(
      rows, rhs, ((tuple(range(1, k + 1)), tuple(range(k))), ((), ())),
      precision, preferred_element_type=preferred_element_type)
  return out.reshape(lead + out.shape[1:]).astype(out_dtype)


class Projection(nn.Module):
  """x [..., *in] -> [..., *out] by a kernel [*in, *out] (and a bias [*out]).

  A dense layer with several input or output axes, e.g. [E] -> [H, D] for
  the query heads. Like `nn.DenseGeneral`, the kernel is drawn LeCun-style as
  the [prod(in), prod(out)] matrix and reshaped, and the product is one
  `dot_general`; unlike it, the kernel is boxed with its own logical names
  (DenseGeneral boxes the 2-D draw under the 3-D kernel's names, which fails
  under sharding rules). With fan_in_axes=(0, 1) the matrix's fan-in counts
  both of its dimensions, so the attention output projection starts
  sqrt(hidden_dim) times smaller than LeCun's: the initialisation every
  reported result was measured with.
  """

  shape: tuple[int, ...]  # Kernel: input axes, then output axes.
  num_in: int  # How many of the kernel's leading axes are contracted.
  names: tuple[str | None, ...]  # Logical names of the kernel's axes.
  use_bias: bool = False
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  fan_in_axes: tuple[int, ...] = (0,)

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    base = nn.initializers.variance_scaling(
        1.0, 'fan_in', 'truncated_normal', in_axis=self.fan_in_axes,
        out_axis=-1)

    def init(key, shape, dtype=jnp.float32):
      flat = (math.prod(shape[:self.num_in]), math.prod(shape[self.num_in:]))
      return base(key, flat, dtype).reshape(shape)

    kernel = self.param('kernel', nn.with_logical_partitioning(
        init, self.names), self.shape, self.param_dtype)
    bias = None
    if self.use_bias:
      bias = self.param('bias', nn.with_logical_partitioning(
          nn.initializers.zeros, self.names[self.num_in:]),
                        self.shape[self.num_in:], self.param_dtype)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias,
                                              dtype=self.dtype)
    k = self.num_in
    y = _row_dot_general(x, kernel, ((tuple(range(x.ndim - k, x.ndim)),
                                      tuple(range(k))), ((), ())))
    return y if bias is None else y + bias


class Attention(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, layer_cache):
    """x: [B, L, E]; positions: i32[B, L]; key_mask: see `Transformer`."""
    cfg = self.config
    dtype, pdtype = jnp.dtype(cfg.dtype), jnp.dtype(cfg.param_dtype)
    head_dim, num_kv = cfg.resolved_head_dim, cfg.num_kv_heads
    group = cfg.num_heads // num_kv
    proj = lambda heads, names, name: Projection(
        (x.shape[-1], heads, head_dim), 1, names, use_bias=cfg.qkv_bias,
        dtype=dtype, param_dtype=pdtype, name=name)
    # [B, L, heads, D] -> [B, L, E].
    output = lambda heads: Projection(
        (cfg.num_heads, head_dim, x.shape[-1]), 2,
        ('heads', 'head_dim', 'embed'), use_bias=cfg.out_bias, dtype=dtype,
        param_dtype=pdtype, fan_in_axes=(0, 1), name='o')(heads)
    q = proj(cfg.num_heads, ('embed', 'heads', 'head_dim'), 'q')(x)
    k = proj(num_kv, ('embed', 'kv_heads', 'head_dim'), 'k')(x)
    v = proj(num_kv, ('embed', 'kv_heads', 'head_dim'), 'v')(x)
    if cfg.qk_norm:
      q = _norm(cfg, 'q_norm', 'rms', ('head_dim',))(q)
      k = _norm(cfg, 'k_norm', 'rms', ('head_dim',))(k)
    if cfg.position_type == 'rope':
      freqs = (cfg.rope_theta if cfg.rope_scaling == 'none'
               else rope_frequencies(cfg))
      q, k = rotary(q, positions, freqs), rotary(k, positions, freqs)
    q = _constrain(q, _HEADS)
    scale = 1 / math.sqrt(cfg.query_scale or head_dim)
    kernel = cfg.attention_kernel()
    if layer_cache is None and kernel != 'einsum':
      # The fused kernels take [B, L, heads, D] as projected; the mask is
      # causal already, and `is_causal` lets cuDNN skip the blocks above the
      # diagonal. A query with no key to attend to (padding) gets a finite
      # average, as in the einsum.
      out = jax.nn.dot_product_attention(
          q, k, v, mask=key_mask[:, None], scale=scale, is_causal=True,
          implementation=kernel)
      return output(out), (jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2))
    # Keys and values live heads-major, [B, KV, S, D], the layout both
    # attention products read without transposing: in the cache, that saves
    # copying the whole cache twice per layer at every decode step.
    k = _constrain(jnp.swapaxes(k, 1, 2), _CACHE)
    v = _constrain(jnp.swapaxes(v, 1, 2), _CACHE)
    if layer_cache is not None:
      cache_k, cache_v, index = layer_cache
      k = jax.lax.dynamic_update_slice_in_dim(cache_k, k.astype(cache_k.dtype),
                                              index, axis=2)
      v = jax.lax.dynamic_update_slice_in_dim(cache_v, v.astype(cache_v.dtype),
                                              index, axis=2)
      k, v = _constrain(k, _CACHE), _constrain(v, _CACHE)
    new_kv = (k, v)

    b, l = q.shape[:2]
    q = jnp.moveaxis(q.reshape(b, l, num_kv, group, head_dim), 1, 3)
    scores = jnp.einsum('bkgld,bksd->bkgls', q, k,
                        preferred_element_type=jnp.float32)
    scores = scores * jnp.float32(scale)
    if cfg.attn_softcap:
      scores = softcap(scores, cfg.attn_softcap)
    scores = jnp.where(key_mask[:, None, None], scores,
                       jnp.finfo(jnp.float32).min)
    probs = jax.nn.softmax(scores, axis=-1).astype(dtype)
    out = jnp.einsum('bkgls,bksd->blkgd', probs, v)
    out = out.reshape(b, l, cfg.num_heads, head_dim)
    return output(out), new_kv


class MLP(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x):
    cfg = self.config
    dense = lambda feats, names, name: nn.Dense(
        feats, use_bias=cfg.mlp_bias, dtype=jnp.dtype(cfg.dtype),
        dot_general=_row_dot_general,
        param_dtype=jnp.dtype(cfg.param_dtype), kernel_init=_dense_init(names),
        bias_init=nn.with_logical_partitioning(nn.initializers.zeros,
                                               names[1:]), name=name)
    if cfg.mlp_type == 'gelu':  # Ungated (GPT-2).
      hidden = nn.gelu(dense(cfg.mlp_dim, ('embed', 'mlp'), 'up')(x),
                       approximate=True)
    else:
      gate = dense(cfg.mlp_dim, ('embed', 'mlp'), 'gate')(x)
      up = dense(cfg.mlp_dim, ('embed', 'mlp'), 'up')(x)
      act = (nn.silu if cfg.mlp_type == 'swiglu'
             else functools.partial(nn.gelu, approximate=True))
      hidden = act(gate) * up
    hidden = _constrain(hidden, ('batch', 'length', 'act_mlp'))
    return dense(x.shape[-1], ('mlp', 'embed'), 'down')(hidden)


def _norm(cfg: TransformerConfig, name: str, kind: str | None = None,
          names: tuple[str, ...] = ('embed',)) -> nn.Module:
  """RMSNorm or LayerNorm over the last axis (`names`: its logical name)."""
  kind = kind or cfg.norm_type
  common = dict(epsilon=cfg.norm_eps, dtype=jnp.dtype(cfg.dtype),
                param_dtype=jnp.dtype(cfg.param_dtype),
                scale_init=nn.with_logical_partitioning(
                    nn.initializers.ones, names), name=name)
  if kind == 'layer':
    # Two-pass variance, as PyTorch computes it.
    return nn.LayerNorm(use_fast_variance=False,
                        bias_init=nn.with_logical_partitioning(
                            nn.initializers.zeros, names), **common)
  return nn.RMSNorm(**common)


class Block(nn.Module):
  config: TransformerConfig

  @nn.compact
  def __call__(self, x, positions, key_mask, layer_cache):
    cfg = self.config
    attn_out, new_kv = Attention(cfg, name='attn')(
        _norm(cfg, 'attn_norm')(x), positions, key_mask, layer_cache)
    if cfg.post_norms:
      attn_out = _norm(cfg, 'post_attn_norm')(attn_out)
    x = _constrain(x + attn_out, _EMBED)
    mlp_out = MLP(cfg, name='mlp')(_norm(cfg, 'mlp_norm')(x))
    if cfg.post_norms:
      mlp_out = _norm(cfg, 'post_mlp_norm')(mlp_out)
    return _constrain(x + mlp_out, _EMBED), new_kv


class Transformer(nn.Module):
  """Decoder-only LM.

  `__call__(tokens, positions, token_mask, cache=None, segment_ids=None)
  -> (hidden, cache)`:
    tokens: i32[B, L]; positions: i32[B, L] rotary positions;
    token_mask: bool[B, L] real tokens (false for padding, which no query
      attends to).
    segment_ids: i32[B, L] or None: packed rows (`core.packing`), where a
      query attends only to keys of its own segment (no cache).
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
    if cfg.position_type == 'learned':
      self.pos_embed = nn.Embed(
          cfg.max_positions or cfg.max_seq_len, cfg.hidden_dim,
          dtype=jnp.dtype(cfg.dtype), param_dtype=pdtype,
          embedding_init=nn.with_logical_partitioning(
              nn.initializers.normal(0.02), (None, 'embed')))
    block = nn.remat(Block) if cfg.remat else Block
    self.blocks = [block(cfg, name=f'block_{i}')
                   for i in range(cfg.num_layers)]
    self.final_norm = _norm(cfg, 'final_norm')
    if not cfg.tie_embeddings:
      # Logits leave the product in float32 (log-probs need the precision).
      self.unembed = nn.Dense(
          cfg.vocab_size, use_bias=False, dtype=jnp.dtype(cfg.dtype),
          dot_general=functools.partial(_row_dot_general,
                                        out_dtype=jnp.float32),
          param_dtype=pdtype, kernel_init=_dense_init(('embed', 'vocab')))
    if cfg.value_head:
      self.value_proj = nn.Dense(
          1, dtype=jnp.float32, param_dtype=pdtype,
          kernel_init=nn.with_logical_partitioning(
              nn.initializers.zeros, ('embed', None)),
          bias_init=nn.with_logical_partitioning(
              nn.initializers.zeros, (None,)))

  def __call__(self, tokens, positions, token_mask, cache: KVCache | None = None,
               segment_ids: jax.Array | None = None):
    # The lookup reads a replicated table: XLA cannot partition a row gather
    # from a vocab- and fsdp-sharded table into batch-sharded rows, and would
    # replicate far more (with a warning) than this one all-gather does.
    table = _constrain(self.embed.embedding, (None, 'act_embed'))
    cfg = self.config
    x = jnp.take(table, tokens, axis=0).astype(cfg.dtype)
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.hidden_dim ** 0.5, x.dtype)
    if cfg.position_type == 'learned':
      x = x + jnp.take(self.pos_embed.embedding, positions,
                       axis=0).astype(cfg.dtype)
    x = _constrain(x, _EMBED)
    if cache is None:
      query_slots = slots = jnp.arange(tokens.shape[1])
      valid = token_mask
    else:
      slots = jnp.arange(cache.size)
      cache_mask = jax.lax.dynamic_update_slice_in_dim(
          cache.mask, token_mask, cache.index, axis=1)
      query_slots = cache.index + jnp.arange(tokens.shape[1])
      valid = cache_mask
    back = query_slots[:, None] - slots[None, :]  # [L, S] tokens back.
    key_mask = (back >= 0)[None] & valid[:, None, :]  # [B, L, S]
    if segment_ids is not None:  # Packed sequences never see each other.
      if cache is not None:
        raise ValueError('segment_ids are for teacher-forced passes, not '
                         'cached decoding.')
      key_mask &= segment_ids[:, :, None] == segment_ids[:, None, :]
    window_mask = None
    if cfg.sliding_window:
      # Slots are consecutive tokens (padding sits before the prompt, where
      # `valid` masks it), so slot distance is token distance.
      window_mask = key_mask & (back < cfg.sliding_window)[None]
    new_keys, new_values = [], []
    for i, block in enumerate(self.blocks):
      layer_cache = None if cache is None else (
          cache.keys[i], cache.values[i], cache.index)
      mask = window_mask if cfg.uses_window(i) else key_mask
      x, (k, v) = block(x, positions, mask, layer_cache)
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
      table = self.embed.embedding.astype(hidden.dtype)  # [V, E]
      logits = _row_dot_general(hidden, table.T,
                                (((hidden.ndim - 1,), (0,)), ((), ())),
                                out_dtype=jnp.float32)
    else:
      logits = self.unembed(hidden)
    if logits.ndim == 3:
      logits = _constrain(logits, ('batch', 'length', 'act_vocab'))
    logits = logits.astype(jnp.float32)
    if self.config.final_softcap:
      logits = softcap(logits, self.config.final_softcap)
    return logits

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
