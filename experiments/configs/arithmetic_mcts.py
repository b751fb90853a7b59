"""MCTS expert iteration on "a+b=" addition (jaxrlgen/algos/mcts.py).

Every token of a training completion is chosen by one mctx search over the
policy's own decoding (the policy's logits as prior, its value head at the
leaves, the exact-match reward at finished nodes); the policy is then
distilled towards the search's policy (Gumbel MuZero's improved policy) and
its value head regressed to the rewards. With policy='muzero' (visit-count
targets, 16 simulations) expert iteration collapsed here (see the README).
Held-out accuracy is reported for greedy decoding (`eval/accuracy`) and for
noise-free MCTS decoding with the same policy (`eval/mcts_accuracy`).

  python -m experiments.main --config=experiments/configs/arithmetic_mcts.py \
      --workdir=/tmp/arithmetic_mcts

MCTS as a test-time sampler of the warm-started policy alone (no RL steps):
  ... --config.total_steps=0 --config.mcts.num_simulations=32
"""

import ml_collections

from experiments.configs import arithmetic_base


def get_config():
  config = arithmetic_base.get_config('mcts_expert_iteration')
  config.model.value_head = True  # The search's leaf values (zero-init head).
  # Which decoder produces the training rollouts: policy (sampling) | mcts.
  config.rl.sampler = 'mcts'
  config.rl.group_size = 1  # One searched completion per prompt.
  config.rl.batch_size = 64  # Prompts (= completions) per step.
  config.rl.optimizer.learning_rate = 5e-4  # As GRPO's base.
  config.mcts = ml_collections.ConfigDict(dict(
      policy='gumbel_muzero',  # gumbel_muzero | muzero (PUCT, AlphaZero).
      num_simulations=16,  # Simulations (tree nodes added) per token.
      max_depth=0,  # Longest simulated path; 0: the completion budget.
      value='head',  # Leaf values: head (value head) | zero (reward only).
      greedy=False,  # Training acts by sampling; evaluation is always greedy.
      temperature=1.0,  # muzero: act with probability ~ visits^(1/T).
      dirichlet_fraction=0.25,  # muzero: root prior noise (AlphaZero: 0.25).
      dirichlet_alpha=0.03,  # muzero: its concentration (AlphaZero Go: 0.03).
      pb_c_init=1.25,  # muzero: PUCT exploration constant c1.
      pb_c_base=19652.0,  # muzero: PUCT constant c2.
      # fixed: Q scaled by [q_min, q_max] (exact match: [0, 1]); siblings:
      # mctx's min-max over siblings, which lets value-head noise take over.
      q_normalization='fixed',
      q_min=0.0,  # fixed: the smallest return.
      q_max=1.0,  # fixed: the largest return.
      max_num_considered_actions=4,  # gumbel_muzero: root actions kept.
      gumbel_scale=1.0,  # gumbel_muzero: scale of the root Gumbel noise.
  ))
  return config
