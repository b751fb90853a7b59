"""Tests for jaxrlgen/envs/diffusion.py: step densities against NumPy, sampled
log-probs = recomputed log-probs, step subsets, the DDPM objective."""

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.envs import diffusion
from jaxrlgen.models import unet
from jaxrlgen.policies import DenoiserPolicy


@dataclasses.dataclass(frozen=True)
class ToyConfig:
  """What the environment reads of a denoiser's config."""

  image_size: int = 8
  channels: int = 1
  num_classes: int = 10

  @property
  def null_label(self) -> int:
    return self.num_classes


class ToyDenoiser(nn.Module):
  """eps(x_t, t, y) from a small MLP applied to every pixel (its value, the
  image mean, the time and class embeddings): the environment and the
  algorithms do not care what the denoiser is, and this one compiles in a
  fraction of the U-Net's time (tests/train/test_ddpo.py runs the U-Net).
  Shared over pixels like a convolution, so a uniform change is one bias."""

  config: ToyConfig = ToyConfig()

  @nn.compact
  def __call__(self, x, t, label):
    emb = (nn.Embed(self.config.num_classes + 1, 16)(label)
           + nn.Dense(16)(unet.timestep_embedding(t, 16)))
    mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    features = jnp.concatenate(
        [x, jnp.broadcast_to(mean, x.shape),
         jnp.broadcast_to(emb[:, None, None], x.shape[:3] + (16,))], -1)
    h = nn.silu(nn.Dense(16)(features))
    return nn.Dense(x.shape[-1], kernel_init=nn.initializers.zeros)(h)


@functools.lru_cache
def _toy_init():
  x = jnp.zeros((1, 8, 8, 1))
  t = jnp.zeros((1,), jnp.int32)
  return jax.jit(lambda k: ToyDenoiser().init(k, x, t, t)['params'])


def toy_params(seed: int = 0):
  """Fresh toy parameters: eps = 0 (a zero output layer)."""
  return _toy_init()(jax.random.key(seed))


MODEL = ToyDenoiser()
SCHEDULE = diffusion.NoiseSchedule(num_timesteps=100)


def _params(seed=0):
  """A fresh model with every weight moved, so that eps is not 0."""
  rng = np.random.default_rng(seed)
  return jax.tree.map(
      lambda x: x + 0.1 * rng.normal(size=x.shape).astype(np.float32),
      toy_params(seed))


PARAMS = _params()


def _env(**sampler):
  sampler = {'num_steps': 6, 'eta': 0.7, **sampler}
  return diffusion.DiffusionEnv(DenoiserPolicy(MODEL), schedule=SCHEDULE,
                                sampler=diffusion.Sampler(**sampler),
                                num_samples=2)


def np_step(env, eps, x_t, step):
  """NumPy float64 DDIM / DDPM step from the model's eps: (mean, std)."""
  abar = SCHEDULE.alphas_cumprod()
  levels = np.round(np.linspace(SCHEDULE.num_timesteps - 1, 0,
                                env.num_steps + 1)).astype(int)
  a_t = abar[levels[step]][:, None, None, None]
  a_s = abar[levels[step + 1]][:, None, None, None]
  x0 = np.clip((x_t - np.sqrt(1 - a_t) * eps) / np.sqrt(a_t), -1, 1)
  eps = (x_t - np.sqrt(a_t) * x0) / np.sqrt(1 - a_t)
  if env.sampler.kind == 'ddim':
    var = env.sampler.eta ** 2 * (1 - a_s) / (1 - a_t) * (1 - a_t / a_s)
    mean = np.sqrt(a_s) * x0 + np.sqrt(1 - a_s - var) * eps
  else:  # Ho et al. 2020, eq. 7.
    beta = 1 - a_t / a_s
    var = (1 - a_s) / (1 - a_t) * beta
    mean = (np.sqrt(a_s) * beta / (1 - a_t) * x0
            + np.sqrt(1 - beta) * (1 - a_s) / (1 - a_t) * x_t)
  return mean, np.sqrt(var[:, 0, 0, 0])


def np_log_density(x, mean, std):
  """log N(x; mean, std^2 I) of each row, from the density's definition."""
  d = x[0].size
  sq = np.sum(np.square(x - mean).reshape(len(x), -1), axis=1)
  return -sq / (2 * std ** 2) - d * np.log(std) - 0.5 * d * np.log(2 * np.pi)


