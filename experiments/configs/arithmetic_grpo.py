"""GRPO on "a+b=" addition: the README's demo.

  python -m experiments.main --config=experiments/configs/arithmetic_grpo.py \
      --workdir=/tmp/arithmetic_grpo
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('grpo')
  config.algo.beta = 0.0  # No KL anchor: the warm start is deliberately weak.
  return config
