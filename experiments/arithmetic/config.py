"""RL on "a+b=" addition: the demo and the algorithm tables.

A tiny Llama-style model is warm-started by maximum likelihood on the task
for a few steps, leaving room to improve, then trained with RL against the
exact-match reward; held-out accuracy (greedy) is reported before and after.

  python -m experiments.main --config=experiments/arithmetic/config.py:grpo \
      --workdir=/tmp/arithmetic_grpo

The argument after ':' is a comma-separated list of variants: one algorithm
(`grpo` by default; see `ALGORITHMS`), `hf` for a released model from a local
Hugging Face checkpoint (`--config.model.path=DIR`), and `smoke` for the
whole pipeline at tiny sizes in well under a minute. Any field can be
overridden with `--config.section.field=value`.
"""

import dataclasses

import ml_collections

from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen import tools
from jaxrlgen.envs import multiturn
from jaxrlgen.envs import search
from jaxrlgen.models.transformer import TransformerConfig
from jaxrlgen.policies import lora
from jaxrlgen.recipes import text_rl
from jaxrlgen.tasks import arithmetic
from jaxrlgen.train import optim


def base(algo: str) -> ml_collections.ConfigDict:
  """The shared settings; each algorithm's variant changes a few fields."""
  config = schema.to_config(text_rl.RunConfig(recipe='text_rl'))
  # The policy: every TransformerConfig field, at its default unless set.
  config.model = schema.to_config(TransformerConfig(
      vocab_size=259, hidden_dim=128, mlp_dim=384, num_layers=2, num_heads=4,
      num_kv_heads=2, max_seq_len=24))
  config.task = ml_collections.ConfigDict(dict(
      name='arithmetic',  # A registered task, or an import path.
      **dataclasses.asdict(arithmetic.ArithmeticConfig())))
  config.data = schema.to_config(text_rl.DataConfig())
  config.sft = schema.to_config(text_rl.SFTConfig())
  config.rl = schema.to_config(text_rl.RLConfig())
  # The offline dataset, read when config.rl.source='offline'.
  config.offline = schema.to_config(text_rl.OfflineConfig())
  config.algo = algos.default_config(algo)  # Hyperparameters of the algorithm.
  config.reward = ml_collections.ConfigDict(dict(
      terms=(('exact_match', 1.0),),  # (Reward name, weight) pairs.
      target_length=0,  # Used by the length_penalty reward.
  ))
  config.eval = schema.to_config(text_rl.EvalConfig())
  # Low-rank adapters on a frozen base (rank 0: train every parameter).
  config.lora = schema.to_config(lora.LoraConfig())
  # Multi-turn episodes (max_turns 0: one completion) and their tools.
  config.multiturn = schema.to_config(multiturn.MultiTurnConfig())
  config.tools = schema.to_config(tools.ToolsConfig())
  # Devices: mesh axis sizes (-1: the rest) and multi-host start-up.
  config.mesh = parallel.mesh.default_config()
  config.distributed = parallel.distributed.default_config()
  return config


# Score-function gradients without clipping or std-normalised advantages are
# noisier than GRPO's: a lower step size avoids the early dip.
_SCORE_FUNCTION_LR = 2e-4


def _grpo(config):
  config.algo.beta = 0.0  # No KL anchor: the warm start is deliberately weak.


def _dr_grpo(config):
  config.algo.beta = 0.0  # No KL anchor: the warm start is deliberately weak.
  # At 5e-4 the entropy collapsed in ~150 steps with no accuracy gain.
  config.rl.optimizer.learning_rate = 2e-4


def _dapo(config):
  # DAPO's defaults: with the 6-token budget the overlong zone (0.2 of it)
  # spares answers of up to 4 tokens (3 digits + EOS).
  config.rl.optimizer.learning_rate = 2e-4  # 5e-4 collapses the entropy early.


