"""RLOO (leave-one-out baseline over each prompt's k samples) on "a+b=".

  python -m experiments.main --config=experiments/configs/arithmetic_rloo.py \
      --workdir=/tmp/arithmetic_rloo
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('rloo')
  # Score-function gradients without clipping or std-normalised advantages
  # are noisier than GRPO's: a lower step size avoids the early dip.
  config.rl.optimizer.learning_rate = 2e-4
  return config
