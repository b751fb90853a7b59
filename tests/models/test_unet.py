"""Tests for jaxrlgen/models/unet.py."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.models import unet

CFG = unet.UNetConfig(image_size=8, features=(8, 16), embed_dim=16,
                      num_groups=4)


@functools.partial(jax.jit, static_argnums=0)
def _apply(cfg, params, x, t, y):
  """Compiled once per config and shape."""
  return unet.UNet(cfg).apply({'params': params}, x, t, y)


def _perturbed(params, scale=0.1, seed=1):
  """Params with every leaf moved, so zero-initialised layers act (NumPy
  noise: drawing it with JAX would compile a program per shape)."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + scale * rng.normal(size=x.shape).astype(np.float32),
      params)


def _inputs(b=3, seed=0):
  x = jax.random.normal(jax.random.key(seed), (b, 8, 8, 1))
  return x, jnp.array([0, 500, 999][:b]), jnp.array([1, 7, 10][:b])


def test_fresh_model_predicts_zero_noise_with_the_input_shape():
  params = unet.init_params(CFG, jax.random.key(0))
  eps = _apply(CFG, params, *_inputs())
  assert eps.shape == (3, 8, 8, 1) and eps.dtype == jnp.float32
  np.testing.assert_array_equal(eps, 0.0)


def test_output_depends_on_time_and_class():
  params = _perturbed(unet.init_params(CFG, jax.random.key(0)))
  apply = lambda x, t, y: _apply(CFG, params, x, t, y)
  x, t, y = _inputs()
  base = apply(x, t, y)
  assert np.abs(base - apply(x, t + 10, y)).max() > 1e-3
  assert np.abs(base - apply(x, t, (y + 1) % 11)).max() > 1e-3
  # Samples do not interact (GroupNorm normalises within a sample).
  swapped = apply(x[::-1], t[::-1], y[::-1])
  np.testing.assert_allclose(swapped[::-1], base, atol=1e-5)


@pytest.mark.parametrize('strides, shape', [(1, (8, 8)), (2, (7, 6))])
def test_im2col_convolution_equals_xla_convolution(strides, shape):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(2, *shape, 5)).astype(np.float32)
  params = {'params': {
      'kernel': rng.normal(size=(3, 3, 5, 4)).astype(np.float32),
      'bias': rng.normal(size=(4,)).astype(np.float32)}}
  im2col = unet.Conv3x3(4, strides=strides, im2col=True)
  native = unet.Conv3x3(4, strides=strides, im2col=False)
  np.testing.assert_allclose(jax.jit(im2col.apply)(params, x),
                             jax.jit(native.apply)(params, x), atol=1e-5)


def test_im2col_is_a_compute_option_with_the_same_parameters():
  params = _perturbed(unet.init_params(CFG, jax.random.key(0)))
  native_cfg = dataclasses.replace(CFG, im2col=False)
  assert jax.tree.structure(params) == jax.tree.structure(
      unet.init_params(native_cfg, jax.random.key(0)))
  x, t, y = _inputs()
  np.testing.assert_allclose(_apply(CFG, params, x, t, y),
                             _apply(native_cfg, params, x, t, y), atol=1e-4)


def test_timestep_embedding():
  emb = unet.timestep_embedding(jnp.array([0, 3]), 6)
  freqs = np.exp(-np.log(10_000.0) * np.arange(3) / 3)
  want = np.concatenate([np.sin(3 * freqs), np.cos(3 * freqs)])
  np.testing.assert_allclose(emb[1], want, rtol=1e-5)
  np.testing.assert_allclose(emb[0], [0, 0, 0, 1, 1, 1])


@pytest.mark.parametrize('fields, message', [
    ({'image_size': 6, 'features': (8, 8, 8)}, 'model.image_size'),
    ({'features': (8, 10)}, 'model.num_groups'),
    ({'features': ()}, 'model.features'),
])
def test_config_errors_name_the_field(fields, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(CFG, **fields)