def _gspo(config):
  # Four optimizer steps per rollout: a quarter of the one-step rate (5e-5
  # learnt too slowly, 5e-4 not at all).
  config.rl.optimizer.learning_rate = 1e-4


def _ppo(config):
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


def _a2c(config):
  # The critic is a scalar head on the policy's trunk, initialised at zero.
  config.model.value_head = True
  # Standardised advantages put the policy gradient on GRPO's scale; with
  # one unclipped update per rollout, the base learning rate (5e-4) let the
  # policy collapse for a while (1e-3: for good), 3e-4 did not. The entropy
  # bonus (default 0.01) slows the collapse of exploration.
  config.algo.whiten_advantages = True
  config.rl.optimizer.learning_rate = 3e-4


def _impala(config):
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


def _score_function(config):
  config.rl.optimizer.learning_rate = _SCORE_FUNCTION_LR


def _remax(config):
  config.rl.group_size = 1  # ReMax: one sample (and one greedy) per prompt.
  config.rl.optimizer.learning_rate = _SCORE_FUNCTION_LR


def _sql(config):
  config.algo.objective = 'mixed'  # The paper's single- plus multi-step PCL.
  # The soft-optimal policy is softmax(r) over all 259^6 completions: a
  # reward must outweigh their log-count (~33 nats) to concentrate it.
  config.algo.reward_scale = 50.0
  config.algo.target_update = 0.01  # Polyak rate per step.
  # Value regression moves every logit: a gentler rate than GRPO's 5e-4.
  config.rl.optimizer.learning_rate = 1e-4


def _sql_offline(config):
  _sql(config)
  config.rl.source = 'offline'  # Train on config.offline's fixed dataset.


def _dqn(config):
  # Q starts at log pi_ref <= 0 (normalize_q): a right answer is worth 5.
  config.algo.reward_scale = 5.0
  config.algo.loss = 'mse'
  # Three-step targets: an answer is ~3 tokens, so its reward reaches the
  # first digit without waiting on the slow target network.
  config.algo.n_step = 3
  config.algo.target_update = 0.05  # Polyak rate per step.
  # At GRPO's 5e-4 the regression on taken tokens flattened softmax(Q)
  # (entropy 0.75 -> 2.2) and accuracy fell to 0 in 400 steps.
  config.rl.optimizer.learning_rate = 1e-4


def _sac(config):
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
  config.algo.actor_delay_steps = 20  # Critic steps before the actor moves.


def _ilql(config):
  config.rl.source = 'offline'  # Learn from config.offline's dataset only.
  # One sequence-level reward, at most 6 tokens: no need to discount.
  config.algo.gamma = 1.0
  # Targets follow the Q heads faster than the paper's runs of thousands of
  # steps would need: 400 steps must carry the reward back over 6 tokens.
  config.algo.tau = 0.05
  # Q - V differences are at most 1 (an exact-match reward): a large beta
  # lets them overrule pi_beta's preferences.
  config.algo.beta = 8.0


def _mcts(config):
  # Every token of a training completion is chosen by one mctx search over
  # the policy's own decoding (its logits as prior, its value head at the
  # leaves, the reward at finished nodes); the policy is distilled towards
  # the search's improved policy. Evaluation also reports noise-free MCTS
  # decoding (`eval/mcts_accuracy`).
  config.model.value_head = True  # The search's leaf values (zero-init head).
  config.rl.sampler = 'mcts'
  config.rl.group_size = 1  # One searched completion per prompt.
  config.rl.batch_size = 64  # Prompts (= completions) per step.
  config.rl.optimizer.learning_rate = 5e-4  # As GRPO's base.
  config.mcts = schema.to_config(search.MCTSConfig(
      # 16 simulations with policy='muzero' (visit-count targets) collapsed
      # expert iteration here; Gumbel MuZero's improved policy did not.
      policy='gumbel_muzero', num_simulations=16,
      max_num_considered_actions=4,
      # muzero only: AlphaZero's root noise.
      dirichlet_fraction=0.25, dirichlet_alpha=0.03))


