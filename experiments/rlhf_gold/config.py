"""Reward over-optimisation in small (Gao et al. 2022) on "a+b=" addition.

A hidden gold reward (exp(-|error| / gold.scale) of the answer) labels pairs
of the warm-started policy's samples; a proxy reward model learns from them;
PPO and GRPO optimise the proxy at several KL coefficients and DPO trains on
the same pairs; gold and proxy reward are logged against KL(pi || pi_sft).
See jaxrlgen/train/rlhf_gold.py for the stages and outputs.

  python -m experiments.main --config=experiments/configs/rlhf_gold.py \
      --workdir=/tmp/rlhf_gold
"""

import dataclasses

import ml_collections

from experiments.configs import arithmetic_base
from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.models.transformer import TransformerConfig
from jaxrlgen.train import optim


def get_config() -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.recipe = 'experiments.rlhf_gold.recipe:run'  # The recipe that runs it.
  config.seed = 0  # Seeds init, data order, pair labels and sampling.
  config.total_steps = 500  # RL steps of each PPO / GRPO run.
  config.log_every = 10  # Steps between metric fetches and log lines.
  config.checkpoint_every = 100  # Steps between checkpoints of each run.
  config.max_checkpoints = 1  # Checkpoints kept per run.

  # Policy, and the reward model's trunk: every TransformerConfig field.
  # value_head: PPO's critic; the reward model's head is its own copy.
  config.model = ml_collections.ConfigDict(dataclasses.asdict(
      TransformerConfig(vocab_size=259, hidden_dim=64, mlp_dim=192,
                        num_layers=2, num_heads=4, num_kv_heads=2,
                        max_seq_len=14, value_head=True)))

  config.data = arithmetic_base.get_config().data  # "a+b=" with a, b < 100.

  config.sft = ml_collections.ConfigDict(dict(
      # Warm-start steps by maximum likelihood: a weak start (answers often
      # off by a few units) leaves the gold reward room to rise.
      steps=150,
      batch_size=64,  # Examples per warm-start step.
      log_every=50,  # Steps between warm-start log lines.
      optimizer=optim.config(3e-3, 'cosine', warmup_steps=10),
  ))

  config.gold = ml_collections.ConfigDict(dict(
      scale=10.0,  # Gold reward exp(-|answer error| / scale); 0 if malformed.
  ))

  config.pairs = ml_collections.ConfigDict(dict(
      num_train=16384,  # Labelled pairs from training prompts.
      num_heldout=512,  # Labelled pairs from held-out prompts (RM accuracy).
      batch_size=256,  # Prompts sampled at once.
      label='bradley_terry',  # bradley_terry (noisy draw) | max (gold order).
      temperature=0.1,  # Bradley-Terry noise on gold differences.
  ))

  config.rm = ml_collections.ConfigDict(dict(
      steps=600,  # Bradley-Terry steps of the proxy reward model.
      batch_size=128,  # Pairs per step.
      ensemble_size=1,  # Members (bootstrapped); > 1 enables std_coef.
      std_coef=0.0,  # Conservative reward mean - std_coef * std (ensembles).
      log_every=50,  # Steps between log lines.
      eval_every=200,  # Steps between held-out accuracy evaluations.
      # At 1e-3 (batch 64) the held-out accuracy swung between 0.62 and 0.72
      # for warm starts 1e-6 apart; batch 128 at 5e-4 gave 0.72 / 0.73.
      optimizer=optim.config(5e-4, 'cosine', warmup_steps=10),
  ))

  config.rl = ml_collections.ConfigDict(dict(
      batch_size=128,  # Sequences per PPO / GRPO step (prompts x group_size).
      group_size=4,  # Samples per prompt (GRPO's group).
      max_new_tokens=6,  # Completion budget (room to drift past 3 digits).
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
      optimizer=optim.config(1e-3),
  ))

  config.ppo = ml_collections.ConfigDict(dict(
      # KL-in-reward coefficients, one run each; the first is the run that
      # summary.json reports as gold_reward/ppo etc. (0: unregularised, the
      # most optimisation pressure on the proxy); empty: no PPO runs.
      kl_coefs=(0.0, 0.02, 0.05),
      # The rest of PPO's hyperparameters (kl_coef is set per run).
      algo=algos.default_config('ppo'),
  ))
  config.ppo.algo.update(num_epochs=2, num_minibatches=2)

  config.grpo = ml_collections.ConfigDict(dict(
      betas=(0.0, 0.05, 0.2),  # k3 KL-loss coefficients; first: summary's.
      # The rest of GRPO's hyperparameters (beta is set per run).
      algo=algos.default_config('grpo'),
  ))

  config.dpo = ml_collections.ConfigDict(dict(
      betas=(0.1, 0.03),  # DPO betas, one run each; first: summary's.
      loss='dpo',  # dpo | ipo | simpo.
      label_smoothing=0.0,  # > 0: conservative DPO.
      steps=400,  # Optimizer steps over the training pairs (1.6 epochs).
      batch_size=64,  # Pairs per step.
      optimizer=optim.config(1e-4),
  ))

  config.eval = ml_collections.ConfigDict(dict(
      every=25,  # Steps between gold / proxy / KL measurements.
      batch_size=256,  # Held-out prompts per measurement.
      samples=2,  # Samples per prompt (temperature 1).
  ))

  # Devices: mesh axis sizes (-1: the rest); the study runs on one host.
  config.mesh = parallel.mesh.default_config()
  config.distributed = parallel.distributed.default_config()
  return config
