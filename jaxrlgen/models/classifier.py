"""A small CNN digit classifier: the judge of the classifier reward.

Two 3x3 convolutions per resolution, stride-2 downsampling, global average
pooling and a linear layer (LeCun et al. 1998 in spirit, with SiLU). Images
are f32[B, H, W, C] in [-1, 1]; the logits are f32[B, num_classes].
"""

import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  image_size: int = 8  # Side of the (square) images.
  channels: int = 1  # Image channels.
  features: tuple[int, ...] = (32, 64)  # Width of each resolution level.
  num_classes: int = 10  # Output classes.
  dropout: float = 0.1  # Dropout before the linear layer (training only).

  def __post_init__(self):
    object.__setattr__(self, 'features', tuple(self.features))
    if not self.features:
      raise ValueError('classifier.features is empty; give one width per '
                       'level.')
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f'classifier.dropout={self.dropout} must be in [0, 1).')


class Classifier(nn.Module):
  """images f32[B, H, W, C] -> logits f32[B, num_classes]."""

  config: ClassifierConfig

  @nn.compact
  def __call__(self, images: jax.Array, *, train: bool = False) -> jax.Array:
    cfg = self.config
    chex.assert_rank(images, 4)
    h = images
    for level, width in enumerate(cfg.features):
      if level:
        h = nn.Conv(width, (3, 3), strides=(2, 2))(h)
      h = nn.silu(nn.Conv(width, (3, 3))(h))
      h = nn.silu(nn.Conv(width, (3, 3))(h))
    h = jnp.mean(h, axis=(1, 2))
    h = nn.Dropout(cfg.dropout, deterministic=not train)(h)
    return nn.Dense(cfg.num_classes)(h).astype(jnp.float32)


@functools.lru_cache(maxsize=16)
def _init_fn(config: ClassifierConfig):
  shape = (1, config.image_size, config.image_size, config.channels)
  # Compiled once per config, unoptimised: it runs once.
  return jax.jit(lambda k: Classifier(config).init(k, jnp.zeros(shape))[
      'params'], compiler_options={'xla_backend_optimization_level': 0})


def init_params(config: ClassifierConfig, key: jax.Array):
  """Parameters of a fresh classifier."""
  return _init_fn(config)(key)


def cross_entropy_loss(logits: jax.Array, labels: jax.Array):
  """Mean cross-entropy and accuracy.

  Args:
    logits: f32[B, K].
    labels: i32[B].
  Returns:
    (loss, {'loss', 'accuracy'}).
  """
  chex.assert_rank([logits, labels], [2, 1])
  chex.assert_equal_shape_prefix([logits, labels], 1)
  loss = jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
      logits, labels))
  accuracy = jnp.mean(jnp.argmax(logits, -1) == labels)
  return loss, {'loss': loss, 'accuracy': accuracy}
