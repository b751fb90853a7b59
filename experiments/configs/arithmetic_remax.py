"""ReMax (REINFORCE with the greedy response's reward as baseline) on "a+b=".

  python -m experiments.main --config=experiments/configs/arithmetic_remax.py \
      --workdir=/tmp/arithmetic_remax
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('remax')
  config.rl.group_size = 1  # ReMax: one sample (and one greedy) per prompt.
  # Score-function gradients without clipping or std-normalised advantages
  # are noisier than GRPO's: a lower step size avoids the early dip.
  config.rl.optimizer.learning_rate = 2e-4
  return config
