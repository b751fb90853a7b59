"""The optimizer every recipe builds from its config: Adam(W) with an optional
linear warmup and cosine decay, after global-norm clipping."""

import ml_collections
import optax

SCHEDULES = ('constant', 'cosine')


def config(learning_rate: float, schedule: str = 'constant',
           warmup_steps: int = 0,
           max_grad_norm: float = 1.0) -> ml_collections.ConfigDict:
  """An optimizer section of an experiment config (what `make` reads)."""
  return ml_collections.ConfigDict(dict(
      learning_rate=learning_rate,  # Peak learning rate.
      schedule=schedule,  # constant | cosine (after the warmup, if any).
      warmup_steps=warmup_steps,  # Linear warmup from 0; 0: none.
      max_grad_norm=max_grad_norm,  # Global-norm gradient clipping; 0: off.
      weight_decay=0.0,  # AdamW decoupled weight decay.
      b1=0.9,  # Adam beta1.
      b2=0.99,  # Adam beta2.
  ))


def make(cfg: ml_collections.ConfigDict,
         total_steps: int) -> optax.GradientTransformation:
  """The optimizer of a `config(...)` section for a run of `total_steps`."""
  if cfg.schedule not in SCHEDULES:
    raise ValueError(f'Unknown schedule {cfg.schedule!r}: use constant or '
                     'cosine.')
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
