"""A conditional denoiser eps_theta(x_t, t, y) as a policy.

What the denoising environment calls on its model: the noise estimate, the
null label of classifier-free guidance, and the image shape.
"""

import dataclasses
from typing import Any

import jax

from jaxrlgen.models import unet as unet_lib

Params = Any


@dataclasses.dataclass(frozen=True)
class DenoiserPolicy:
  """A U-Net noise predictor (hashable: a static jit argument).

  Attributes:
    model: the Flax module.
  """

  model: unet_lib.UNet

  @property
  def config(self) -> unet_lib.UNetConfig:
    return self.model.config

  @property
  def image_shape(self) -> tuple[int, int, int]:
    cfg = self.model.config
    return (cfg.image_size, cfg.image_size, cfg.channels)

  @property
  def null_label(self) -> int:
    """The label of unconditional generation."""
    return self.model.config.null_label

  def init_params(self, key: jax.Array) -> Params:
    return unet_lib.init_params(self.model.config, key)

  def eps(self, params: Params, x_t: jax.Array, t: jax.Array,
          label: jax.Array) -> jax.Array:
    """The noise estimate f32[B, H, W, C] of images x_t f32[B, H, W, C] at
    timesteps t i32[B] under labels i32[B]."""
    return self.model.apply({'params': params}, x_t, t, label)
