"""Discrete SAC (Christodoulou 2019) on "a+b=" addition.

  python -m experiments.main --config=experiments/configs/arithmetic_sac.py \
      --workdir=/tmp/arithmetic_sac

The actor is the warm-started LM; two critics (copies of its trunk with zero
Q heads) learn Q over the vocabulary from a replay buffer of recent rollouts;
the temperature keeps the policy within a KL budget of the warm start.
"""

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('sac')
  # KL to the warm start instead of the paper's entropy. With the uniform
  # prior the sampled reward fell to 0 within 40 actor steps (critics from
  # Q = 0: the entropy rose to 2.5 nats; from Q = alpha * logits: within 30).
  config.algo.prior = 'reference'
  config.algo.init_alpha = 0.05  # pi ~ pi_ref exp(Q / alpha).
  config.algo.target_kl = 0.3  # KL budget, nats per token.
  # Monte-Carlo critic targets (completions are <= 6 tokens): with one-step
  # targets and tau = 0.01 the policy had hardly moved after 120 steps.
  config.algo.n_step = 6
  config.algo.tau = 0.05
  # Steps of critic learning before the actor moves.
  config.algo.actor_delay_steps = 20
  return config
