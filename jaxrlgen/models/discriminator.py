"""SeqGAN's CNN discriminator: is a token sequence real data or generated?

The text classifier of Kim 2014 ("Convolutional neural networks for sentence
classification") as SeqGAN uses it (Yu et al. 2017, section 4 and the
released code): token embeddings, a bank of 1-D convolutions with many
window widths (1..10, 15, 20) and filter counts, ReLU and max-over-time
pooling, one highway layer (Srivastava et al. 2015), dropout, and a linear
layer to two classes (0: generated, 1: real). L2 regularisation applies to
the output layer only, as in the released code.

Initialisation follows that code: embeddings U(-1, 1), convolution and output
kernels truncated N(0, 0.1^2) with biases 0.1, highway layers Glorot-uniform
with zero biases (the code's highway gate bias is 0, not the -2 of the
highway paper).

Convolutions are written as window gathers followed by one dot per width
("im2col"): XLA:CPU runs the backward pass of `lax.conv_general_dilated` an
order of magnitude slower than the equivalent dot, and this model is the
most expensive part of SeqGAN training.
"""

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxrlgen.models import classifier

# The paper's filter bank (released code: dis_filter_sizes, dis_num_filters).
PAPER_WIDTHS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 15, 20)
PAPER_FILTERS = (100, 200, 200, 200, 200, 100, 100, 100, 100, 100, 160, 160)
REAL, FAKE = 1, 0


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  vocab_size: int = 5000
  length: int = 20  # Tokens per sequence; every filter width must fit.
  embed_dim: int = 64
  filter_widths: tuple[int, ...] = PAPER_WIDTHS
  num_filters: tuple[int, ...] = PAPER_FILTERS
  dropout_rate: float = 0.25  # The code's keep probability is 0.75.
  dtype: str = 'float32'  # Compute dtype of embeddings, convolutions, highway.

  def __post_init__(self):
    if len(self.filter_widths) != len(self.num_filters):
      raise ValueError(
          f'discriminator.filter_widths has {len(self.filter_widths)} entries '
          f'but discriminator.num_filters has {len(self.num_filters)}; give '
          'one filter count per width.')
    if not self.filter_widths:
      raise ValueError('discriminator.filter_widths is empty.')
    too_wide = [w for w in self.filter_widths if not 1 <= w <= self.length]
    if too_wide:
      raise ValueError(
          f'discriminator.filter_widths {too_wide} do not fit sequences of '
          f'length {self.length}; use widths in [1, {self.length}].')
    if len(set(self.filter_widths)) != len(self.filter_widths):
      raise ValueError(f'discriminator.filter_widths={self.filter_widths} '
                       'repeats a width; give each width once with its total '
                       'filter count.')
    if min(self.num_filters) < 1:
      raise ValueError('discriminator.num_filters must all be positive.')
    if not 0 <= self.dropout_rate < 1:
      raise ValueError(f'discriminator.dropout_rate={self.dropout_rate} must '
                       'be in [0, 1).')
    if self.dtype not in ('float32', 'bfloat16'):
      raise ValueError(f'discriminator.dtype={self.dtype!r}; use float32 or '
                       'bfloat16.')

  @property
  def num_features(self) -> int:
    return sum(self.num_filters)


