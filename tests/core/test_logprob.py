"""Tests for jaxrlgen/core/logprob.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.core.logprob import chunked_token_logprobs
from jaxrlgen.core.logprob import token_logprobs


def _np_reference(logits, targets, temperature):
  """log softmax(logits / temperature)[targets] and the entropy, in float64."""
  z = np.asarray(logits, np.float64) / temperature
  z = z - z.max(axis=-1, keepdims=True)
  logp_all = z - np.log(np.exp(z).sum(axis=-1, keepdims=True))
  logp = np.take_along_axis(logp_all, np.asarray(targets)[..., None], -1)[..., 0]
  entropy = -(np.exp(logp_all) * logp_all).sum(axis=-1)
  return logp, entropy


def test_token_logprobs_hand_computed():
  # Uniform over 4 tokens: log(1/4) and entropy log 4, whatever the target.
  logp, entropy = token_logprobs(jnp.zeros((2, 4)), jnp.array([0, 3]))
  np.testing.assert_allclose(logp, np.full(2, -np.log(4.0)), rtol=1e-6)
  np.testing.assert_allclose(entropy, np.full(2, np.log(4.0)), rtol=1e-6)


@pytest.mark.parametrize('temperature', [1.0, 0.7])
@pytest.mark.parametrize('use_jit', [False, True])
def test_token_logprobs_matches_numpy(temperature, use_jit):
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3.0
  targets = rng.integers(0, 11, size=(3, 5)).astype(np.int32)
  fn = lambda l, y: token_logprobs(l, y, temperature)
  if use_jit:
    fn = jax.jit(fn)
  logp, entropy = fn(jnp.asarray(logits), jnp.asarray(targets))
  ref_logp, ref_entropy = _np_reference(logits, targets, temperature)
  assert logp.dtype == jnp.float32 and entropy.dtype == jnp.float32
  assert logp.shape == entropy.shape == (3, 5)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(entropy, ref_entropy, atol=1e-5, rtol=1e-5)


def test_token_logprobs_bfloat16_logits_computed_in_float32():
  rng = np.random.default_rng(1)
  logits = jnp.asarray(rng.normal(size=(4, 9)) * 4.0, jnp.bfloat16)
  targets = jnp.asarray(rng.integers(0, 9, size=4), jnp.int32)
  logp, entropy = token_logprobs(logits, targets, temperature=0.5)
  assert logp.dtype == jnp.float32 and entropy.dtype == jnp.float32
  # The reference sees the same (already rounded) bfloat16 values.
  ref_logp, ref_entropy = _np_reference(
      np.asarray(logits.astype(jnp.float32)), targets, 0.5)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(entropy, ref_entropy, atol=1e-5, rtol=1e-5)


_B, _E, _V = 2, 6, 13


def _problem(t, seed=0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(_B, t, _E)), jnp.float32)
  w = jnp.asarray(rng.normal(size=(_E, _V)), jnp.float32)
  targets = jnp.asarray(rng.integers(0, _V, size=(_B, t)), jnp.int32)
  return hidden, w, targets


# (T, chunk_size, jit): divides T, does not divide T, larger than T. Eager
# mode is slow on CPU, so only the ragged case also runs without jit.
_CHUNKS = [(8, 4, True), (7, 3, True), (5, 16, True), (7, 3, False)]


@pytest.mark.parametrize('t,chunk_size,use_jit', _CHUNKS)
def test_chunked_equals_unchunked(t, chunk_size, use_jit):
  hidden, w, targets = _problem(t)
  temperature = 0.8

  def both(w, hidden, targets):
    logits_fn = lambda h: h @ w
    chunked = chunked_token_logprobs(logits_fn, hidden, targets,
                                     temperature=temperature,
                                     chunk_size=chunk_size)
    return chunked, token_logprobs(logits_fn(hidden), targets, temperature)

  if use_jit:
    both = jax.jit(both)
  (logp, entropy), (want_logp, want_entropy) = both(w, hidden, targets)
  assert logp.shape == entropy.shape == (_B, t)
  np.testing.assert_allclose(logp, want_logp, atol=1e-5)
  np.testing.assert_allclose(entropy, want_entropy, atol=1e-5)
  ref_logp, ref_entropy = _np_reference(
      np.asarray(hidden, np.float64) @ np.asarray(w, np.float64), targets,
      temperature)
  np.testing.assert_allclose(logp, ref_logp, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(entropy, ref_entropy, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize('t,chunk_size,use_jit', _CHUNKS)
def test_chunked_gradient_equals_unchunked(t, chunk_size, use_jit):
  hidden, w, targets = _problem(t, seed=1)
  # Per-step weights make the gradient depend on each step's own terms, so a
  # chunk that was shuffled or dropped would show.
  weights = jnp.asarray(
      np.random.default_rng(2).normal(size=(_B, t)), jnp.float32)

  def loss(w, hidden, fn):
    logp, entropy = fn(lambda h: h @ w, hidden)
    return jnp.sum(weights * logp) + 0.1 * jnp.sum(weights * entropy)

  chunked = lambda f, h: chunked_token_logprobs(
      f, h, targets, temperature=0.9, chunk_size=chunk_size)
  unchunked = lambda f, h: token_logprobs(f(h), targets, 0.9)
  grad = jax.grad(loss, argnums=(0, 1))
  if use_jit:
    grad = jax.jit(grad, static_argnums=2)
  gw, gh = grad(w, hidden, chunked)
  want_gw, want_gh = grad(w, hidden, unchunked)
  assert gw.shape == w.shape and gh.shape == hidden.shape
  assert np.abs(np.asarray(want_gw)).max() > 1e-2  # Not trivially zero.
  np.testing.assert_allclose(gw, want_gw, atol=1e-5, rtol=1e-5)
  np.testing.assert_allclose(gh, want_gh, atol=1e-5, rtol=1e-5)
