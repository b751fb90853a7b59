"""The optimizer every recipe builds from its config: Adam(W) with an optional
linear warmup and cosine decay, after global-norm clipping."""

import dataclasses
from typing import ClassVar

import ml_collections
import optax

from jaxrlgen import schema

SCHEDULES = ('constant', 'cosine')


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
  """An optimizer section of an experiment config (`config.rl.optimizer`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'warmup_steps': schema.Means(zero='no warmup'),
      'max_grad_norm': schema.Means(zero='no clipping'),
      'weight_decay': schema.Means(zero='plain Adam'),
      'b1': schema.Means(zero='no momentum (RMSProp-like)')}

  learning_rate: float = 1e-3  # Peak learning rate.
  schedule: str = 'constant'  # constant | cosine (after the warmup, if any).
  warmup_steps: int = 0  # Linear warmup from 0; 0: none.
  max_grad_norm: float = 1.0  # Global-norm gradient clipping; 0: off.
  weight_decay: float = 0.0  # AdamW decoupled weight decay.
  b1: float = 0.9  # Adam beta1.
  b2: float = 0.99  # Adam beta2.

  def __post_init__(self):
    schema.positive(self, 'learning_rate')
    schema.one_of(self, 'schedule', SCHEDULES)
    schema.non_negative(self, 'warmup_steps', 'max_grad_norm', 'weight_decay')
    # Adam divides by 1 - b^t: b = 1 is a division by zero; b2 = 0 is sign
    # descent, not Adam.
    if not 0 <= self.b1 < 1:
      raise schema.FieldError('b1', f'={self.b1} must be in [0, 1).')
    if not 0 < self.b2 < 1:
      raise schema.FieldError('b2', f'={self.b2} must be in (0, 1).')


def config(learning_rate: float, schedule: str = 'constant',
           warmup_steps: int = 0,
           max_grad_norm: float = 1.0) -> ml_collections.ConfigDict:
  """An optimizer section of an experiment config (what `make` reads)."""
  return schema.to_config(OptimizerConfig(
      learning_rate=learning_rate, schedule=schedule,
      warmup_steps=warmup_steps, max_grad_norm=max_grad_norm))


def make(cfg: OptimizerConfig | ml_collections.ConfigDict, total_steps: int,
         path: str = 'optimizer') -> optax.GradientTransformation:
  """The optimizer of a section for a run of `total_steps`.

  `cfg` is an OptimizerConfig, or a config section parsed into one (errors
  name `path`, e.g. 'config.rl.optimizer').
  """
  cfg = schema.parse(OptimizerConfig, cfg, path)
  warmup = cfg.warmup_steps
  if cfg.schedule == 'cosine':
    # A run shorter than its warmup (a shortened test run) still decays.
    lr = optax.warmup_cosine_decay_schedule(
        0.0, cfg.learning_rate, warmup, max(total_steps, warmup + 1))
  elif warmup:
    lr = optax.linear_schedule(0.0, cfg.learning_rate, warmup)
  else:
    lr = cfg.learning_rate
  parts = []
  if cfg.max_grad_norm:
    parts.append(optax.clip_by_global_norm(cfg.max_grad_norm))
  parts.append(optax.adamw(lr, b1=cfg.b1, b2=cfg.b2,
                           weight_decay=cfg.weight_decay))
  return optax.chain(*parts)
