"""DAPO (Yu et al. 2025) on "a+b=" addition: clip-higher, token mean, no KL,
zero-variance groups masked out of the loss (about half of them here), soft
overlong punishment.

  python -m experiments.main --config=experiments/configs/arithmetic_dapo.py \
      --workdir=/tmp/arithmetic_dapo
"""

from experiments.configs import arithmetic_base


def get_config():
  # The algorithm's fields keep DAPO's defaults: with the 6-token budget the
  # overlong zone (0.2 of it) spares answers of up to 4 tokens (3 digits + EOS).
  config = arithmetic_base.get_config('dapo')
  config.rl.optimizer.learning_rate = 2e-4  # 5e-4 collapses the entropy early.
  return config
