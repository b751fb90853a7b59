"""Shared pieces of the algorithm tests: the toy task (its model,
environment, prompts and reward), a learning test's starting state, and
numerical gradients.

The learning tests' toy task rewards a tiny LM for the fraction of its valid
completion tokens that are TARGET: about 1/16 for a random 16-token policy,
1 for the optimal one.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.algos import base
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy

TARGET = 5
EOS, PAD = 1, 0


def setup(*, num_samples: int = 8, num_prompts: int = 4,
          max_new_tokens: int = 6, **model_overrides):
  """The toy task: a 1-layer LM over 16 tokens (seeded init), its
  environment (G = num_samples) and a batch of `num_prompts` prompts "7 7 7".

  Returns:
    (env, params, batch).
  """
  cfg = tfm.TransformerConfig(**{
      'vocab_size': 16, 'hidden_dim': 32, 'mlp_dim': 64, 'num_layers': 1,
      'num_heads': 2, 'num_kv_heads': 2, 'max_seq_len': 12,
      **model_overrides})
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)), max_new_tokens=max_new_tokens,
                eos_id=EOS, pad_id=PAD, num_samples=num_samples)
  batch = {'prompt': jnp.full((num_prompts, 3), 7, jnp.int32),
           'prompt_mask': jnp.ones((num_prompts, 3), bool)}
  return env, tfm.init_params(cfg, jax.random.key(0)), batch


def train_state(algo, env, params, batch, tx) -> TrainState:
  """The state a learning test starts from: the algorithm's trainable
  parameters built on a copy of `params` (the jitted steps donate the
  state), a reference copy if the algorithm uses one, and its algo_state
  (target networks, replay sized from an example rollout's shapes)."""
  trainable = algo.init_params(env, jax.tree.map(jnp.copy, params),
                               jax.random.key(1))
  example = jax.eval_shape(env.rollout, params, batch, jax.random.key(0))
  return TrainState.create(
      trainable, tx,
      ref_params=(jax.tree.map(jnp.copy, params) if algo.uses_reference
                  else None),
      algo_state=base.init_algo_state(algo, trainable, rollout=example))


def fives_reward(rollout, batch):
  """f32[B]: fraction of a completion's valid tokens that are TARGET."""
  del batch
  hits = jnp.sum((rollout.actions == TARGET) & rollout.mask, axis=1)
  return hits / jnp.maximum(jnp.sum(rollout.mask, axis=1), 1)


def finite_difference(f, x, h=1e-6):
  """Central-difference gradient of a float64 NumPy function f at x."""
  x = x.astype(np.float64)
  grad = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    plus, minus = x.copy(), x.copy()
    plus[idx] += h
    minus[idx] -= h
    grad[idx] = (f(plus) - f(minus)) / (2 * h)
  return grad


def learn(algo, env, params, batch, tx, num_steps: int):
  """`num_steps` jitted `rl_step`s on the toy task from `train_state`.

  Returns:
    (final state, per-step metrics as dicts of Python floats).
  """
  state = train_state(algo, env, params, batch, tx)
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=fives_reward, algo=algo, tx=tx),
                 donate_argnums=0)
  records = []
  for i in range(num_steps):
    state, metrics = step(state, batch, jax.random.key(i))
    records.append({k: float(v) for k, v in metrics.items()})
  return state, records
