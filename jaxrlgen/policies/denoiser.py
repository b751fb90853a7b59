"""A conditional denoiser eps_theta(x_t, t, y) as a policy.

What the denoising environment calls on its model: the noise estimate, the
null label of classifier-free guidance, and the image shape.
"""

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from jaxrlgen.models import unet as unet_lib
from jaxrlgen.policies import lora as lora_lib

Params = Any


@dataclasses.dataclass(frozen=True)
class DenoiserPolicy(lora_lib.AdaptablePolicy):
  """A U-Net noise predictor (hashable: a static jit argument).

  Attributes:
    model: the Flax module.
    adapters: low-rank adapters on a frozen base (`lora.Adapters`; the
      methods' `params` are then the adapters, the base bound with `bind`),
      or None.
  """

  model: unet_lib.UNet
  adapters: lora_lib.Adapters | None = None

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

  def _example(self) -> tuple[jax.Array, ...]:
    one = jnp.zeros((1,), jnp.int32)
    return jnp.zeros((1, *self.image_shape), jnp.float32), one, one

  def eps(self, params: Params, x_t: jax.Array, t: jax.Array,
          label: jax.Array) -> jax.Array:
    """The noise estimate f32[B, H, W, C] of images x_t f32[B, H, W, C] at
    timesteps t i32[B] under labels i32[B]."""
    return self._apply(params, x_t, t, label)
