"""Tests for jaxrlgen/rewards/image.py: pure rewards against NumPy, the host
compressibility rewards against Pillow, failures, the registry."""

import io

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from jaxrlgen.core.types import Rollout
from jaxrlgen.envs.diffusion import DenoisingAction
from jaxrlgen.models import classifier as classifier_lib
from jaxrlgen.rewards import image

B, K = 4, 3


def _rollout(seed=0, labels=(0, 3, 9, 10)):
  """A denoising rollout whose final images are random, one blank."""
  rng = np.random.default_rng(seed)
  x = rng.uniform(-1.2, 1.2, (B, K, 8, 8, 1)).astype(np.float32)
  x[1, -1] = -1.0  # A blank (all background) final image.
  return Rollout(
      context={'label': jnp.asarray(labels, jnp.int32)},
      actions=DenoisingAction(x_t=jnp.asarray(x), x_tm1=jnp.asarray(x),
                              step=jnp.tile(jnp.arange(K), (B, 1))),
      logp=jnp.zeros((B, K)), mask=jnp.ones((B, K), bool))


def _final(rollout):
  return np.asarray(rollout.actions.x_tm1[:, -1], np.float64)


def test_to_pixels():
  x = jnp.array([-2.0, -1.0, -0.97, -0.9, 0.0, 0.5, 1.0, 3.0])
  np.testing.assert_array_equal(image.to_pixels(x),
                                [0, 0, 4, 13, 128, 191, 255, 255])
  # 17 levels (the digits' 0..16): faint noise on the background vanishes.
  np.testing.assert_array_equal(image.to_pixels(x, levels=17),
                                [0, 0, 0, 16, 128, 191, 255, 255])


def test_brightness_and_contrast_against_numpy():
  rollout = _rollout()
  x = np.clip((_final(rollout) + 1) / 2, 0, 1).reshape(B, -1)
  np.testing.assert_allclose(jax.jit(image.brightness)(rollout, None),
                             x.mean(1), rtol=1e-6)
  np.testing.assert_allclose(jax.jit(image.contrast)(rollout, None),
                             x.std(1), rtol=1e-5)
  assert float(image.contrast(rollout, None)[1]) == 0.0


def test_classifier_log_prob_against_numpy():
  cfg = classifier_lib.ClassifierConfig(features=(4,), dropout=0.0)
  model = classifier_lib.Classifier(cfg)
  params = classifier_lib.init_params(cfg, jax.random.key(0))
  rollout = _rollout()
  reward = jax.jit(lambda r: image.classifier_log_prob(r, None, model=model,
                                                       params=params))
  logits = np.asarray(model.apply({'params': params},
                                  jnp.asarray(_final(rollout), jnp.float32)),
                      np.float64)
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  # Label 10 asks for no class: the most likely one is scored.
  want = [logp[0, 0], logp[1, 3], logp[2, 9], logp[3].max()]
  np.testing.assert_allclose(reward(rollout), want, rtol=1e-5)


def _pil_size(pixels, fmt, **kwargs):
  buffer = io.BytesIO()
  Image.fromarray(pixels[..., 0]).save(buffer, format=fmt, **kwargs)
  return len(buffer.getvalue())


@pytest.mark.parametrize('fmt', ['png', 'jpeg'])
def test_compressibility_rewards_are_encoded_sizes_inside_jit(fmt):
  rollout = _rollout()
  pixels = np.asarray(image.to_pixels(jnp.asarray(_final(rollout))))
  sizes = np.array([_pil_size(p, fmt.upper(), **(
      {'quality': 90} if fmt == 'jpeg' else {})) for p in pixels])
  assert sizes[1] == sizes.min()  # The blank image compresses best.
  compress = image.make({f'{fmt}_compressibility': 1.0}, jpeg_quality=90)
  incompress = image.make({f'{fmt}_incompressibility': 0.5}, jpeg_quality=90)
  assert compress.uses_host
  rewards, failed = jax.jit(compress.with_failures)(rollout, None)
  np.testing.assert_allclose(rewards, -sizes)
  assert not np.any(failed)
  np.testing.assert_allclose(jax.jit(incompress)(rollout, None), 0.5 * sizes)


def test_a_failed_encoding_gets_the_penalty_and_is_counted(monkeypatch):
  real = image.encoded_size

  def flaky(pixels, fmt, quality=95):
    if pixels[0, 0, 0] == 0:  # The blank image.
      raise OSError('encoder crashed')
    return real(pixels, fmt, quality)

  monkeypatch.setattr(image, 'encoded_size', flaky)
  reward = image.make({'png_compressibility': 1.0, 'brightness': 2.0},
                      host_penalty=-500.0)
  rollout = _rollout()
  rewards, failed = jax.jit(reward.with_failures)(rollout, None)
  np.testing.assert_array_equal(failed, [False, True, False, False])
  bright = np.asarray(image.brightness(rollout, None))
  np.testing.assert_allclose(rewards[1], -500.0 + 2 * bright[1], rtol=1e-6)


def test_weighted_sum_of_pure_rewards():
  rollout = _rollout()
  reward = image.make({'brightness': 2.0, 'contrast': -1.0})
  assert not reward.uses_host
  want = 2 * image.brightness(rollout, None) - image.contrast(rollout, None)
  np.testing.assert_allclose(jax.jit(reward)(rollout, None), want, rtol=1e-6)
  _, failed = reward.with_failures(rollout, None)
  assert not np.any(failed)


def test_registry_errors():
  with pytest.raises(ValueError, match='known:.*brightness'):
    image.make({'sharpness': 1.0})
  with pytest.raises(ValueError, match='config.reward.terms is empty'):
    image.make({})
  with pytest.raises(ValueError, match='classifier_params'):
    image.make({'classifier': 1.0})
  with pytest.raises(ValueError, match='format'):
    image.encoded_size(np.zeros((2, 2, 1), np.uint8), 'gif')
