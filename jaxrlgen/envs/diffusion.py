"""Diffusion sampling as a denoising MDP (Black et al. 2023, DDPO; Fan et al.
2023, DPOK).

State: the noisy image x_t, the step index and the condition. Action: the
next, less noisy image x_{t-1}, drawn from the Gaussian the sampler defines,

  pi(x_{t-1} | x_t, y) = N(mu_theta(x_t, t, y), sigma_t^2 I),

so every step has an exact log-probability. Two samplers share the
x0-prediction x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t):

  ddim: Song et al. 2021, "Denoising Diffusion Implicit Models", eq. 12 with
        sigma_t = eta sqrt((1 - abar_s) / (1 - abar_t)) sqrt(1 - abar_t / abar_s)
        and mu = sqrt(abar_s) x0 + sqrt(1 - abar_s - sigma_t^2) eps; eta > 0
        (eta = 0 is deterministic and has no density).
  ddpm: ancestral sampling from the posterior q(x_s | x_t, x0) of Ho et al.
        2020 (eq. 7), variance (1 - abar_s) / (1 - abar_t) (1 - abar_t / abar_s);
        over a strided sequence of timesteps when num_steps < num_timesteps.
        (Algebraically it is DDIM with eta = 1, which the tests check.)

Here t -> s are consecutive entries of `levels(schedule, K)`: K + 1 training
timesteps from T - 1 down to 0. The last step lands on timestep 0, not on a
noise-free "abar = 1", so that its sigma stays positive and its log-prob
finite (the role of diffusers' `set_alpha_to_one=False` in DDPO).

Classifier-free guidance (Ho & Salimans 2022): with `guidance_scale` w != 1
the policy's noise estimate is eps_u + w (eps_c - eps_u); it is part of the
policy, so sampling and `evaluate` both apply it.

With `clip_denoised` the x0-prediction is clipped to the data range (better
samples from a small pixel-space model); pixels where it clips pass no
gradient through that step.

A rollout stores, per step, the state x_t it started from (the starting
noise is `actions.x_t[:, 0]`), the action x_{t-1} and the step index, so any
subset of steps is itself a valid rollout (`take_steps`: DDPO's training on a
random subset of timesteps), and `evaluate` recomputes every step's
log-prob in one pass vmapped over steps. The context is the condition only.
"""

import dataclasses
import math
from typing import Any

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout
from jaxrlgen.policies.denoiser import DenoiserPolicy

Params = Any
BETA_SCHEDULES = ('linear', 'cosine')
SAMPLERS = ('ddim', 'ddpm')


@dataclasses.dataclass(frozen=True)
class NoiseSchedule:
  """The forward process q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I).

  Attributes:
    num_timesteps: T, training timesteps 0..T-1.
    beta_schedule: 'linear' (Ho et al. 2020: beta from beta_start to
      beta_end) or 'cosine' (Nichol & Dhariwal 2021, betas capped at 0.999).
    beta_start, beta_end: the linear schedule's ends.
  """

  num_timesteps: int = 1000
  beta_schedule: str = 'linear'
  beta_start: float = 1e-4
  beta_end: float = 0.02

  def __post_init__(self):
    if self.num_timesteps < 2:
      raise ValueError(f'env.num_timesteps={self.num_timesteps} must be >= 2.')
    if self.beta_schedule not in BETA_SCHEDULES:
      raise ValueError(f'env.beta_schedule={self.beta_schedule!r}; known: '
                       f'{BETA_SCHEDULES}.')
    if not 0 < self.beta_start <= self.beta_end < 1:
      raise ValueError(
          f'env.beta_start={self.beta_start}, env.beta_end={self.beta_end}: '
          'need 0 < beta_start <= beta_end < 1.')

  def alphas_cumprod(self) -> np.ndarray:
    """f64[T] abar_t = prod_{i <= t} (1 - beta_i)."""
    n = self.num_timesteps
    if self.beta_schedule == 'linear':
      betas = np.linspace(self.beta_start, self.beta_end, n, dtype=np.float64)
    else:
      f = lambda t: np.cos((t / n + 0.008) / 1.008 * np.pi / 2) ** 2
      steps = np.arange(n + 1, dtype=np.float64)
      betas = np.minimum(1.0 - f(steps[1:]) / f(steps[:-1]), 0.999)
    return np.cumprod(1.0 - betas)


