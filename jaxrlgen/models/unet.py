"""A small class-conditional U-Net that predicts the noise of a noisy image.

The denoiser eps_theta(x_t, t, y) of DDPM (Ho et al. 2020, "Denoising
Diffusion Probabilistic Models"): a U-Net (Ronneberger et al. 2015) of
residual blocks with GroupNorm, conditioned on the timestep through a
sinusoidal embedding and an MLP, and on the class through a learned
embedding added to it (as in Dhariwal & Nichol 2021, "Diffusion Models Beat
GANs on Image Synthesis"). Label `num_classes` is the "no class" token of
classifier-free guidance (Ho & Salimans 2022): the model is trained with
labels randomly replaced by it, so one network gives both eps(x_t, t, y) and
eps(x_t, t, {}).

The output convolution starts at zero, so a fresh model predicts eps = 0.
Parameters are small and replicated (no logical axis names): a data-parallel
mesh shards the batch only.

Convolutions are computed as im2col (the 9 shifted copies of the padded
input, concatenated, times a [9 C, F] kernel) when `im2col` is set: XLA:CPU
runs the backward pass of its native convolution inside a `lax.scan` (the
minibatch loop of every RL update) some 20-60x slower than outside one,
while the matmul form stays fast there. On small images the extra memory is
negligible; on an accelerator set `im2col=False`.
"""

