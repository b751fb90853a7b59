"""Tests for jaxrlgen/models/discriminator.py: the forward pass against NumPy,
the loss's L2 term, chunked scoring, and learning to tell oracle samples from
random sequences."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen.envs.recurrent import RecurrentEnv
from jaxrlgen.models import discriminator as disc
from jaxrlgen.models import lstm
from jaxrlgen.policies import RecurrentPolicy

_CFG = disc.DiscriminatorConfig(vocab_size=12, length=6, embed_dim=5,
                                filter_widths=(1, 2, 6), num_filters=(3, 4, 2))


def _numpy_logits(params, tokens):
  p = jax.tree.map(lambda x: np.asarray(x, np.float64), params)
  e = p['embed']['embedding'][tokens]  # [B, L, E]
  pooled = []
  for w in _CFG.filter_widths:
    kernel, bias = p[f'conv{w}_kernel'], p[f'conv{w}_bias']
    out = np.stack([np.einsum('bwe,wen->bn', e[:, i:i + w], kernel)
                    for i in range(_CFG.length - w + 1)], axis=1) + bias
    pooled.append(np.maximum(out, 0).max(axis=1))
  f = np.concatenate(pooled, axis=-1)
  z = f @ p['highway']['kernel'] + p['highway']['bias']
  num = f.shape[1]
  gate = 1 / (1 + np.exp(-z[:, num:]))
  h = gate * np.maximum(z[:, :num], 0) + (1 - gate) * f
  return h @ p['output']['kernel'] + p['output']['bias']


def test_forward_matches_numpy_convolutions():
  params = disc.init_params(_CFG, jax.random.key(0))
  tokens = np.random.default_rng(0).integers(0, 12, (5, 6))
  model = disc.Discriminator(_CFG)
  logits, probs = jax.jit(lambda p, x: (
      model.apply({'params': p}, x),
      # Chunked (and padded) scoring.
      disc.probability_real(model, p, x, chunk=2)))(params,
                                                     jnp.asarray(tokens))
  np.testing.assert_allclose(logits, _numpy_logits(params, tokens),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(probs, jax.nn.softmax(logits)[:, disc.REAL],
                             rtol=1e-5)


def test_loss_is_cross_entropy_plus_output_l2():
  config = disc.DiscriminatorConfig(**{**_CFG.__dict__, 'dropout_rate': 0.0})
  model = disc.Discriminator(config)
  params = disc.init_params(config, jax.random.key(1))
  tokens = jnp.asarray(np.random.default_rng(1).integers(0, 12, (4, 6)))
  labels = jnp.asarray([0, 1, 1, 0])
  loss, metrics = jax.jit(lambda p: disc.classifier_loss(
      model, p, tokens, labels, jax.random.key(2), l2_reg=0.2))(params)
  logits = _numpy_logits(params, np.asarray(tokens))
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  ce = -logp[np.arange(4), np.asarray(labels)].mean()
  out = params['output']
  l2 = 0.5 * (np.sum(np.square(out['kernel'])) + np.sum(np.square(out['bias'])))
  np.testing.assert_allclose(loss, ce + 0.2 * l2, rtol=1e-5)
  np.testing.assert_allclose(metrics['discriminator/cross_entropy'], ce,
                             rtol=1e-5)


@pytest.mark.slow
def test_learns_to_separate_oracle_from_random_sequences():
  vocab, length = 30, 8
  oracle_cfg = lstm.LSTMConfig(vocab_size=vocab, embed_dim=8, hidden_dim=8,
                               init_std=1.0)
  oracle = RecurrentEnv(RecurrentPolicy(lstm.LSTM(oracle_cfg)), length=length)
  oracle_params = lstm.init_params(oracle_cfg, jax.random.key(3))
  real = oracle.sample(oracle_params, 512, jax.random.key(4), chunk=512)
  fake = jax.random.randint(jax.random.key(5), (512, length), 0, vocab)
  tokens = jnp.concatenate([real, fake])
  labels = jnp.concatenate([jnp.ones(512, jnp.int32),
                            jnp.zeros(512, jnp.int32)])
  train, test = np.r_[0:384, 512:896], np.r_[384:512, 896:1024]
  config = disc.DiscriminatorConfig(vocab_size=vocab, length=length,
                                    embed_dim=16, filter_widths=(1, 2, 3),
                                    num_filters=(16, 16, 16))
  model = disc.Discriminator(config)
  params = disc.init_params(config, jax.random.key(6))
  tx = optax.adam(3e-3)

  @jax.jit
  def train_epochs(params, opt_state, key):
    def step(carry, inputs):
      params, opt_state = carry
      idx, k = inputs
      grads, _ = jax.grad(lambda p: disc.classifier_loss(
          model, p, tokens[idx], labels[idx], k, l2_reg=0.2),
                          has_aux=True)(params)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), None
    order = jax.random.permutation(key, jnp.asarray(train))
    batches = jnp.tile(order, 6).reshape(-1, 64)  # 6 epochs of 12 batches.
    keys = jax.random.split(key, batches.shape[0])
    return jax.lax.scan(step, (params, opt_state), (batches, keys))[0]

  accuracy = jax.jit(lambda p: jnp.mean(
      (disc.probability_real(model, p, tokens[test]) > 0.5)
      == (labels[test] == 1)))
  before = accuracy(params)
  params, _ = train_epochs(params, tx.init(params), jax.random.key(7))
  after = accuracy(params)
  assert after > 0.9 and after > before + 0.3, (before, after)


@pytest.mark.parametrize('kwargs, field', [
    ({'filter_widths': (1, 7), 'num_filters': (2, 2)}, 'filter_widths'),
    ({'filter_widths': (1, 2), 'num_filters': (2,)}, 'num_filters'),
    ({'filter_widths': (2, 2), 'num_filters': (2, 2)}, 'repeats'),
    ({'dropout_rate': 1.0}, 'dropout_rate'),
    ({'dtype': 'float16'}, 'dtype'),
])
def test_bad_config(kwargs, field):
  with pytest.raises(ValueError, match=field):
    disc.DiscriminatorConfig(**{**_CFG.__dict__, **kwargs})