@pytest.mark.parametrize('kind, guidance', [('ddpm', 1.0), ('ddim', 3.0)])
def test_step_density_matches_numpy(kind, guidance):
  env = _env(kind=kind, guidance_scale=guidance)
  key = jax.random.key(3)
  x_t = np.asarray(jax.random.normal(key, (4, 8, 8, 1)), np.float64)
  step = np.array([0, 2, 4, 5])
  label = np.array([3, 10, 0, 9])
  x_prev = x_t * 0.9 + 0.05

  @jax.jit
  def run(x_t, x_prev):
    mean, std = env.step_gaussian(PARAMS, x_t, jnp.asarray(step),
                                  jnp.asarray(label))
    t = jnp.asarray(diffusion.levels(SCHEDULE, env.num_steps)[step])
    apply = lambda y: MODEL.apply({'params': PARAMS}, x_t, t, y)
    return (mean, std, diffusion.gaussian_log_prob(x_prev, mean, std),
            apply(jnp.asarray(label)), apply(jnp.full((4,), 10)))

  mean, std, logp, eps_c, eps_u = map(np.asarray, run(
      jnp.asarray(x_t, jnp.float32), jnp.asarray(x_prev, jnp.float32)))
  eps = eps_u + guidance * (eps_c - eps_u)
  want_mean, want_std = np_step(env, eps.astype(np.float64), x_t, step)
  np.testing.assert_allclose(std, want_std, rtol=1e-5)
  np.testing.assert_allclose(mean, want_mean, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(
      logp, np_log_density(x_prev, want_mean, want_std), rtol=1e-4)
  # The last step ends at timestep 0 (abar < 1), so its sigma stays positive.
  assert np.all(std > 0)


def test_ddpm_is_ddim_with_eta_one():
  ddim, ddpm = _env(kind='ddim', eta=1.0), _env(kind='ddpm', eta=0.3)
  x_t = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
  step, label = jnp.array([0, 3, 5]), jnp.array([1, 2, 10])
  a, b = jax.jit(lambda x: (ddim.step_gaussian(PARAMS, x, step, label),
                            ddpm.step_gaussian(PARAMS, x, step, label)))(x_t)
  # Equal up to float32 rounding of the two formulas.
  np.testing.assert_allclose(a[0], b[0], rtol=1e-3, atol=5e-4)
  np.testing.assert_allclose(a[1], b[1], rtol=1e-5)


@pytest.fixture(scope='module')
def sampled():
  """(env, rollout, its evaluation, its step Gaussians) under PARAMS, with
  guidance (two model passes per step) and an unconditional prompt."""
  env = _env(guidance_scale=2.0)
  batch = {'prompt': jnp.array([4, 7, 1]),
           'prompt_mask': jnp.array([True, True, False])}

  @jax.jit
  def run(key):
    rollout = env.rollout(PARAMS, batch, key)
    dist = env.transitions(PARAMS, rollout)
    return rollout, env.evaluate(PARAMS, rollout), dist

  return (env, *run(jax.random.key(5)))


def test_sampled_logp_equals_recomputed_logp(sampled):
  env, rollout, out, dist = sampled
  b, k = 6, env.num_steps
  assert rollout.logp.shape == (b, k) and rollout.mask.all()
  np.testing.assert_array_equal(rollout.context['label'],
                                [4, 4, 7, 7, 10, 10])
  assert rollout.actions.x_tm1.shape == (b, k, 8, 8, 1)
  np.testing.assert_array_equal(rollout.actions.step,
                                np.tile(np.arange(k), (b, 1)))
  # Each step starts where the previous one ended.
  np.testing.assert_array_equal(rollout.actions.x_t[:, 1:],
                                rollout.actions.x_tm1[:, :-1])
  np.testing.assert_allclose(out.logp, rollout.logp, rtol=1e-5, atol=1e-3)
  # The drawn noise is standard normal.
  z = (rollout.actions.x_tm1 - dist.mean) / dist.std[..., None, None, None]
  assert abs(float(jnp.mean(z))) < 0.05 and abs(float(jnp.std(z)) - 1) < 0.05
  # Entropy of N(mu, sigma^2 I): d/2 log(2 pi e sigma^2).
  np.testing.assert_allclose(
      out.entropy, 64 * (0.5 * np.log(2 * np.pi * np.e)
                         + np.log(np.asarray(dist.std))), rtol=1e-5)
  images = diffusion.final_images(rollout)
  np.testing.assert_array_equal(images, rollout.actions.x_tm1[:, -1])
  assert float(jnp.max(jnp.abs(images))) < 1.5


def test_a_subset_of_steps_is_a_rollout(sampled):
  env, rollout, *_ = sampled
  index = diffusion.random_steps(jax.random.key(7), 6, env.num_steps, 3)
  assert index.shape == (6, 3)
  assert all(len(set(row)) == 3 and list(row) == sorted(row)
             for row in np.asarray(index).tolist())
  sub = diffusion.take_steps(rollout, index)
  idx = np.asarray(index)
  np.testing.assert_array_equal(
      sub.actions.x_t, np.take_along_axis(
          np.asarray(rollout.actions.x_t), idx[:, :, None, None, None], 1))
  np.testing.assert_array_equal(sub.actions.step, idx)
  np.testing.assert_array_equal(
      sub.logp, np.take_along_axis(np.asarray(rollout.logp), idx, 1))
  out = jax.jit(env.evaluate)(PARAMS, sub)
  np.testing.assert_allclose(out.logp, sub.logp, rtol=1e-5, atol=1e-3)


def test_denoising_loss_is_the_ddpm_objective():
  env = _env()
  images = jax.random.uniform(jax.random.key(8), (5, 8, 8, 1), minval=-1,
                              maxval=1)
  labels = jnp.array([0, 1, 2, 3, 4])
  key = jax.random.key(9)

  @jax.jit
  def run():
    loss = env.denoising_loss(PARAMS, images, labels, key)[0]
    dropped = env.denoising_loss(PARAMS, images, labels, key,
                                 label_dropout=1.0)[0]
    # The same draws, by hand: timesteps, noise, then the noisy images.
    t_key, noise_key, _ = jax.random.split(key, 3)
    t = jax.random.randint(t_key, (5,), 0, SCHEDULE.num_timesteps)
    noise = jax.random.normal(noise_key, images.shape)
    abar = jnp.asarray(SCHEDULE.alphas_cumprod(), jnp.float32)[t]
    x_t = (jnp.sqrt(abar)[:, None, None, None] * images
           + jnp.sqrt(1 - abar)[:, None, None, None] * noise)
    eps = lambda y: MODEL.apply({'params': PARAMS}, x_t, t, y)
    return (loss, dropped, jnp.mean((eps(labels) - noise) ** 2),
            jnp.mean((eps(jnp.full((5,), 10)) - noise) ** 2))

  loss, dropped, want, want_dropped = run()
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_allclose(dropped, want_dropped, rtol=1e-5)


def test_noise_schedules():
  linear = diffusion.NoiseSchedule(num_timesteps=10, beta_start=0.1,
                                   beta_end=0.2).alphas_cumprod()
  np.testing.assert_allclose(linear, np.cumprod(1 - np.linspace(0.1, 0.2, 10)))
  cosine = diffusion.NoiseSchedule(num_timesteps=50,
                                   beta_schedule='cosine').alphas_cumprod()
  assert np.all(np.diff(cosine) < 0) and 0 < cosine[-1] < 1e-2
  np.testing.assert_array_equal(diffusion.levels(SCHEDULE, 4),
                                [99, 74, 50, 25, 0])


@pytest.mark.parametrize('sampler, schedule, message', [
    (dict(eta=0.0), {}, 'env.eta'),
    (dict(num_steps=100), {}, 'env.num_steps'),
    (dict(kind='euler'), {}, 'env.sampler'),
    ({}, dict(beta_schedule='sqrt'), 'env.beta_schedule'),
    ({}, dict(beta_start=0.1, beta_end=0.01), 'env.beta_start'),
])
def test_bad_settings_name_the_field(sampler, schedule, message):
  with pytest.raises(ValueError, match=message):
    dataclasses.replace(
        _env(), sampler=diffusion.Sampler(**sampler),
        schedule=dataclasses.replace(SCHEDULE, **schedule))


def test_no_value_function():
  with pytest.raises(ValueError, match='no value function'):
    _env().evaluate(PARAMS, None, with_values=True)
