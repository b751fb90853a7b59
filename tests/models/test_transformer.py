"""Tests for jaxrlgen/models/transformer.py."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec

from jaxrlgen.models import transformer as tfm

_BASE = dict(vocab_size=32, hidden_dim=16, mlp_dim=32, num_layers=1,
             num_heads=4, num_kv_heads=4, max_seq_len=16)

# One layer keeps compilation fast; 'mha' has two so that the cache of a
# later layer is exercised too.
_CONFIGS = {
    'mha': tfm.TransformerConfig(**{**_BASE, 'num_layers': 2}),
    'gqa': tfm.TransformerConfig(**{**_BASE, 'num_kv_heads': 2}),
    'tied': tfm.TransformerConfig(**{**_BASE, 'tie_embeddings': True}),
    'value_head': tfm.TransformerConfig(**{**_BASE, 'value_head': True}),
}


@functools.partial(jax.jit, static_argnums=0)
def _forward(config, params, tokens, positions, mask, cache=None):
  """(logits f32[B, L, V], hidden, cache) of one call of the model."""
  model = tfm.Transformer(config)
  hidden, cache = model.apply({'params': params}, tokens, positions, mask,
                              cache)
  logits = model.apply({'params': params}, hidden,
                       method=tfm.Transformer.logits)
  return logits, hidden, cache


def _left_padded_batch(config, pads, length, seed=0):
  """Random tokens with `pads[i]` padding tokens on the left of row i."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, config.vocab_size, size=(len(pads), length))
  mask = np.arange(length)[None, :] >= np.asarray(pads)[:, None]
  tokens = np.where(mask, tokens, 0)  # Padding holds an arbitrary token.
  return jnp.asarray(tokens, jnp.int32), jnp.asarray(mask)


def _with_random_value_head(params, seed=0):
  """The value head starts at zero; a random one makes its output testable."""
  rng = np.random.default_rng(seed)
  vp = params['value_proj']
  return {**params, 'value_proj': {
      'kernel': jnp.asarray(rng.normal(size=vp['kernel'].shape), jnp.float32),
      'bias': jnp.asarray(rng.normal(size=vp['bias'].shape), jnp.float32)}}


@pytest.mark.parametrize('name', list(_CONFIGS))
def test_cached_decoding_equals_full_forward(name):
  config = _CONFIGS[name]
  params = tfm.init_params(config, jax.random.key(0))
  length, prefill = 8, 3
  # Row 2 is all padding during the prefill: its first real token arrives in
  # a one-token step.
  tokens, mask = _left_padded_batch(config, pads=[0, 2, 5], length=length)
  positions = tfm.positions_from_mask(mask)
  np.testing.assert_array_equal(
      positions, [[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 1, 2, 3, 4, 5],
                  [0, 0, 0, 0, 0, 0, 1, 2]])

  full_logits, full_hidden, _ = _forward(config, params, tokens, positions,
                                         mask)

  # A cache with spare slots at the end, as the text env allocates it.
  cache = tfm.init_cache(config, 3, length + 3)
  logits, hidden, cache = _forward(config, params, tokens[:, :prefill],
                                   positions[:, :prefill], mask[:, :prefill],
                                   cache)
  step_logits, step_hidden = [logits], [hidden]
  for i in range(prefill, length):
    sl = slice(i, i + 1)
    logits, hidden, cache = _forward(config, params, tokens[:, sl],
                                     positions[:, sl], mask[:, sl], cache)
    step_logits.append(logits)
    step_hidden.append(hidden)
  cached_logits = jnp.concatenate(step_logits, axis=1)
  assert int(cache.index) == length
  np.testing.assert_array_equal(cache.mask[:, :length], mask)
  assert not cache.mask[:, length:].any()

  assert full_logits.dtype == cached_logits.dtype == jnp.float32
  assert full_logits.shape == (3, length, config.vocab_size)
  m = np.asarray(mask)
  np.testing.assert_allclose(cached_logits[m], full_logits[m], atol=1e-5)
  # The test can fail: logits differ between positions of a row.
  assert np.abs(np.diff(np.asarray(full_logits[0]), axis=0)).max() > 1e-2

  if config.value_head:
    vparams = _with_random_value_head(params)
    value = lambda h: tfm.Transformer(config).apply(
        {'params': vparams}, h, method=tfm.Transformer.value)
    np.testing.assert_allclose(
        value(jnp.concatenate(step_hidden, axis=1))[m],
        value(full_hidden)[m], atol=1e-5)


