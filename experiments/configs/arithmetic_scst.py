"""Self-critical sequence training (greedy-decode baseline) on "a+b=" addition.

  python -m experiments.main --config=experiments/configs/arithmetic_scst.py \
      --workdir=/tmp/arithmetic_scst
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('scst')
  # Score-function gradients without clipping or std-normalised advantages
  # are noisier than GRPO's: a lower step size avoids the early dip.
  config.rl.optimizer.learning_rate = 2e-4
  return config
