"""GSPO (Zheng et al. 2025) on "a+b=" addition: a sequence-level importance
ratio clipped per sequence, 4 minibatches per rollout (GSPO's default; with
one, the ratio is always 1 and the clip never acts).

  python -m experiments.main --config=experiments/configs/arithmetic_gspo.py \
      --workdir=/tmp/arithmetic_gspo
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('gspo')
  # Four optimizer steps per rollout: a quarter of the one-step rate (5e-5
  # learnt too slowly, 5e-4 not at all).
  config.rl.optimizer.learning_rate = 1e-4
  return config
