"""Shared base of the arithmetic experiments: "a+b=" -> the sum.

A tiny Llama-style model is warm-started by maximum likelihood on the task
for a few steps, leaving room to improve, then trained with RL against the
exact-match reward; held-out accuracy (greedy) is reported before and after.
Each `arithmetic_<algo>.py` overrides a few fields of `get_config(algo)`.
"""

import dataclasses

import ml_collections

from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.models.transformer import TransformerConfig
from jaxrlgen.train import optim


def get_config(algo: str = 'grpo') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.recipe = 'text_rl'  # Which jaxrlgen.train recipe runs the config.
  config.seed = 0  # Seeds init, data order and sampling.
  config.total_steps = 2000  # RL steps.
  config.log_every = 10  # Steps between metric fetches and log lines.
  config.checkpoint_every = 250  # Steps between checkpoints (and at the end).
  config.max_checkpoints = 2  # Checkpoints kept.
  config.loop = 'sync'  # sync | async (actor lags learner, IMPALA-style).

  # The policy: every TransformerConfig field, at its default unless set.
  config.model = ml_collections.ConfigDict(dataclasses.asdict(
      TransformerConfig(vocab_size=259, hidden_dim=128, mlp_dim=384,
                        num_layers=2, num_heads=4, num_kv_heads=2,
                        max_seq_len=24)))

  config.data = ml_collections.ConfigDict(dict(
      data_dir='',  # TFDS data_dir; '' means WORKDIR/data.
      max_operand=99,  # Operands are drawn from 0..max_operand.
      num_train=8000,  # Training (a, b) pairs.
      num_test=1000,  # Held-out pairs, disjoint from training.
      seed=0,  # Seed of the dataset's pair split.
      max_prompt_len=8,  # Prompt tokens ("99+99=" is 6).
      max_target_len=4,  # Supervised completion tokens incl. EOS.
  ))

  config.sft = ml_collections.ConfigDict(dict(
      steps=600,  # Warm-start steps (about 15% held-out accuracy); 0: none.
      batch_size=64,  # Examples per warm-start step.
      log_every=50,  # Steps between warm-start log lines.
      optimizer=optim.config(3e-3, 'cosine', warmup_steps=10),
  ))

  config.rl = ml_collections.ConfigDict(dict(
      batch_size=256,  # Sequences per step (prompts x group_size).
      group_size=8,  # Samples per prompt, sharing one prefill.
      max_new_tokens=6,  # Completion budget.
      temperature=1.0,  # Sampling temperature.
      top_k=0,  # 0: off.
      top_p=1.0,  # 1: off.
      # How a draw is made (both exact): 'gumbel' or 'inverse_cdf' (one
      # random number per sequence: faster on CPU).
      sampling_method='gumbel',
      # Decode on a KV cache grown in this many segments (exact; fewer
      # attention reads for long completions, one compiled loop each).
      cache_segments=1,
      logprob_chunk=128,  # Time steps per log-prob chunk.
      # Reference model copy: float32, or bfloat16 to halve its memory.
      reference_dtype='float32',
      optimizer=optim.config(5e-4),
      # online: sample each step's batch; offline: read config.offline's
      # dataset of scored sequences instead (the learner step only).
      source='online',
  ))

  # The offline dataset (config.rl.source='offline'): sampled once from the
  # warm-started policy, scored by config.reward, kept in the workdir.
  config.offline = ml_collections.ConfigDict(dict(
      num_prompts=2048,  # Training prompts in the dataset.
      samples_per_prompt=8,  # Completions per prompt (rows of one group).
      temperature=1.0,  # Sampling temperature of the behaviour policy.
      chunk_prompts=256,  # Prompts sampled per jitted call.
  ))

  config.algo = algos.default_config(algo)  # Hyperparameters of the algorithm.

  config.reward = ml_collections.ConfigDict(dict(
      terms={'exact_match': 1.0},  # Reward name -> weight.
      target_length=0,  # Used by the length_penalty reward.
  ))

  config.eval = ml_collections.ConfigDict(dict(
      every=250,  # RL steps between held-out evaluations.
      num_examples=512,  # Held-out examples per evaluation.
      batch_size=256,  # Examples per evaluation batch.
  ))

  # Devices: mesh axis sizes (-1: the rest) and multi-host start-up.
  config.mesh = parallel.mesh.default_config()
  config.distributed = parallel.distributed.default_config()
  return config
