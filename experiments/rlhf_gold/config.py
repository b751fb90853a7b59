"""Reward over-optimisation in small (Gao et al. 2022) on "a+b=" addition.

A hidden gold reward (exp(-|error| / gold.scale) of the answer) labels pairs
of the warm-started policy's samples; a proxy reward model learns from them;
PPO and GRPO optimise the proxy at several KL coefficients and DPO trains on
the same pairs; gold and proxy reward are logged against KL(pi || pi_sft).
See experiments/rlhf_gold/recipe.py for the stages and outputs.

  python -m experiments.main --config=experiments/rlhf_gold/config.py \
      --workdir=/tmp/rlhf_gold

  # Every stage at tiny sizes, in about a minute on 2 CPU cores:
  python -m experiments.main --config=experiments/rlhf_gold/config.py:smoke \
      --workdir=/tmp/rlhf_gold_smoke

The argument after ':' is a comma-separated list of variants (`VARIANTS`).
Restarting with the same --workdir skips or resumes each stage. The study's
own sections (gold, pairs, rm, ppo, grpo, dpo, eval and the top-level fields)
take their defaults, one-line comments and checks from their schemas in
experiments/rlhf_gold/recipe.py; the task, data, sft and rl sections are the
generic recipe's (jaxrlgen/recipes/text_rl.py), with the values set here.
"""

import dataclasses

import ml_collections

from experiments import variants
from experiments.rlhf_gold import recipe
from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen.models.transformer import TransformerConfig
from jaxrlgen.recipes import text_rl
from jaxrlgen.tasks import arithmetic
from jaxrlgen.train import optim


def base() -> ml_collections.ConfigDict:
  """The study's setup."""
  config = schema.to_config(recipe.RunConfig())
  # Policy, and the reward model's trunk: every TransformerConfig field.
  # value_head: PPO's critic; the reward model's head is its own copy.
  config.model = schema.to_config(TransformerConfig(
      vocab_size=259, hidden_dim=64, mlp_dim=192, num_layers=2, num_heads=4,
      num_kv_heads=2, max_seq_len=14, value_head=True))
  # "a+b=" with a, b < 100: the arithmetic experiment's task and lengths.
  config.task = ml_collections.ConfigDict(dict(
      name='arithmetic',  # A registered task with an integer 'answer' field.
      **dataclasses.asdict(arithmetic.ArithmeticConfig())))
  config.data = schema.to_config(text_rl.DataConfig())
  # A weak warm start (answers often off by a few units) leaves the gold
  # reward room to rise.
  config.sft = schema.to_config(text_rl.SFTConfig(steps=150))
  config.gold = schema.to_config(recipe.GoldConfig())
  config.pairs = schema.to_config(recipe.PairsConfig())
  config.rm = schema.to_config(recipe.RewardModelConfig())
  # Sampling of PPO and GRPO (group_size: GRPO's group; max_new_tokens leaves
  # room to drift past 3 digits) and their optimizer.
  config.rl = schema.to_config(text_rl.RLConfig(
      batch_size=128, group_size=4, max_new_tokens=6,
      optimizer=optim.OptimizerConfig(1e-3)))
  for name in recipe.UNUSED_RL_FIELDS:  # Fixed here: not offered.
    del config.rl[name]
  config.ppo = schema.to_config(recipe.PPOSweepConfig())
  config.grpo = schema.to_config(recipe.GRPOSweepConfig())
  config.dpo = schema.to_config(recipe.DPOSweepConfig())
  config.eval = schema.to_config(recipe.EvalConfig())
  # Devices: mesh axis sizes (-1: the rest); the study runs on one host.
  config.mesh = parallel.mesh.default_config()
  config.distributed = parallel.distributed.default_config()
  return config


def smoke(config: ml_collections.ConfigDict) -> None:
  """Every stage at tiny sizes (a one-layer model, two steps of each run)."""
  config.model.update(hidden_dim=16, mlp_dim=32, num_layers=1, num_heads=2,
                      num_kv_heads=1)
  config.task.update(max_operand=20, num_train=64, num_test=32)
  config.sft.update(steps=2, batch_size=16, log_every=1)
  config.pairs.update(num_train=32, num_heldout=16, batch_size=16)
  config.rm.update(steps=2, batch_size=16, log_every=1, eval_every=2)
  config.rl.update(batch_size=8, group_size=2, max_new_tokens=4)
  # The unregularised runs (the only ones here) take their own step count.
  config.update(total_steps=2, unregularised_steps=4, log_every=1,
                checkpoint_every=2)
  config.ppo.kl_coefs = (0.0,)
  config.ppo.algo.update(num_epochs=1, num_minibatches=1)
  config.grpo.betas = (0.0,)
  config.dpo.update(betas=(0.1,), steps=2, batch_size=8)
  config.eval.update(every=2, batch_size=16, samples=1)


VARIANTS = {'smoke': smoke}


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The study's config; `arg` lists variants to apply, comma-separated."""
  return variants.apply(base(), arg, VARIANTS, 'rlhf_gold')
