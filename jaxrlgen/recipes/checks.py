"""Checks that span a text-RL config's sections, run before any compute.

Each section's own checks live in its schema (`jaxrlgen.schema`); what needs
two sections, the model or the mesh is checked here, from the parsed
settings (`text_rl.Settings`), the algorithm, the model's config and the mesh.
Every error names both fields and the way out. Checked elsewhere already:

  mesh sizes against the devices        parallel.mesh.resolve_shape
  heads into hidden_dim, kv heads       models.transformer.TransformerConfig
  batch and group sizes, batch shards   text_rl.RLConfig, text_rl.validate
  prompt + completion vs max_seq_len    text_rl.validate
  no reward terms at all                rewards.check_terms
"""

import dataclasses
import math

import jax

from jaxrlgen import algos as algos_lib
from jaxrlgen.models import transformer as tfm

# Algorithms whose advantages (or pairs) compare the samples of one prompt:
# with one sample per prompt they learn nothing.
GROUP_RELATIVE = ('grpo', 'dr_grpo', 'dapo', 'gspo', 'rloo', 'online_dpo')


def check(settings, algo: algos_lib.Algorithm,
          model_cfg: tfm.TransformerConfig,
          mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh) -> None:
  """Every check of this module (`text_rl.validate` calls it)."""
  check_model_shards(model_cfg, mesh)
  check_minibatches(settings, algo)
  check_group_size(settings, algo)
  check_reward_weights(settings)


def _divisors(n: int) -> list[int]:
  return [d for d in range(1, n + 1) if n % d == 0]


def check_model_shards(model_cfg: tfm.TransformerConfig, mesh) -> None:
  """The mesh axes divide the model dimensions they split.

  A dimension that its mesh axis does not divide is silently left whole on
  every device (`parallel.spec_for`), so `mesh.tensor` would split no heads
  and `mesh.fsdp` no parameters: the memory the axis was meant to save is
  not saved. Key / value heads may be fewer than `mesh.tensor` (they are
  then repeated, as grouped-query attention allows).
  """
  shape = dict(mesh.shape)
  tensor, fsdp = shape.get('tensor', 1), shape.get('fsdp', 1)
  for name, axis, size in (('num_heads', 'tensor', tensor),
                           ('mlp_dim', 'tensor', tensor),
                           ('hidden_dim', 'fsdp', fsdp)):
    value = getattr(model_cfg, name)
    if value % size:
      fits = [d for d in _divisors(value) if d <= max(size, 8)]
      raise ValueError(
          f'config.model.{name}={value} is not divisible by config.mesh.'
          f'{axis}={size}: it would not be split at all. Make config.mesh.'
          f'{axis} divide it (one of {fits}), or change config.model.{name}.')


def _uses_replay(algo: algos_lib.Algorithm) -> bool:
  """Whether the algorithm's minibatches split a replay sample (checked by
  its config: `core.replay.check_config`) rather than the step's batch."""
  config_cls = algos_lib.ALGORITHMS.get(algo.name).config_cls
  return any(f.name == 'replay_batch_size'
             for f in dataclasses.fields(config_cls))


def check_minibatches(settings, algo: algos_lib.Algorithm) -> None:
  """`config.algo.num_minibatches` divides what the update splits: the
  step's sequences (`rl.batch_size`), or its prompts for online DPO (one
  pair per prompt). `algos.base.minibatch_update` would fail only while
  compiling."""
  n = algo.num_minibatches
  if n <= 1 or _uses_replay(algo):
    return
  rl = settings.rl
  if algo.name == 'online_dpo':
    rows = rl.num_prompts
    what = (f'config.rl.batch_size / config.rl.group_size = {rows} prompts '
            '(pairs)')
  else:
    rows = rl.batch_size
    what = f'config.rl.batch_size={rows} sequences'
  if rows % n:
    fits = [d for d in _divisors(rows) if d <= max(n, 16)]
    raise ValueError(
        f'{what} per step must be divisible by config.algo.num_minibatches='
        f'{n}; set config.algo.num_minibatches to one of {fits}, or change '
        'config.rl.batch_size.')


def check_group_size(settings, algo: algos_lib.Algorithm) -> None:
  """Group-relative algorithms get at least 2 samples per prompt."""
  if algo.name not in GROUP_RELATIVE:
    return
  if settings.offline is not None:
    field, group = ('config.offline.samples_per_prompt',
                    settings.offline.samples_per_prompt)
  else:
    field, group = 'config.rl.group_size', settings.rl.group_size
  if group < 2:
    raise ValueError(
        f'{field}={group}: config.algo.name={algo.name!r} compares the samples '
        f'of a prompt with each other, so it needs {field} >= 2 (e.g. 4 or 8, '
        'with config.rl.batch_size a multiple of it).')


def check_reward_weights(settings) -> None:
  """`config.reward.terms`, when given, weigh some term by non-zero: with
  every weight 0 the reward is 0 for every sample and nothing is learned.
  (No terms at all means the task's default reward.)"""
  reward = settings.reward
  if reward.fn or not reward.terms or isinstance(reward.terms, str):
    return  # One function; the task's default; or checked as text elsewhere.
  weights = dict(reward.terms)
  if not any(w != 0 and math.isfinite(w) for w in weights.values()):
    raise ValueError(
        f'config.reward.terms={weights} weighs every term by 0: the reward '
        'is 0 for every sample. Give at least one term a non-zero weight, or '
        'leave config.reward.terms empty for the task\'s default reward.')