@dataclasses.dataclass(frozen=True)
class Sampler:
  """How an image is denoised: a frozen, hashable strategy.

  Attributes:
    kind: 'ddim' or 'ddpm' (see the module docstring).
    num_steps: K denoising steps (the MDP's horizon).
    eta: DDIM's noise scale, in (0, 1] (ignored by 'ddpm').
    guidance_scale: classifier-free guidance weight w; 1: the conditional
      model alone (one forward pass per step instead of two).
    clip_denoised: clip the x0-prediction to the data range [-1, 1].
  """

  kind: str = 'ddim'
  num_steps: int = 20
  eta: float = 1.0
  guidance_scale: float = 1.0
  clip_denoised: bool = True

  def __post_init__(self):
    if self.kind not in SAMPLERS:
      raise ValueError(f'env.sampler={self.kind!r}; known: {SAMPLERS}.')
    if self.num_steps < 1:
      raise ValueError(f'env.num_steps={self.num_steps} must be >= 1.')
    if self.kind == 'ddim' and not 0 < self.eta <= 1:
      raise ValueError(
          f'env.eta={self.eta} must be in (0, 1]: with eta = 0 DDIM is '
          'deterministic and its steps have no log-probability to train.')
    if self.guidance_scale < 0:
      raise ValueError(f'env.guidance_scale={self.guidance_scale} must be '
                       '>= 0.')


@flax.struct.dataclass
class DenoisingAction:
  """One denoising step per sample; leaves [B, T, ...].

  Attributes:
    x_t: f32[B, T, H, W, C] the image the step started from (the state).
    x_tm1: f32[B, T, H, W, C] the image it produced (the action).
    step: i32[B, T] index k of the step in the sampler's schedule.
  """

  x_t: jax.Array
  x_tm1: jax.Array
  step: jax.Array


@flax.struct.dataclass
class StepGaussian:
  """pi(x_{t-1} | x_t) of each step: N(mean, std^2 I).

  Attributes:
    mean: f32[B, T, H, W, C].
    std: f32[B, T].
  """

  mean: jax.Array
  std: jax.Array

  def log_prob(self, x: jax.Array) -> jax.Array:
    """f32[B, T] log-density of x: [B, T, H, W, C]."""
    return gaussian_log_prob(x, self.mean, self.std)

  def entropy(self) -> jax.Array:
    """f32[B, T] differential entropy (depends on the schedule only)."""
    dim = math.prod(self.mean.shape[2:])
    return dim * (0.5 * math.log(2 * math.pi * math.e) + jnp.log(self.std))

  def kl(self, other_mean: jax.Array) -> jax.Array:
    """f32[B, T] KL(N(mean, std^2) || N(other_mean, std^2)), equal variances."""
    sq = jnp.sum(jnp.square(self.mean - other_mean),
                 axis=tuple(range(2, self.mean.ndim)))
    return sq / (2.0 * jnp.square(self.std))


def gaussian_log_prob(x: jax.Array, mean: jax.Array,
                      std: jax.Array) -> jax.Array:
  """log N(x; mean, std^2 I) summed over the image axes, in float32.

  Args:
    x, mean: f32[B, ..., H, W, C] with the same shape.
    std: f32 with the leading (non-image) axes of x, e.g. [B] or [B, T].
  Returns:
    f32 of std's shape.
  """
  chex.assert_equal_shape([x, mean])
  image_axes = tuple(range(std.ndim, x.ndim))
  dim = math.prod(x.shape[std.ndim:])
  std = std.astype(jnp.float32)
  z = (x.astype(jnp.float32) - mean.astype(jnp.float32)) / jnp.expand_dims(
      std, image_axes)
  return (-0.5 * jnp.sum(jnp.square(z), axis=image_axes)
          - dim * (jnp.log(std) + 0.5 * math.log(2 * math.pi)))


