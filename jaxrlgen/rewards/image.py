"""Rewards over denoising rollouts: `(rollout, batch) -> f32[B]`, and their
registry.

They read the final image of a `jaxrlgen.envs.diffusion` rollout (f32 in
[-1, 1], [B, H, W, C]) and its condition `rollout.context['label']`:

  classifier:          log p(requested class | image) under a small CNN
                       (pure JAX); for the unconditional label, the log-prob
                       of the most likely class.
  brightness:          mean pixel intensity in [0, 1].
  contrast:            standard deviation of the pixel intensities.
  png_compressibility, jpeg_compressibility:
                       minus the size in bytes of the image encoded as PNG /
                       JPEG (DDPO's compressibility, Black et al. 2023);
  png_incompressibility, jpeg_incompressibility:
                       plus that size.

The compressibility rewards run Pillow's encoder on the host, one image at
a time, through `jaxrlgen.rewards.host.host_reward` (a `jax.pure_callback`):
they work inside the jitted step, and an image whose encoding fails gets
`host_penalty` and is counted (their `with_failures`).

The factories are registered in the one registry of rewards
(`jaxrlgen.rewards.base.REWARDS`); `NAMES` are these, the rewards that read
images, and `make` builds the weighted sum `config.reward.terms` describes.
"""

import functools
import io
from typing import Any, Mapping

import chex
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from jaxrlgen.core import logprob
from jaxrlgen.core.types import Rollout
from jaxrlgen.envs import diffusion
from jaxrlgen.models import classifier as classifier_lib
from jaxrlgen.rewards import base
from jaxrlgen.rewards import host

FORMATS = ('png', 'jpeg')


def _unit(images: jax.Array) -> jax.Array:
  """Images in [-1, 1] as f32 intensities in [0, 1], clipped."""
  return jnp.clip((images.astype(jnp.float32) + 1.0) / 2.0, 0.0, 1.0)


def to_pixels(images: jax.Array, levels: int = 256) -> jax.Array:
  """u8[...] intensities 0..255 of images in [-1, 1], clipped and quantised to
  `levels` evenly spaced grey levels (256: plain 8-bit rounding)."""
  if not 2 <= levels <= 256:
    raise ValueError(f'config.reward.levels={levels} must be in [2, 256].')
  level = jnp.round(_unit(images) * (levels - 1))
  return jnp.round(level * (255.0 / (levels - 1))).astype(jnp.uint8)


def _intensities(rollout: Rollout) -> jax.Array:
  """f32[B, H*W*C] pixel intensities of the final images, in [0, 1]."""
  images = diffusion.final_images(rollout)
  chex.assert_rank(images, 4)
  return _unit(images).reshape(images.shape[0], -1)


def brightness(rollout: Rollout, batch) -> jax.Array:
  """f32[B] mean intensity of each final image, in [0, 1]."""
  del batch
  return jnp.mean(_intensities(rollout), axis=1)


def contrast(rollout: Rollout, batch) -> jax.Array:
  """f32[B] standard deviation of each final image's intensities."""
  del batch
  return jnp.std(_intensities(rollout), axis=1)


def classifier_log_prob(rollout: Rollout, batch, *,
                        model: classifier_lib.Classifier,
                        params) -> jax.Array:
  """f32[B] log p(label | final image) under the classifier `model(params)`.

  For the unconditional label (>= the classifier's class count) the reward is
  the log-prob of the classifier's most likely class: "looks like some digit".
  """
  del batch
  images = diffusion.final_images(rollout)
  label = rollout.context['label']
  chex.assert_rank([images, label], [4, 1])
  logits = model.apply({'params': params}, images)
  num_classes = logits.shape[-1]
  conditioned = label < num_classes
  wanted = jnp.where(conditioned, label, jnp.argmax(logits, axis=-1))
  return logprob.token_logprobs(logits, wanted.astype(jnp.int32))[0]


def encoded_size(pixels: np.ndarray, fmt: str, quality: int = 95) -> int:
  """Bytes of one u8[H, W, C] image (C = 1 or 3) encoded as PNG or JPEG."""
  if fmt not in FORMATS:
    raise ValueError(f'Unknown image format {fmt!r}; known: {FORMATS}.')
  pixels = np.asarray(pixels, np.uint8)
  image = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
  buffer = io.BytesIO()
  if fmt == 'jpeg':
    image.save(buffer, format='JPEG', quality=quality)
  else:
    image.save(buffer, format='PNG')
  return len(buffer.getvalue())


def _size_reward(sign: float, fmt: str, *, jpeg_quality: int = 95,
                 levels: int = 256, host_penalty: float = 0.0,
                 host_workers: int | None = None, **unused):
  """Host reward sign * encoded size in bytes: (rollout, batch) -> (f32, bool).

  The image is quantised to `levels` grey levels first: a sampler's last
  step leaves faint noise (sigma ~ 0.01) that 8-bit rounding keeps and that
  would otherwise dominate the size of a tiny image.
  """
  del unused

  def size(pixels):
    return sign * encoded_size(pixels, fmt, jpeg_quality)

  size.__name__ = f'{fmt}_size'
  batch_fn = host.host_reward(size, penalty=host_penalty,
                              max_workers=host_workers)

  def with_failures(rollout: Rollout, batch):
    del batch
    return batch_fn(to_pixels(diffusion.final_images(rollout), levels))

  def reward(rollout: Rollout, batch):
    return with_failures(rollout, batch)[0]

  reward.with_failures = with_failures
  reward.__name__ = f'{fmt}_size'
  return reward


def _classifier(*, classifier_model=None, classifier_params=None, **unused):
  del unused
  if classifier_model is None or classifier_params is None:
    raise ValueError('The classifier reward needs a trained classifier: pass '
                     'classifier_model= and classifier_params= to '
                     'rewards.image.make.')
  return functools.partial(classifier_log_prob, model=classifier_model,
                           params=classifier_params)


def _pure(fn):
  return lambda **unused: fn


FACTORIES = {
    'classifier': _classifier,
    'brightness': _pure(brightness),
    'contrast': _pure(contrast),
    'png_compressibility': functools.partial(_size_reward, -1.0, 'png'),
    'png_incompressibility': functools.partial(_size_reward, 1.0, 'png'),
    'jpeg_compressibility': functools.partial(_size_reward, -1.0, 'jpeg'),
    'jpeg_incompressibility': functools.partial(_size_reward, 1.0, 'jpeg'),
}
for _name, _factory in FACTORIES.items():
  base.REWARDS.register(_name, _factory)
NAMES = tuple(FACTORIES)  # The rewards that read images.


def check_terms(terms: Mapping[str, float]) -> None:
  """Fails, naming config.reward.terms, on no terms or a reward that does not
  read images."""
  base.check_terms(terms, NAMES)


def make(terms: Mapping[str, float], **options: Any) -> base.Weighted:
  """The weighted sum of the named image rewards.

  Args:
    terms: reward name -> weight (`config.reward.terms`).
    **options: what factories read: `classifier_model`, `classifier_params`
      (the classifier reward), `jpeg_quality`, `levels`, `host_penalty`,
      `host_workers` (the compressibility rewards).
  """
  return base.make(terms, NAMES, **options)
