"""ILQL (Snell et al. 2022) on "a+b=" addition, offline.

  python -m experiments.main --config=experiments/configs/arithmetic_ilql.py \
      --workdir=/tmp/arithmetic_ilql

The warm-started LM samples a fixed dataset once (config.offline: 8
completions of each of 2048 training prompts, scored by exact match); ILQL
learns Q and V heads on the LM's hidden states from it alone, and the
held-out evaluation decodes greedily with the advantage-weighted policy
log pi_beta + beta (Q - V).
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('ilql')
  config.rl.source = 'offline'  # Learn from config.offline's dataset only.
  # One sequence-level reward, at most 6 tokens: no need to discount.
  config.algo.gamma = 1.0
  # Targets follow the Q heads faster than the paper's runs of thousands of
  # steps would need: 400 steps must carry the reward back over 6 tokens.
  config.algo.tau = 0.05
  # Q - V differences are at most 1 (an exact-match reward): a large beta
  # lets them overrule pi_beta's preferences.
  config.algo.beta = 8.0
  return config
