"""Soft Q-learning (Guo et al. 2021) on "a+b=" addition, on-policy samples.

  python -m experiments.main --config=experiments/configs/arithmetic_sql.py \
      --workdir=/tmp/arithmetic_sql
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('sql')
  config.algo.objective = 'mixed'  # The paper's single- plus multi-step PCL.
  # The soft-optimal policy is softmax(r) over all 259^6 completions: a
  # reward must outweigh their log-count (~33 nats) to concentrate it.
  config.algo.reward_scale = 50.0
  config.algo.target_update = 0.01  # Polyak rate per step.
  # Value regression moves every logit: a gentler rate than GRPO's 5e-4.
  config.rl.optimizer.learning_rate = 1e-4
  return config