def levels(schedule: NoiseSchedule, num_steps: int) -> np.ndarray:
  """i64[K + 1] training timesteps visited, from T - 1 down to 0."""
  if num_steps >= schedule.num_timesteps:
    raise ValueError(
        f'env.num_steps={num_steps} must be < env.num_timesteps='
        f'{schedule.num_timesteps} (K steps visit K + 1 distinct timesteps).')
  return np.round(np.linspace(schedule.num_timesteps - 1, 0,
                              num_steps + 1)).astype(np.int64)


@dataclasses.dataclass(frozen=True)
class DiffusionEnv:
  """Static description of the denoising environment (hashable).

  Attributes:
    policy: the denoiser eps_theta(x_t, t, label) (`policies.DenoiserPolicy`).
    schedule: the forward process.
    sampler: the reverse process the policy samples from.
    num_samples: G, samples per condition.
  """

  policy: DenoiserPolicy
  schedule: NoiseSchedule = NoiseSchedule()
  sampler: Sampler = Sampler()
  num_samples: int = 1

  def bind(self, frozen) -> 'DiffusionEnv':
    """This environment with its policy's frozen base bound (adapters)."""
    return dataclasses.replace(self, policy=self.policy.bind(frozen))

  def __post_init__(self):
    levels(self.schedule, self.sampler.num_steps)  # Fails early if too many.
    if self.num_samples < 1:
      raise ValueError(f'num_samples={self.num_samples} must be >= 1.')

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.policy.image_shape

  @property
  def num_steps(self) -> int:
    return self.sampler.num_steps

  def _coefficients(self, step: jax.Array):
    """abar at the step's start t and end s, and sigma: each f32[step.shape]."""
    abar = self.schedule.alphas_cumprod()
    lv = levels(self.schedule, self.num_steps)
    t, s = lv[:-1], lv[1:]
    abar_t, abar_s = abar[t], abar[s]
    if self.sampler.kind == 'ddim':
      var = (self.sampler.eta ** 2 * (1 - abar_s) / (1 - abar_t)
             * (1 - abar_t / abar_s))
    else:
      var = (1 - abar_s) / (1 - abar_t) * (1 - abar_t / abar_s)
    # Tables in float64 on the host, gathered per step in float32.
    table = lambda a: jnp.asarray(a, jnp.float32)[step]
    return (jnp.asarray(t, jnp.int32)[step], table(abar_t), table(abar_s),
            table(np.sqrt(var)))

  def eps(self, params: Params, x_t: jax.Array, t: jax.Array,
          label: jax.Array) -> jax.Array:
    """The policy's noise estimate, with classifier-free guidance if set.

    Args: x_t f32[B, H, W, C], t i32[B], label i32[B].
    Returns: f32[B, H, W, C].
    """
    apply = lambda x, tt, y: self.policy.eps(params, x, tt, y)
    w = self.sampler.guidance_scale
    if w == 1.0:
      return apply(x_t, t, label)
    null = jnp.full_like(label, self.policy.null_label)
    # One forward pass over [conditional; unconditional].
    both = apply(jnp.concatenate([x_t, x_t]), jnp.concatenate([t, t]),
                 jnp.concatenate([label, null]))
    eps_c, eps_u = jnp.split(both, 2)
    return eps_u + w * (eps_c - eps_u)

  def step_gaussian(self, params: Params, x_t: jax.Array, step: jax.Array,
                    label: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Mean f32[B, H, W, C] and std f32[B] of pi(x_{t-1} | x_t) at step k.

    Args:
      params: denoiser parameters.
      x_t: f32[B, H, W, C] images at the step's start.
      step: i32[B] step indices k in [0, K).
      label: i32[B] conditions.
    """
    chex.assert_rank([x_t, step, label], [4, 1, 1])
    t, abar_t, abar_s, sigma = self._coefficients(step)
    eps = self.eps(params, x_t, t, label)
    bc = lambda a: a[:, None, None, None]
    x0 = (x_t - jnp.sqrt(1 - bc(abar_t)) * eps) / jnp.sqrt(bc(abar_t))
    if self.sampler.clip_denoised:
      x0 = jnp.clip(x0, -1.0, 1.0)
      # The noise consistent with the clipped x0, so both samplers stay the
      # posterior mean given x0.
      eps = (x_t - jnp.sqrt(bc(abar_t)) * x0) / jnp.sqrt(1 - bc(abar_t))
    if self.sampler.kind == 'ddim':
      direction = jnp.sqrt(jnp.maximum(1 - abar_s - sigma ** 2, 0.0))
      mean = jnp.sqrt(bc(abar_s)) * x0 + bc(direction) * eps
    else:
      alpha = abar_t / abar_s
      coef_x0 = jnp.sqrt(abar_s) * (1 - alpha) / (1 - abar_t)
      coef_xt = jnp.sqrt(alpha) * (1 - abar_s) / (1 - abar_t)
      mean = bc(coef_x0) * x0 + bc(coef_xt) * x_t
    return mean, sigma

  def conditions(self, prompt: jax.Array, prompt_mask: jax.Array) -> jax.Array:
    """i32[N * G] labels: each prompt's class repeated G times (no class where
    `prompt_mask` is false)."""
    chex.assert_rank([prompt, prompt_mask], 1)
    chex.assert_equal_shape([prompt, prompt_mask])
    label = jnp.where(prompt_mask, prompt, self.policy.null_label)
    return jnp.repeat(label.astype(jnp.int32), self.num_samples)

  def rollout(self, params: Params, batch, key: jax.Array) -> Rollout:
    """Denoises G samples of each of N conditions from pure noise.

    Args:
      params: denoiser parameters.
      batch: per-condition data with `prompt` i32[N] (each condition's
        class) and `prompt_mask` bool[N] (false: unconditional, the null
        label); other fields are not read.
      key: PRNG key.
    Returns:
      A Rollout of B = N * G samples and T = K steps: `context = {'label':
      i32[B]}`, `actions` a DenoisingAction, `logp` f32[B, K], `mask` all
      true. The final images are `final_images(rollout)`.
    """
    label = self.conditions(batch['prompt'], batch['prompt_mask'])
    b = label.shape[0]
    noise_key, scan_key = jax.random.split(key)
    x_start = jax.random.normal(noise_key, (b, *self.image_shape), jnp.float32)

    def step(state, key):
      x_t, k = state
      ks = jnp.full((b,), k, jnp.int32)
      mean, std = self.step_gaussian(params, x_t, ks, label)
      x_tm1 = mean + std[:, None, None, None] * jax.random.normal(
          key, x_t.shape, jnp.float32)
      # Scored like `evaluate` scores it (from x_tm1 and the mean, not from
      # the drawn noise), so a recomputation matches up to float rounding.
      logp = gaussian_log_prob(x_tm1, mean, std)
      action = DenoisingAction(x_t=x_t, x_tm1=x_tm1, step=ks)
      return (x_tm1, k + 1), (action, logp)

    _, (actions, logp) = rollout_lib.unroll(
        step, (x_start, jnp.zeros((), jnp.int32)), scan_key, self.num_steps)
    return Rollout(context={'label': label}, actions=actions, logp=logp,
                   mask=jnp.ones(logp.shape, jnp.bool_))

  def transitions(self, params: Params, rollout: Rollout) -> StepGaussian:
    """pi(. | x_t) of every stored step under `params`, vmapped over steps."""
    actions = rollout.actions
    chex.assert_rank([actions.x_t, actions.step], [5, 2])
    label = rollout.context['label']
    per_step = jax.vmap(self.step_gaussian, in_axes=(None, 1, 1, None),
                        out_axes=1)
    mean, std = per_step(params, actions.x_t, actions.step, label)
    return StepGaussian(mean=mean, std=std)

  def subsample_steps(self, rollout: Rollout, num_kept: int,
                      key: jax.Array) -> Rollout:
    """The rollout restricted to `num_kept` random distinct steps of each
    sample, in order (DDPO's training on a subset of timesteps)."""
    return take_steps(rollout, random_steps(key, rollout.batch_size,
                                            rollout.num_steps, num_kept))

  def evaluate(self, params: Params, rollout: Rollout, *,
               with_values: bool = False) -> PolicyOutputs:
    """Log-probs f32[B, T] and entropies of the stored steps under `params`."""
    if with_values:
      raise ValueError('The diffusion environment has no value function; '
                       'use an algorithm without a critic.')
    dist = self.transitions(params, rollout)
    return PolicyOutputs(logp=dist.log_prob(rollout.actions.x_tm1),
                         entropy=dist.entropy())

  def denoising_loss(self, params: Params, images: jax.Array,
                     labels: jax.Array, key: jax.Array, *,
                     label_dropout: float = 0.0):
    """DDPM's simple objective E ||eps - eps_theta(x_t, t, y)||^2 (Ho et al.
    2020, eq. 14), labels dropped to the null label with probability
    `label_dropout` so that the model also learns eps(x_t, t, {}).

    Args:
      params: denoiser parameters.
      images: f32[B, H, W, C] in [-1, 1].
      labels: i32[B].
      key: PRNG key (timesteps, noise, label dropout).
    Returns:
      (loss, {'loss'}).
    """
    chex.assert_rank([images, labels], [4, 1])
    chex.assert_equal_shape_prefix([images, labels], 1)
    b = images.shape[0]
    t_key, noise_key, drop_key = jax.random.split(key, 3)
    t = jax.random.randint(t_key, (b,), 0, self.schedule.num_timesteps)
    abar = jnp.asarray(self.schedule.alphas_cumprod(), jnp.float32)[t]
    abar = abar[:, None, None, None]
    noise = jax.random.normal(noise_key, images.shape, jnp.float32)
    x_t = jnp.sqrt(abar) * images + jnp.sqrt(1 - abar) * noise
    drop = jax.random.bernoulli(drop_key, label_dropout, (b,))
    labels = jnp.where(drop, self.policy.null_label, labels)
    eps = self.policy.eps(params, x_t, t, labels)
    loss = jnp.mean(jnp.square(eps - noise))
    return loss, {'loss': loss}


def final_images(rollout: Rollout) -> jax.Array:
  """f32[B, H, W, C] the sample each trajectory ended at."""
  return rollout.actions.x_tm1[:, -1]


def take_steps(rollout: Rollout, index: jax.Array) -> Rollout:
  """The rollout restricted to steps `index`: i32[B, K'] (per sample).

  Valid because every step carries its own state x_t: DDPO's training on a
  random subset of timesteps is this with a random `index`.
  """
  chex.assert_rank(index, 2)
  chex.assert_equal_shape_prefix([index, rollout.logp], 1)

  def take(x):
    idx = index.reshape(index.shape + (1,) * (x.ndim - 2))
    return jnp.take_along_axis(x, idx, axis=1)

  return rollout.replace(actions=jax.tree.map(take, rollout.actions),
                         logp=take(rollout.logp), mask=take(rollout.mask))


def random_steps(key: jax.Array, batch_size: int, num_steps: int,
                 num_kept: int) -> jax.Array:
  """i32[B, num_kept] distinct step indices per sample, ascending."""
  keys = jax.random.split(key, batch_size)
  draw = lambda k: jnp.sort(jax.random.permutation(k, num_steps)[:num_kept])
  return jax.vmap(draw)(keys).astype(jnp.int32)