def test_left_padding_does_not_change_logits():
  # (Cached prefill of a left-padded batch equals this full forward, by
  # test_cached_decoding_equals_full_forward.)
  config = _CONFIGS['gqa']
  params = tfm.init_params(config, jax.random.key(1))
  # The shapes of test_cached_decoding_equals_full_forward, whose compiled
  # forward is reused; row 0 is the prompt under test.
  length, pad = 8, 3
  tokens, mask = _left_padded_batch(config, pads=[pad, 0, 5], length=length,
                                    seed=3)
  # Garbage in the padding must not leak into real positions.
  tokens = tokens.at[0, :pad].set(jnp.array([5, 17, 9]))
  alone = tokens[:1, pad:]
  alone_mask = jnp.ones_like(alone, jnp.bool_)

  def last_logits(tokens, mask):
    logits, _, _ = _forward(config, params, tokens,
                            tfm.positions_from_mask(mask), mask)
    return logits[:, -1]

  padded = last_logits(tokens, mask)[0]
  unpadded = last_logits(alone, alone_mask)[0]
  np.testing.assert_allclose(padded, unpadded, atol=1e-5)
  # Control: were the padding tokens real, the logits would change.
  unmasked = last_logits(tokens, jnp.ones_like(mask))[0]
  assert np.abs(np.asarray(unmasked - unpadded)).max() > 1e-3


def test_bfloat16_compute_close_to_float32():
  config32 = _CONFIGS['gqa']
  config16 = tfm.TransformerConfig(**{**_BASE, 'num_kv_heads': 2,
                                      'dtype': 'bfloat16'})
  params = tfm.init_params(config16, jax.random.key(2))
  for leaf in jax.tree.leaves(params):
    assert leaf.dtype == jnp.float32
  # The shapes of test_cached_decoding_equals_full_forward, whose compiled
  # f32 forward is reused.
  tokens, mask = _left_padded_batch(config16, pads=[0, 2, 5], length=8)
  positions = tfm.positions_from_mask(mask)
  logits16, hidden16, _ = _forward(config16, params, tokens, positions, mask)
  logits32, _, _ = _forward(config32, params, tokens, positions, mask)
  assert hidden16.dtype == jnp.bfloat16
  assert logits16.dtype == jnp.float32
  m = np.asarray(mask)
  np.testing.assert_allclose(logits16[m], logits32[m], atol=0.1)
  assert not np.array_equal(logits16[m], logits32[m])  # Really ran in bf16.

  # The bf16 cache is bf16 too and cached decoding runs in it.
  cache = tfm.init_cache(config16, 3, 8)
  assert cache.keys[0].dtype == jnp.bfloat16
  cached, _, _ = _forward(config16, params, tokens, positions, mask, cache)
  np.testing.assert_allclose(cached[m], logits32[m], atol=0.1)


@pytest.mark.parametrize('name', list(_CONFIGS))
def test_logical_axes_match_params(name):
  config = _CONFIGS[name]
  params = tfm.init_params(config, jax.random.key(0))
  axes = tfm.logical_axes(config)
  is_spec = lambda x: isinstance(x, PartitionSpec)
  assert jax.tree.structure(axes, is_leaf=is_spec) == \
      jax.tree.structure(params)
  specs = jax.tree.leaves(axes, is_leaf=is_spec)
  arrays = jax.tree.leaves(params)
  assert len(specs) == len(arrays) > 0
  for spec, array in zip(specs, arrays):
    assert is_spec(spec)
    assert len(spec) == array.ndim, (spec, array.shape)
  assert axes['embed']['embedding'] == PartitionSpec('vocab', 'embed')
  assert axes['block_0']['attn']['k']['kernel'] == PartitionSpec(
      'embed', 'kv_heads', 'head_dim')
  assert ('unembed' in axes) == (not config.tie_embeddings)
  assert ('value_proj' in axes) == config.value_head


def test_init_cache_larger_than_max_seq_len_raises():
  config = _CONFIGS['mha']
  assert tfm.init_cache(config, 2, config.max_seq_len).size == \
      config.max_seq_len
  with pytest.raises(ValueError, match='max_seq_len'):
    tfm.init_cache(config, 2, config.max_seq_len + 1)


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_heads=3, num_kv_heads=2), 'num_kv_heads'),
    (dict(hidden_dim=12, num_heads=4, num_kv_heads=4), 'head_dim'),
    (dict(attention='flash'), 'attention'),
    (dict(attention='xla', attn_softcap=50.0), "attention='xla' cannot"),
])
def test_invalid_config_raises(kwargs, match):
  with pytest.raises(ValueError, match=match):
    tfm.TransformerConfig(**kwargs)