class Discriminator(nn.Module):
  """tokens i32[B, L] -> class logits f32[B, 2] (index 1: real)."""

  config: DiscriminatorConfig

  @nn.compact
  def __call__(self, tokens: jax.Array, *, deterministic: bool = True):
    cfg = self.config
    chex.assert_shape(tokens, (None, cfg.length))
    dtype = jnp.dtype(cfg.dtype)
    embedded = nn.Embed(cfg.vocab_size, cfg.embed_dim,
                        embedding_init=_symmetric_uniform(1.0),
                        name='embed')(tokens).astype(dtype)
    kernel_init = nn.initializers.truncated_normal(0.1)
    pooled = []
    for width, count in zip(cfg.filter_widths, cfg.num_filters):
      kernel = self.param(f'conv{width}_kernel', kernel_init,
                          (width, cfg.embed_dim, count))
      bias = self.param(f'conv{width}_bias', nn.initializers.constant(0.1),
                        (count,))
      positions = cfg.length - width + 1
      windows = jnp.stack([embedded[:, i:i + positions] for i in range(width)],
                          axis=2)  # [B, positions, width, E]
      out = jnp.einsum('bpwe,wen->bpn', windows, kernel.astype(dtype),
                       preferred_element_type=jnp.float32) + bias
      pooled.append(jnp.max(jax.nn.relu(out), axis=1))
    features = jnp.concatenate(pooled, axis=-1)  # f32[B, F]
    num = cfg.num_features
    # Transform and gate projections of the highway layer in one dot.
    both = nn.Dense(2 * num, dtype=dtype, name='highway',
                    kernel_init=nn.initializers.glorot_uniform(),
                    bias_init=nn.initializers.zeros)(features)
    both = both.astype(jnp.float32)
    transform = jax.nn.relu(both[:, :num])
    gate = jax.nn.sigmoid(both[:, num:])
    hidden = gate * transform + (1.0 - gate) * features
    hidden = nn.Dropout(cfg.dropout_rate)(hidden, deterministic=deterministic)
    return nn.Dense(2, kernel_init=kernel_init,
                    bias_init=nn.initializers.constant(0.1),
                    name='output')(hidden).astype(jnp.float32)


def _symmetric_uniform(scale: float):
  """U(-scale, scale) (jax's `uniform` initializer draws from [0, scale))."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)
  return init


def init_params(config: DiscriminatorConfig, key: jax.Array):
  """The discriminator's parameters (a dict)."""
  tokens = jnp.zeros((1, config.length), jnp.int32)
  # One compiled program instead of one per initializer call.
  init = jax.jit(lambda k: Discriminator(config).init(k, tokens))
  return init(key)['params']


def classifier_loss(model: Discriminator, params, tokens: jax.Array,
                    labels: jax.Array, key: jax.Array, *, l2_reg: float):
  """Cross-entropy with dropout, plus l2_reg * ||output layer||^2 / 2.

  Args:
    model: the discriminator.
    params: its parameters.
    tokens: i32[B, L] sequences.
    labels: i32[B], REAL (1) or FAKE (0).
    key: PRNG key of the dropout masks.
    l2_reg: weight of the L2 penalty on the output layer (kernel and bias).
  Returns:
    (loss, metrics `discriminator/loss`, `discriminator/accuracy`,
    `discriminator/cross_entropy`).
  """
  chex.assert_rank([tokens, labels], [2, 1])
  logits = model.apply({'params': params}, tokens, deterministic=False,
                       rngs={'dropout': key})
  cross_entropy, metrics = classifier.cross_entropy_loss(logits, labels)
  out = params['output']
  l2 = 0.5 * (jnp.sum(jnp.square(out['kernel']))
              + jnp.sum(jnp.square(out['bias'])))
  loss = cross_entropy + l2_reg * l2
  return loss, {'discriminator/loss': loss,
                'discriminator/cross_entropy': cross_entropy,
                'discriminator/accuracy': metrics['accuracy']}


def probability_real(model: Discriminator, params, tokens: jax.Array, *,
                     chunk: int = 1024) -> jax.Array:
  """f32[B] probability that each sequence is real (no dropout).

  Evaluated `chunk` sequences at a time (padded), so a large batch, such as
  all Monte-Carlo completions of a SeqGAN step, never materialises every
  layer's activations at once.
  """
  chex.assert_rank(tokens, 2)
  b = tokens.shape[0]
  chunk = min(chunk, b)
  num_chunks = -(-b // chunk)
  padded = jnp.pad(tokens, ((0, num_chunks * chunk - b), (0, 0)))

  def one(x):
    logits = model.apply({'params': params}, x)
    return jax.nn.softmax(logits, axis=-1)[:, REAL]

  probs = jax.lax.map(one, padded.reshape(num_chunks, chunk, -1))
  return probs.reshape(-1)[:b]
