"""Tests for jaxrlgen/models/classifier.py: shapes, the loss against NumPy and
the config's checks. (Learning the digits, with the DDPO recipe's training step:
tests/experiments/test_ddpo_digits.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.models import classifier

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


def test_logits_shape():
  params = classifier.init_params(CFG, jax.random.key(0))
  logits = classifier.Classifier(CFG).apply({'params': params},
                                            jnp.zeros((2, 8, 8, 1)))
  assert logits.shape == (2, 10)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='classifier.dropout'):
    classifier.ClassifierConfig(dropout=1.0)
  with pytest.raises(ValueError, match='classifier.features'):
    classifier.ClassifierConfig(features=())
