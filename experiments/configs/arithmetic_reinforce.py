"""REINFORCE with a moving-average reward baseline on "a+b=" addition.

  python -m experiments.main \
      --config=experiments/configs/arithmetic_reinforce.py \
      --workdir=/tmp/arithmetic_reinforce
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('reinforce')
  # Score-function gradients without clipping or std-normalised advantages
  # are noisier than GRPO's: a lower step size avoids the early dip.
  config.rl.optimizer.learning_rate = 2e-4
  return config