# Variant name -> (algorithm, the changes it makes to `base`).
ALGORITHMS = {
    'grpo': ('grpo', _grpo),
    'dr_grpo': ('dr_grpo', _dr_grpo),
    'dapo': ('dapo', _dapo),
    'gspo': ('gspo', _gspo),
    'ppo': ('ppo', _ppo),
    'a2c': ('a2c', _a2c),
    'impala': ('impala', _impala),
    'reinforce': ('reinforce', _score_function),
    'rloo': ('rloo', _score_function),
    'scst': ('scst', _score_function),
    'remax': ('remax', _remax),
    'sql': ('sql', _sql),
    'sql_offline': ('sql', _sql_offline),
    'dqn': ('dqn', _dqn),
    'sac': ('sac', _sac),
    'ilql': ('ilql', _ilql),
    'mcts': ('mcts_expert_iteration', _mcts),
}


def _hf(config):
  """A released model from a local Hugging Face checkpoint directory
  (`--config.model.path=DIR`), tokenized with its own tokenizer; the
  exact-match reward parses the decoded completion on the host. The trained
  policy is written back as a checkpoint under WORKDIR/hf_model."""
  config.model = ml_collections.ConfigDict(dict(
      path='',  # The checkpoint directory (config.json, *.safetensors, tokenizer).
      param_dtype='bfloat16',  # Parameters as loaded and trained.
      dtype='bfloat16',  # Compute dtype (log-softmax and losses stay f32).
      max_seq_len=64,  # KV-cache length: prompt + completion tokens.
      remat=True,  # Rematerialise blocks in the backward pass.
  ))
  config.data.update(max_prompt_len=16, max_target_len=8)
  config.sft.steps = 0  # A released model needs no warm start.
  config.rl.update(batch_size=64, group_size=8, max_new_tokens=8,
                   optimizer=optim.config(1e-6))
  config.algo.beta = 0.04  # KL to the released model.
  config.total_steps = 200
  config.eval.update(every=50, num_examples=256, batch_size=64)


def _smoke(config):
  """Every stage at tiny sizes: a one-layer model, a few steps of each."""
  if not config.model.get('path'):
    config.model.update(hidden_dim=32, mlp_dim=64, num_layers=1)
  config.task.update(max_operand=20, num_train=200, num_test=64)
  config.sft.update(steps=6, batch_size=16, log_every=3)
  if config.rl.group_size > 1:
    config.rl.update(batch_size=16, group_size=4)
  else:
    config.rl.batch_size = 16
  config.offline.update(num_prompts=32, samples_per_prompt=4,
                        chunk_prompts=16)
  config.eval.update(every=3, num_examples=32, batch_size=32)
  config.update(total_steps=6, log_every=1, checkpoint_every=2)
  if 'mcts' in config:
    config.mcts.num_simulations = 4


# Variants that apply on top of the algorithm's, in this order.
MODIFIERS = {'hf': _hf, 'smoke': _smoke}


def get_config(arg: str = 'grpo') -> ml_collections.ConfigDict:
  """The config of the variants named in `arg` (comma-separated)."""
  names = [n for n in arg.split(',') if n] if arg else []
  unknown = [n for n in names if n not in ALGORITHMS and n not in MODIFIERS]
  chosen = [n for n in names if n in ALGORITHMS]
  if unknown or len(chosen) > 1:
    raise ValueError(f'Variants {names} of experiments/arithmetic/config.py: '
                     f'name at most one algorithm of {sorted(ALGORITHMS)} and '
                     f'any of {sorted(MODIFIERS)}.')
  algo, changes = ALGORITHMS[chosen[0] if chosen else 'grpo']
  config = base(algo)
  changes(config)
  for name in MODIFIERS:  # Fixed order: hf's sizes first, then smoke's.
    if name in names:
      MODIFIERS[name](config)
  return config
