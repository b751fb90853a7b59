"""Soft Q-learning (Guo et al. 2021) on "a+b=" addition from an offline
dataset of scored samples of the warm-started policy (config.offline).

  python -m experiments.main \
      --config=experiments/configs/arithmetic_sql_offline.py \
      --workdir=/tmp/arithmetic_sql_offline
"""

from experiments.configs import arithmetic_sql


def get_config():
  config = arithmetic_sql.get_config()
  config.rl.source = 'offline'  # Train on config.offline's fixed dataset.
  return config
