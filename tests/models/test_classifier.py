"""Tests for jaxrlgen/models/classifier.py: shapes, loss and log-probs against
NumPy, and learning the digits."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from sklearn import datasets

from jaxrlgen.core.types import TrainState
from jaxrlgen.models import classifier
from experiments.ddpo_digits import recipe as ddpo

CFG = classifier.ClassifierConfig(features=(8, 16), dropout=0.0)


def np_log_softmax(logits):
  z = logits - logits.max(-1, keepdims=True)
  return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_loss_and_accuracy_against_numpy():
  logits = np.array([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0], [1.0, 1.0, 0.0]],
                    np.float32)
  labels = np.array([0, 1, 1], np.int32)
  loss, metrics = classifier.cross_entropy_loss(jnp.asarray(logits),
                                                jnp.asarray(labels))
  logp = np_log_softmax(logits.astype(np.float64))
  np.testing.assert_allclose(loss, -logp[np.arange(3), labels].mean(),
                             rtol=1e-6)
  # Row 2 ties; argmax takes the first, class 0.
  np.testing.assert_allclose(metrics['accuracy'], 1 / 3)


def test_learns_the_digits():
  """200 steps on 600 digits classify 1,000 others (about 93%)."""
  digits = datasets.load_digits()
  images = (digits.images[..., None] / 8.0 - 1.0).astype(np.float32)
  labels = digits.target.astype(np.int32)
  model = classifier.Classifier(CFG)
  params = classifier.init_params(CFG, jax.random.key(0))
  assert model.apply({'params': params}, images[:2]).shape == (2, 10)
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params))
  step = jax.jit(functools.partial(ddpo.classifier_step, model=model, tx=tx,
                                   max_shift=1))
  rng = np.random.default_rng(0)
  for i in range(200):
    idx = rng.integers(0, 600, 64)
    state, _ = step(state, {'image': images[idx], 'label': labels[idx]},
                    jax.random.key(i))
  logits = jax.jit(model.apply)({'params': state.params}, images[600:1600])
  accuracy = np.mean(np.argmax(logits, -1) == labels[600:1600])
  assert accuracy > 0.85, accuracy


def test_shift_augmentation_translates_by_at_most_one_pixel():
  image = -np.ones((1, 5, 5, 1), np.float32)
  image[0, 2, 2, 0] = 1.0
  shifted = ddpo.shift_augment(jnp.tile(image, (64, 1, 1, 1)),
                               jax.random.key(0), 1)
  where = np.argwhere(np.asarray(shifted)[..., 0] == 1.0)
  assert len(where) == 64  # The bright pixel survives in every copy.
  offsets = {tuple(w) for w in (where[:, 1:] - 2).tolist()}
  assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='classifier.dropout'):
    classifier.ClassifierConfig(dropout=1.0)
  with pytest.raises(ValueError, match='classifier.features'):
    classifier.ClassifierConfig(features=())
