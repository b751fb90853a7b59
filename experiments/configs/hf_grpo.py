"""GRPO on a released model from a local Hugging Face checkpoint directory.

  python -m experiments.main --config=experiments/configs/hf_grpo.py \
      --workdir=/tmp/qwen_grpo --config.model.path=/models/Qwen2.5-0.5B

The task is the arithmetic one of `arithmetic_base.py` ("a+b=" -> the sum),
tokenized with the checkpoint's own tokenizer; the exact-match reward parses
the decoded completion on the host (a subword tokenizer's ids are not
digits). Any field can be overridden, e.g. `--config.reward.terms` or the mesh
(`--config.mesh.fsdp=-1` to shard a model that does not fit one device). The
trained policy is written back as a Hugging Face checkpoint under
`WORKDIR/hf_model`.
"""

import ml_collections

from experiments.configs import arithmetic_base
from jaxrlgen.train import optim


def get_config() -> ml_collections.ConfigDict:
  config = arithmetic_base.get_config('grpo')
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
  return config
