"""Offline datasets of scored sequences, sampled from a fixed policy.

Offline RL for text (Guo et al. 2021 learn soft Q-values "from limited good
data"; Snell et al. 2022's ILQL learns from a fixed dataset) trains on
sequences that some behaviour policy generated and a reward scored once. Here
the behaviour policy is the run's warm-started model: `generate` samples
`G` completions of each of `N` prompts with jitted sampling, `chunk_prompts`
prompts at a time, scores them with the run's reward and keeps the behaviour
log-probs. The dataset is a dict of NumPy arrays with a leading prompt axis N,
each prompt's G samples together (the layout of an online rollout):

  prompt i32[N, P], prompt_mask bool[N, P], and the prompts' other fields
  (e.g. answer i32[N]);
  completion i32[N, G, T], completion_mask bool[N, G, T],
  logp f32[N, G, T] (behaviour log-probs), reward f32[N, G].

Chunk c samples with `fold_in(key, c)`: the dataset is a function of the
params, the prompts, the key and the chunk size only.
"""

import chex
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout

SCORED_FIELDS = ('completion', 'completion_mask', 'logp', 'reward')


def sample_and_score(params, batch, key: jax.Array, *, env, reward_fn):
  """One chunk: G scored samples of each of the N prompts in `batch`.

  Args:
    params: the behaviour policy's parameters.
    batch: per-prompt fields, leading axis N (`prompt`, `prompt_mask`, and
      whatever the reward reads).
    key: PRNG key.
    env: the text environment (its sampling and `num_samples` = G).
    reward_fn: (rollout, per-sequence batch) -> f32[N * G].
  Returns:
    dict of the SCORED_FIELDS with leading axes [N, G].
  """
  rollout = env.rollout(params, batch, key)
  rewards = reward_fn(rollout, rollout_lib.repeat_batch(batch, env.num_samples))
  n, g = batch['prompt'].shape[0], env.num_samples
  group = lambda x: x.reshape(n, g, *x.shape[1:])
  return {'completion': group(rollout.actions),
          'completion_mask': group(rollout.mask),
          'logp': group(rollout.logp),
          'reward': group(rewards.astype(jnp.float32))}


# Compiled once per (env, reward_fn, shapes), not once per call.
_sample_and_score_jit = jax.jit(sample_and_score,
                                static_argnames=('env', 'reward_fn'))


def generate(params, prompts, key: jax.Array, *, env, reward_fn,
             chunk_prompts: int) -> dict[str, np.ndarray]:
  """The scored dataset of `prompts` (module docstring) as NumPy arrays.

  Args:
    params: the behaviour policy's parameters.
    prompts: dict of NumPy arrays with leading axis N (`prompt`,
      `prompt_mask`, `answer`, ...); N divisible by chunk_prompts.
    key: the dataset's PRNG key.
    env: the text environment that samples (temperature, G = num_samples).
    reward_fn: the run's reward.
    chunk_prompts: prompts sampled per jitted call (bounds memory).
  """
  n = len(prompts['prompt'])
  if chunk_prompts < 1 or n % chunk_prompts:
    raise ValueError(f'The {n} offline prompts must be a positive multiple '
                     f'of config.offline.chunk_prompts={chunk_prompts}.')
  chunks = []
  for c in range(n // chunk_prompts):
    part = {k: v[c * chunk_prompts:(c + 1) * chunk_prompts]
            for k, v in prompts.items()}
    chunks.append(jax.device_get(_sample_and_score_jit(
        params, part, jax.random.fold_in(key, c), env=env,
        reward_fn=reward_fn)))
  scored = {k: np.concatenate([c[k] for c in chunks]) for k in SCORED_FIELDS}
  return {**{k: np.asarray(v) for k, v in prompts.items()}, **scored}


def split(batch):
  """A batch of the dataset -> (Rollout of B = N * G sequences, rewards f32[B],
  the per-prompt fields, leading axis N)."""
  completion = batch['completion']
  chex.assert_rank(completion, 3)
  n, g, _ = completion.shape
  flat = lambda x: x.reshape(n * g, *x.shape[2:])
  repeat = lambda x: jnp.repeat(x, g, axis=0)
  rollout = Rollout(
      context={'tokens': repeat(batch['prompt']),
               'mask': repeat(batch['prompt_mask'])},
      actions=flat(completion), logp=flat(batch['logp']),
      mask=flat(batch['completion_mask']))
  per_prompt = {k: v for k, v in batch.items() if k not in SCORED_FIELDS}
  return rollout, flat(batch['reward']), per_prompt


def summary(dataset) -> dict[str, float]:
  """Host-side figures of a dataset: size, reward mean, fraction rewarded."""
  reward = np.asarray(dataset['reward'], np.float64)
  return {'offline/num_sequences': float(reward.size),
          'offline/reward_mean': float(reward.mean()),
          'offline/positive_ratio': float((reward > 0).mean())}
