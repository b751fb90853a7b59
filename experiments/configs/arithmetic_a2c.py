"""A2C (n-step actor-critic) with a value head on "a+b=" addition.

  python -m experiments.main --config=experiments/configs/arithmetic_a2c.py \
      --workdir=/tmp/arithmetic_a2c
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('a2c')
  # The critic is a scalar head on the policy's trunk, initialised at zero.
  config.model.value_head = True
  # Standardised advantages put the policy gradient on GRPO's scale; with
  # one unclipped update per rollout, the base learning rate (5e-4) let the
  # policy collapse for a while (1e-3: for good), 3e-4 did not. The entropy
  # bonus (default 0.01) slows the collapse of exploration.
  config.algo.whiten_advantages = True
  config.rl.optimizer.learning_rate = 3e-4
  return config