def test_value_head():
  config = _CONFIGS['value_head']
  params = _with_random_value_head(tfm.init_params(config, jax.random.key(4)))
  model = tfm.Transformer(config)
  tokens, mask = _left_padded_batch(config, pads=[0, 1, 3], length=8)
  _, hidden, _ = _forward(config, params, tokens,
                          tfm.positions_from_mask(mask), mask)
  values = model.apply({'params': params}, hidden,
                       method=tfm.Transformer.value)
  assert values.shape == (3, 8) and values.dtype == jnp.float32
  vp = params['value_proj']
  want = np.asarray(hidden) @ np.asarray(vp['kernel'])[:, 0] + \
      np.asarray(vp['bias'])[0]
  np.testing.assert_allclose(values, want, atol=1e-5, rtol=1e-5)


def test_value_without_value_head_raises():
  config = _CONFIGS['mha']
  params = tfm.init_params(config, jax.random.key(0))
  assert 'value_proj' not in params
  with pytest.raises(ValueError, match='value_head'):
    tfm.Transformer(config).apply({'params': params},
                                  jnp.zeros((2, 3, config.hidden_dim)),
                                  method=tfm.Transformer.value)


def test_fused_attention_kernel_equals_einsum():
  """`attention='xla'` (jax.nn.dot_product_attention) against the einsum, on
  what a teacher-forced pass meets: left padding (a query with no key at
  all), grouped heads, a sliding window, a query scale, packed segments, and
  the gradient. 'cudnn' runs the same call on a GPU."""
  base = dict(_BASE, num_kv_heads=2, sliding_window=3, query_scale=8.0)
  einsum = tfm.TransformerConfig(**base)
  fused = tfm.TransformerConfig(**base, attention='xla')
  params = tfm.init_params(einsum, jax.random.key(2))
  tokens, mask = _left_padded_batch(einsum, pads=[0, 3, 7], length=8, seed=4)
  positions = tfm.positions_from_mask(mask)
  # Row 0 packs two sequences (5 + 3 tokens) with restarted positions.
  segments = jnp.where(mask, 1, 0).at[0, 5:].set(2)
  positions = positions.at[0, 5:].set(jnp.arange(3))

  def loss(params, config):
    hidden, _ = tfm.Transformer(config).apply(
        {'params': params}, tokens, positions, mask, segment_ids=segments)
    logits = tfm.Transformer(config).apply({'params': params}, hidden,
                                           method=tfm.Transformer.logits)
    logp = jax.nn.log_softmax(logits)
    return jnp.sum(jnp.where(mask[..., None], logp * logits, 0.)), logits

  grad = jax.jit(jax.grad(loss, has_aux=True), static_argnums=1)
  g_einsum, logits_einsum = grad(params, einsum)
  g_fused, logits_fused = grad(params, fused)
  m = np.asarray(mask)
  np.testing.assert_allclose(logits_fused[m], logits_einsum[m], atol=1e-5)
  assert np.isfinite(np.asarray(logits_fused)).all()
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5,
                                                       rtol=1e-4),
               g_fused, g_einsum)
  # The test can fail: the window changes the logits of the last tokens.
  unwindowed = tfm.TransformerConfig(**{**base, 'sliding_window': 0},
                                     attention='xla')
  _, logits_unwindowed = loss(params, unwindowed)
  assert np.abs(np.asarray(logits_unwindowed - logits_fused)[m]).max() > 1e-3


def test_auto_attention_is_the_einsum_off_gpu():
  config = tfm.TransformerConfig(**_BASE, attention='auto', dtype='bfloat16')
  device = jax.devices()[0]
  nvidia = device.platform == 'gpu' and 'nvidia' in device.device_kind.lower()
  expected = 'cudnn' if nvidia else 'einsum'
  assert config.attention_kernel() == expected
  assert tfm.TransformerConfig(**_BASE,
                               attention='auto').attention_kernel() == 'einsum'
  # A soft cap (Gemma 2) keeps the einsum, the only kernel that has one.
  assert tfm.TransformerConfig(**_BASE, attention='auto', dtype='bfloat16',
                               attn_softcap=50.0).attention_kernel() == 'einsum'
