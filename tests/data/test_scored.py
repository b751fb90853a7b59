"""Offline datasets of scored sequences: layout, determinism, scores, and the
round trip into a Rollout."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.data import scored
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from tests.algos import toy


def _setup(num_samples=3):
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=16, mlp_dim=32,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=10)
  params = tfm.init_params(cfg, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=5,
                eos_id=1,
                pad_id=0,
                num_samples=num_samples,
                sampling=Sampling(temperature=1.5))
  prompts = {'prompt': np.array([[0, 7, 8], [9, 9, 9], [0, 0, 4], [3, 2, 5]],
                                np.int32),
             'prompt_mask': np.array([[0, 1, 1], [1, 1, 1], [0, 0, 1],
                                      [1, 1, 1]], bool),
             'answer': np.arange(4, dtype=np.int32)}
  return params, env, prompts


def test_generate_layout_scores_and_determinism():
  params, env, prompts = _setup()
  data = scored.generate(params, prompts, jax.random.key(3), env=env,
                         reward_fn=toy.fives_reward, chunk_prompts=2)
  assert data['completion'].shape == (4, 3, 5)
  assert data['completion_mask'].shape == (4, 3, 5)
  assert data['logp'].shape == (4, 3, 5) and data['reward'].shape == (4, 3)
  np.testing.assert_array_equal(data['answer'], prompts['answer'])
  # Rewards are the reward function of the stored completions.
  rollout, rewards, per_prompt = scored.split(
      jax.tree.map(jnp.asarray, data))
  np.testing.assert_allclose(rewards, toy.fives_reward(rollout, None))
  # Same key and chunking: the same dataset; another key: another one.
  again = scored.generate(params, prompts, jax.random.key(3), env=env,
                          reward_fn=toy.fives_reward, chunk_prompts=2)
  for k in data:
    np.testing.assert_array_equal(data[k], again[k])
  other = scored.generate(params, prompts, jax.random.key(4), env=env,
                          reward_fn=toy.fives_reward, chunk_prompts=2)
  assert not np.array_equal(other['completion'], data['completion'])
  assert set(per_prompt) == {'prompt', 'prompt_mask', 'answer'}


def test_split_is_the_rollout_layout_and_keeps_behaviour_logp():
  params, env, prompts = _setup()
  data = scored.generate(params, prompts, jax.random.key(0), env=env,
                         reward_fn=toy.fives_reward, chunk_prompts=2)
  rollout, _, _ = scored.split(jax.tree.map(jnp.asarray, data))
  # G consecutive rows per prompt, as env.rollout lays them out.
  np.testing.assert_array_equal(rollout.context['tokens'][3:6],
                                np.repeat(prompts['prompt'][1:2], 3, 0))
  np.testing.assert_array_equal(rollout.actions[4], data['completion'][1, 1])
  # The stored log-probs are the behaviour policy's (temperature 1.5):
  # a teacher-forced pass of the same policy gives them back.
  out = env.evaluate(params, rollout)
  np.testing.assert_allclose(np.where(rollout.mask, out.logp, 0.0),
                             rollout.logp, atol=1e-5)


def test_summary_and_bad_chunking():
  params, env, prompts = _setup()
  data = scored.generate(params, prompts, jax.random.key(0), env=env,
                         reward_fn=toy.fives_reward, chunk_prompts=2)
  s = scored.summary(data)
  assert s['offline/num_sequences'] == 12
  np.testing.assert_allclose(s['offline/reward_mean'], data['reward'].mean())
  try:
    scored.generate(params, prompts, jax.random.key(0), env=env,
                    reward_fn=toy.fives_reward, chunk_prompts=3)
  except ValueError as e:
    assert 'config.offline.chunk_prompts' in str(e)
  else:
    raise AssertionError('4 prompts in chunks of 3 must fail.')
