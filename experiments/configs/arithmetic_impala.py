"""IMPALA (V-trace actor-critic) on "a+b=" with an actor that lags the learner.

The actor generates each batch with the learner's parameters of
`algo.max_staleness` updates earlier, overlapped with the learner's update
(`jaxrlgen.train.async_loop`); V-trace corrects for the lag. The value head
sits on the policy's trunk.

  python -m experiments.main --config=experiments/configs/arithmetic_impala.py \
      --workdir=/tmp/arithmetic_impala
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('impala')
  config.model.value_head = True  # V(x_s) for V-trace, on the policy trunk.
  config.loop = 'async'  # Actor and learner overlap.
  config.algo.max_staleness = 2  # The actor is 2 updates behind.
  # Plain (unclipped) policy gradients at the base 5e-4, or without an
  # anchor, drifted and collapsed the weak warm start within 100 steps.
  config.rl.optimizer.learning_rate = 2e-4
  config.algo.kl_coef = 0.02  # k3 KL to the warm start, in the loss.
  config.algo.entropy_coef = 0.01  # The paper's entropy bonus.
  # The head learns at Adam's pace whatever its weight; a small weight keeps
  # value regression from dragging the shared trunk.
  config.algo.value_coef = 0.1
  return config
