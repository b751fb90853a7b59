"""PPO with a value head on "a+b=" addition (RLHF-style PPO, Ziegler et al.).

  python -m experiments.main --config=experiments/configs/arithmetic_ppo.py \
      --workdir=/tmp/arithmetic_ppo
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('ppo')
  # The critic is a scalar head on the policy's trunk; it starts at zero, so
  # the warm start (whose checkpoint then holds the unused head) is unchanged.
  config.model.value_head = True
  # 2 epochs x 2 minibatches = 4 optimizer steps per rollout: a smaller
  # learning rate than the one-step-per-rollout base keeps the ratio in range.
  config.rl.optimizer.learning_rate = 2e-4
  config.algo.num_epochs = 2
  config.algo.num_minibatches = 2
  # A light KL-in-reward anchor: the warm start is deliberately weak.
  config.algo.kl_coef = 0.02
  return config