import dataclasses
import functools
import math

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyperparameters; frozen and hashable so it can be a static argument."""

  image_size: int = 8  # Side of the (square) images.
  channels: int = 1  # Image channels.
  features: tuple[int, ...] = (32, 64)  # Width of each resolution level.
  num_res_blocks: int = 1  # Residual blocks per level and direction.
  embed_dim: int = 64  # Width of the time and class embeddings.
  num_classes: int = 10  # Labels 0..num_classes-1; num_classes = no class.
  num_groups: int = 8  # GroupNorm groups (divides every width).
  dtype: str = 'float32'  # Compute dtype: 'float32' or 'bfloat16'.
  im2col: bool = True  # 3x3 convolutions as matmuls (fast on CPU in scans).

  def __post_init__(self):
    # A ConfigDict hands lists over; the frozen config must stay hashable.
    object.__setattr__(self, 'features', tuple(self.features))
    levels = len(self.features)
    if not levels:
      raise ValueError('model.features is empty; give one width per level.')
    if self.image_size % 2 ** (levels - 1):
      raise ValueError(
          f'model.image_size={self.image_size} must be divisible by '
          f'2**(len(model.features) - 1) = {2 ** (levels - 1)}: each level '
          'after the first halves the resolution.')
    for width in self.features + (self.embed_dim,):
      if width % self.num_groups:
        raise ValueError(
            f'model.num_groups={self.num_groups} must divide every width in '
            f'model.features={self.features} (GroupNorm).')
    if self.embed_dim % 2:
      raise ValueError(f'model.embed_dim={self.embed_dim} must be even '
                       '(sinusoidal embedding).')

  @property
  def null_label(self) -> int:
    """The label that means "no class" (classifier-free guidance)."""
    return self.num_classes


def timestep_embedding(t: jax.Array, dim: int,
                       max_period: float = 10_000.0) -> jax.Array:
  """f32[B, dim] sinusoidal embedding of timesteps t: [B] (Vaswani et al. 2017)."""
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32)
                  / half)
  angles = t.astype(jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=-1)


class Conv3x3(nn.Module):
  """A 3x3 'SAME' convolution, natively or as im2col + matmul (see above)."""

  features: int
  strides: int = 1
  im2col: bool = True
  dtype: jnp.dtype = jnp.float32
  kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    s = self.strides
    _, h, w, c = x.shape
    kernel = self.param('kernel', self.kernel_init, (3, 3, c, self.features))
    bias = self.param('bias', nn.initializers.zeros, (self.features,))
    kernel, bias = kernel.astype(self.dtype), bias.astype(self.dtype)
    x = x.astype(self.dtype)
    if not self.im2col:
      return jax.lax.conv_general_dilated(
          x, kernel, (s, s), 'SAME',
          dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias

    def same_padding(size):
      # XLA's 'SAME': ceil(size / s) outputs, the padding split low-first.
      out = -(-size // s)
      total = max((out - 1) * s + 3 - size, 0)
      return out, (total // 2, total - total // 2)

    (out_h, pad_h), (out_w, pad_w) = same_padding(h), same_padding(w)
    padded = jnp.pad(x, ((0, 0), pad_h, pad_w, (0, 0)))
    patches = jnp.stack(
        [padded[:, dy:dy + s * (out_h - 1) + 1:s,
                dx:dx + s * (out_w - 1) + 1:s]
         for dy in range(3) for dx in range(3)], axis=-2)
    patches = patches.reshape(patches.shape[:3] + (3, 3, c))
    # [B, H', W', 3, 3, C] . [3, 3, C, F]: one product, the kernel as it is
    # stored (adapters and quantization find their parameter in it).
    return jax.lax.dot_general(
        patches, kernel, (((3, 4, 5), (0, 1, 2)), ((), ()))) + bias


class ResBlock(nn.Module):
  """GroupNorm-SiLU-conv twice, the embedding added in between, a skip."""

  features: int
  num_groups: int
  dtype: jnp.dtype
  im2col: bool = True

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array) -> jax.Array:
    conv = lambda f, **kw: Conv3x3(f, im2col=self.im2col, dtype=self.dtype,
                                   **kw)
    norm = lambda: nn.GroupNorm(self.num_groups, dtype=self.dtype)
    h = conv(self.features)(nn.silu(norm()(x)))
    h = h + nn.Dense(self.features, dtype=self.dtype)(nn.silu(emb))[:, None,
                                                                     None]
    # Zero-initialised last conv: each block starts as the identity.
    h = conv(self.features, kernel_init=nn.initializers.zeros)(
        nn.silu(norm()(h)))
    if x.shape[-1] != self.features:
      x = nn.Dense(self.features, dtype=self.dtype)(x)
    return x + h


class UNet(nn.Module):
  """eps_theta(x_t, t, label): [B, H, W, C] -> [B, H, W, C]."""

  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, label: jax.Array
               ) -> jax.Array:
    """Predicts the noise in x.

    Args:
      x: f32[B, H, W, C] noisy images.
      t: [B] training timesteps (integers or floats).
      label: i32[B] classes; `config.null_label` for none.
    Returns:
      f32[B, H, W, C] predicted noise.
    """
    cfg = self.config
    chex.assert_rank([x, t, label], [4, 1, 1])
    chex.assert_equal_shape_prefix([x, t, label], 1)
    dtype = jnp.dtype(cfg.dtype)
    emb = timestep_embedding(t, cfg.embed_dim)
    emb = nn.Dense(cfg.embed_dim, dtype=dtype)(emb)
    emb = nn.Dense(cfg.embed_dim, dtype=dtype)(nn.silu(emb))
    emb = emb + nn.Embed(cfg.num_classes + 1, cfg.embed_dim)(label)
    block = lambda f: ResBlock(f, cfg.num_groups, dtype, cfg.im2col)
    conv = lambda f, **kw: Conv3x3(f, im2col=cfg.im2col, dtype=dtype, **kw)

    h = conv(cfg.features[0])(x.astype(dtype))
    skips = []
    for level, width in enumerate(cfg.features):
      for _ in range(cfg.num_res_blocks):
        h = block(width)(h, emb)
      skips.append(h)
      if level + 1 < len(cfg.features):
        h = conv(width, strides=2)(h)
    h = block(cfg.features[-1])(h, emb)
    for level in reversed(range(len(cfg.features))):
      h = jnp.concatenate([h, skips[level]], axis=-1)
      for _ in range(cfg.num_res_blocks):
        h = block(cfg.features[level])(h, emb)
      if level:
        b, height, width, c = h.shape
        h = jax.image.resize(h, (b, 2 * height, 2 * width, c), 'nearest')
        h = conv(cfg.features[level - 1])(h)
    h = nn.silu(nn.GroupNorm(cfg.num_groups, dtype=dtype)(h))
    out = conv(cfg.channels, kernel_init=nn.initializers.zeros)(h)
    return out.astype(jnp.float32)


@functools.lru_cache(maxsize=16)
def _init_fn(config: UNetConfig):
  size, c = config.image_size, config.channels
  init = lambda k: UNet(config).init(
      k, jnp.zeros((1, size, size, c)), jnp.zeros((1,), jnp.int32),
      jnp.zeros((1,), jnp.int32))['params']
  # Compiled once per config, unoptimised: the program runs once, and
  # compiling one random draw per parameter otherwise takes seconds on CPU.
  return jax.jit(init, compiler_options={'xla_backend_optimization_level': 0})


def init_params(config: UNetConfig, key: jax.Array):
  """Parameters of a fresh denoiser (a nested dict of arrays)."""
  # `im2col` changes the computation, not the parameters.
  return _init_fn(dataclasses.replace(config, im2col=False))(key)
