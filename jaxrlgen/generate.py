"""Generates completions of prompts from a file with any model jaxrlgen loads.

  python -m jaxrlgen.generate --model=SmolLM2-135M-Instruct.Q4_1.gguf \
      --prompts=questions.jsonl --out=answers.jsonl [--greedy] \
      [--temperature=0.7 --top_p=0.9 --num_samples=4] [--max_new_tokens=256]

MODEL is a Hugging Face directory (config.json, safetensors and the
tokenizer), a `.gguf` file, or a run's workdir: a directory holding
`hf_model/`, the trained policy that the generic recipe writes at the end of
a run that started from a released model.

PROMPTS holds one record per line (JSONL; `.json`, `.parquet` and `datasets`
files are read too, as the files task reads them). A record's `prompt_field`
is a string or a list of chat messages; it is rendered through the
tokenizer's chat template (on by default when the tokenizer has one) with
`system_prompt` first, exactly as the files task renders training prompts.

OUT gets one line per (prompt, sample), prompts in order and each prompt's
samples together: the record's own fields, then `completion` (the text up to
EOS), `num_tokens` (tokens generated, EOS included) and `finished` (whether
it ended with EOS rather than at `max_new_tokens`).

Sampling is the library's: `TextEnv.rollout`, jitted once, over fixed-size
batches of prompts left-padded to the longest prompt (the last batch is
filled up with repeats and those rows dropped), so one compilation serves
the whole file. Batch k draws with `fold_in(key(seed), k)`: the output is a
function of the seed, the flags and the file.
"""

import dataclasses
import json
import os
import time
from typing import Any, Sequence

from absl import app
from absl import flags
from absl import logging
import jax
import numpy as np

from jaxrlgen.data import chat
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import gguf
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.tasks import files

DTYPES = ('float32', 'bfloat16')
# The fields generation adds to each record.
OUTPUT_FIELDS = ('completion', 'num_tokens', 'finished')
HF_MODEL = 'hf_model'  # Where the recipe writes a run's trained policy.


def resolve_model(path: str | os.PathLike[str]) -> str:
  """The checkpoint `--model=path` names: a `.gguf` file or a directory with
  config.json (a run's workdir resolves to its `hf_model/`).

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` is neither a GGUF file, a Hugging Face directory nor
      a workdir with `hf_model/` (a workdir without it says so).
  """
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f'--model={path} does not exist: give a Hugging '
                            'Face directory, a .gguf file or a run\'s '
                            'workdir.')
  if os.path.isfile(path):
    if not gguf.is_gguf(path):
      raise ValueError(f'--model={path} is a file but not a GGUF file; give '
                       'a .gguf file, a Hugging Face directory or a run\'s '
                       'workdir.')
    return path
  if os.path.exists(os.path.join(path, 'config.json')):
    return path
  exported = os.path.join(path, HF_MODEL)
  if os.path.isdir(exported):
    if not os.path.exists(os.path.join(exported, 'config.json')):
      raise ValueError(f'--model={path}: {exported} has no config.json; the '
                       'export at the end of the run did not complete.')
    return exported
  if any(os.path.exists(os.path.join(path, name))
         for name in ('checkpoints', 'metrics.jsonl', 'summary.json')):
    raise ValueError(
        f'--model={path} is a run\'s workdir without {HF_MODEL}/: the recipe '
        f'writes {HF_MODEL}/ when a run that started from a released model '
        '(config.model.path) finishes; this run has not finished, or began '
        'from a random model. Give a finished run\'s workdir, or a Hugging '
        'Face directory or .gguf file.')
  raise ValueError(f'--model={path} is a directory with neither config.json '
                   f'(a Hugging Face checkpoint) nor {HF_MODEL}/ (a run\'s '
                   'workdir).')


def _context_length(model_path: str) -> int:
  """The model's positions (0: unknown), read without its weights."""
  config = hf.read_config(model_path)  # A GGUF's too.
  return int(config.get('max_position_embeddings')
             or config.get('n_positions') or 0)


@dataclasses.dataclass(frozen=True)
class Prompt:
  """One record and its prompt as the model is given it."""

  record: dict[str, Any]
  where: str  # 'prompts.jsonl line 3'.
  tokens: list[int]


def read_prompts(prompts: str, tokenizer, *, prompt_field: str = 'prompt',
                 system_prompt: str = '',
                 chat_template: bool | None = None) -> list[Prompt]:
  """Reads, renders and encodes the prompts of a file.

  Records are read by `tasks.files.read` and rendered by
  `tasks.files.render`, so a prompt reads as in a files-task run.

  Args:
    prompts: a .jsonl file (or any files-task entry: globs, .json,
      .parquet, a datasets directory).
    tokenizer: encodes the rendered prompts; its `chat_template` is used.
    prompt_field: the field holding the prompt.
    system_prompt: put before each prompt ('' for none).
    chat_template: render through the tokenizer's chat template; None: when
      it has one.
  Raises:
    FileNotFoundError / ValueError: a missing or unreadable file, a record
      without `prompt_field` or with a prompt that is neither a string nor a
      list of messages, a chat template that fails to render; each names
      the file and line.
  """
  if not prompt_field:
    raise ValueError('--prompt_field is empty; name the field that holds '
                     'the prompt.')
  if not os.path.exists(prompts) and not any(c in prompts for c in '*?[,'):
    raise FileNotFoundError(f'--prompts={prompts} does not exist.')
  template = chat.of_tokenizer(tokenizer)
  if chat_template and template is None:
    raise ValueError('--chat_template=true, but the model\'s tokenizer has '
                     'no chat template; leave the flag out or set it false.')
  use_template = template is not None and chat_template is not False
  # The files task's own settings, so that its render reads them.
  cfg = files.FilesConfig(train_files=prompts, eval_files=prompts,
                          prompt_field=prompt_field, completion_field='',
                          system_prompt=system_prompt,
                          chat_template=use_template)
  out = []
  for row in files.read(prompts, '--prompts'):
    if prompt_field not in row.values:
      raise ValueError(f'{row.where} has no prompt field {prompt_field!r} '
                       f'(--prompt_field); it has {sorted(row.values)}.')
    prompt = row.values[prompt_field]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(
        isinstance(m, dict) for m in prompt))):
      raise ValueError(f'{row.where}: the prompt field {prompt_field!r} holds '
                       f'{type(prompt).__name__}; it must be a string or a '
                       'list of chat messages.')
    try:
      text = files.render(prompt, cfg, template if use_template else None)
    except ValueError as e:  # Includes chat.ChatTemplateError.
      # The files task's messages name its config fields; here they are flags.
      message = str(e).replace('config.task.', '--')
      raise ValueError(f'{row.where}: {message}') from e
    out.append(Prompt(row.values, row.where, tokenizer.encode(text)))
  return out


def check_lengths(prompts: Sequence[Prompt], max_new_tokens: int,
                  context: int) -> int:
  """The longest prompt, in tokens; fails if a prompt does not fit.

  Raises:
    ValueError: a prompt is empty, or with `max_new_tokens` exceeds the
      model's `context` positions; names the first such line and the flags.
  """
  for p in prompts:
    if not p.tokens:
      raise ValueError(f'{p.where}: the prompt is empty (no tokens); give it '
                       'text, or turn --chat_template on.')
  width = max(len(p.tokens) for p in prompts)
  if context and width + max_new_tokens > context:
    budget = context - max_new_tokens
    first = next(p for p in prompts if len(p.tokens) > budget)
    raise ValueError(
        f'{first.where}: the prompt has {len(first.tokens)} tokens, but the '
        f'model has {context} positions and --max_new_tokens={max_new_tokens} '
        f'leaves {max(budget, 0)} for the prompt (the longest prompt has '
        f'{width}). Lower --max_new_tokens or shorten the prompt.')
  return width


def pad_prompts(prompts: Sequence[Prompt], tokenizer, width: int,
                batch_size: int) -> dict[str, np.ndarray]:
  """One batch `{'prompt': i32[batch_size, width], 'prompt_mask': bool[...]}`,
  left-padded; rows past `len(prompts)` repeat the first prompt (real
  text, so they end like real prompts do) and their outputs are dropped."""
  rows = [p.tokens for p in prompts]
  rows += [rows[0]] * (batch_size - len(rows))
  tokens, mask = tokenizer.pad_batch(rows, width, side='left')
  return {'prompt': tokens.astype(np.int32), 'prompt_mask': mask.astype(bool)}


def _rollout(env: TextEnv, params, batch, key):
  rollout = env.rollout(params, batch, key)
  return rollout.actions, rollout.mask


# The environment is static and hashable: equal environments (and shapes)
# share one compilation, across calls too.
_rollout_jit = jax.jit(_rollout, static_argnums=0)


def generate(model: str, prompts: str, out: str, *,
             prompt_field: str = 'prompt', max_new_tokens: int = 256,
             temperature: float = 1.0, top_p: float = 1.0, top_k: int = 0,
             greedy: bool = False, num_samples: int = 1, batch_size: int = 8,
             system_prompt: str = '', chat_template: bool | None = None,
             seed: int = 0, dtype: str = 'float32') -> dict[str, float]:
  """Writes completions of every prompt of `prompts` to `out` (JSONL).

  Args:
    model: a Hugging Face directory, a .gguf file or a run's workdir.
    prompts: JSONL records with `prompt_field` (see `read_prompts`).
    out: the output JSONL (overwritten).
    prompt_field: the records' field holding the prompt.
    max_new_tokens: T, the most tokens generated per completion.
    temperature, top_p, top_k, greedy: `envs.text.Sampling`.
    num_samples: G completions per prompt (one prefill shared).
    batch_size: prompts per compiled call (B = batch_size * G sequences).
    system_prompt: put before each prompt.
    chat_template: render prompts with the tokenizer's chat template; None:
      when it has one.
    seed: PRNG seed of the sampling.
    dtype: parameter and compute dtype, 'float32' or 'bfloat16'.
  Returns:
    Figures of the run: prompts, completions, tokens, seconds, and
    prompts/s and tokens/s after the first (compiling) batch.
  Raises:
    FileNotFoundError / ValueError: bad flags, model or prompts (named),
      all before the model's weights are read.
  """
  for name, value in (('max_new_tokens', max_new_tokens),
                      ('num_samples', num_samples),
                      ('batch_size', batch_size)):
    if value < 1:
      raise ValueError(f'--{name}={value} must be >= 1.')
  if dtype not in DTYPES:
    raise ValueError(f'--dtype={dtype!r}; known: {DTYPES}.')
  try:
    sampling = Sampling(temperature=temperature, top_k=top_k, top_p=top_p,
                        greedy=greedy)
  except ValueError as e:  # Its messages name sampling.*; here they are flags.
    raise ValueError(str(e).replace('sampling.', '--')) from e
  model_path = resolve_model(model)
  tokenizer = HFTokenizer.from_path(model_path)
  items = read_prompts(prompts, tokenizer, prompt_field=prompt_field,
                       system_prompt=system_prompt,
                       chat_template=chat_template)
  width = check_lengths(items, max_new_tokens, _context_length(model_path))
  clash = sorted({f for p in items for f in OUTPUT_FIELDS if f in p.record})
  if clash:
    logging.warning('The records\' field(s) %s are replaced by the output\'s '
                    'own in %s.', clash, out)

  config, params = hf.load(model_path, param_dtype=dtype,
                           max_seq_len=width + max_new_tokens)
  env = TextEnv(LMPolicy(tfm.Transformer(config)),
                max_new_tokens=max_new_tokens, sampling=sampling,
                eos_id=tokenizer.eos_id, pad_id=tokenizer.pad_id,
                num_samples=num_samples, early_stop=True)
  batch_size = min(batch_size, len(items))
  num_batches = -(-len(items) // batch_size)
  key = jax.random.key(seed)
  logging.info('Generating %d completion(s) of %d prompts (longest %d tokens) '
               'with %s: %d batch(es) of %d prompts.', num_samples, len(items),
               width, model_path, num_batches, batch_size)
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  start = time.perf_counter()
  first_seconds, tokens, tokens_after_first = 0.0, 0, 0
  with open(out, 'w', encoding='utf-8') as f:
    for k in range(num_batches):
      chunk = items[k * batch_size:(k + 1) * batch_size]
      batch = pad_prompts(chunk, tokenizer, width, batch_size)
      actions, mask = _rollout_jit(env, params, batch,
                                   jax.random.fold_in(key, k))
      actions, mask = np.asarray(actions), np.asarray(mask)
      batch_tokens = 0
      for i, item in enumerate(chunk):
        for j in range(num_samples):
          row = i * num_samples + j
          ids = actions[row][mask[row]]
          batch_tokens += len(ids)
          record = {**item.record,
                    'completion': tokenizer.decode(ids, stop_at_eos=True),
                    'num_tokens': int(len(ids)),
                    'finished': bool(np.any(ids == tokenizer.eos_id))}
          f.write(json.dumps(record, ensure_ascii=False) + '\n')
      f.flush()
      tokens += batch_tokens
      elapsed = time.perf_counter() - start
      if k == 0:
        first_seconds = elapsed
      else:
        tokens_after_first += batch_tokens
      done = min((k + 1) * batch_size, len(items))
      logging.info('%d/%d prompts, %.1f s: %.2f prompts/s, %.1f tokens/s '
                   '(first batch compiles)', done, len(items), elapsed,
                   done / elapsed, tokens / elapsed)
  seconds = time.perf_counter() - start
  steady = seconds - first_seconds
  stats = {'prompts': len(items), 'completions': len(items) * num_samples,
           'tokens': tokens, 'seconds': seconds,
           'first_batch_seconds': first_seconds}
  if num_batches > 1 and steady > 0:
    stats['prompts_per_second'] = (len(items) - batch_size) / steady
    stats['tokens_per_second'] = tokens_after_first / steady
  logging.info('Wrote %d completions to %s: %s', stats['completions'], out,
               json.dumps(stats))
  return stats


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags (only when run as a command: the flags of
  other commands, e.g. export's --model, would clash on import)."""
  fv = dict(flag_values=flag_values)
  flags.DEFINE_string('model', None, 'A Hugging Face checkpoint directory, a '
                      '.gguf file, or a run\'s workdir (its hf_model/).', **fv)
  flags.DEFINE_string('prompts', None, 'JSONL file of records with the '
                      'prompt field.', **fv)
  flags.DEFINE_string('out', None, 'Output JSONL file.', **fv)
  flags.DEFINE_string('prompt_field', 'prompt', 'The records\' field with the '
                      'prompt.', **fv)
  flags.DEFINE_integer('max_new_tokens', 256, 'Most tokens generated per '
                       'completion.', **fv)
  flags.DEFINE_float('temperature', 1.0, 'Sampling temperature.', **fv)
  flags.DEFINE_float('top_p', 1.0, 'Nucleus sampling mass (1: off).', **fv)
  flags.DEFINE_integer('top_k', 0, 'Keep the k likeliest tokens (0: off).',
                       **fv)
  flags.DEFINE_bool('greedy', False, 'Argmax decoding.', **fv)
  flags.DEFINE_integer('num_samples', 1, 'Completions per prompt.', **fv)
  flags.DEFINE_integer('batch_size', 8, 'Prompts per compiled call.', **fv)
  flags.DEFINE_string('system_prompt', '', 'Put before each prompt.', **fv)
  flags.DEFINE_bool('chat_template', None, 'Render prompts with the '
                    'tokenizer\'s chat template (default: when it has one).',
                    **fv)
  flags.DEFINE_integer('seed', 0, 'PRNG seed of the sampling.', **fv)
  flags.DEFINE_enum('dtype', 'float32', DTYPES, 'Parameter and compute dtype.',
                    **fv)
  flags.mark_flags_as_required(['model', 'prompts', 'out'], **fv)


def from_flags(flag_values: flags.FlagValues = flags.FLAGS
               ) -> dict[str, float]:
  """`generate` with the (parsed) flags' values."""
  fv = flag_values
  return generate(
      fv.model, fv.prompts, fv.out, prompt_field=fv.prompt_field,
      max_new_tokens=fv.max_new_tokens, temperature=fv.temperature,
      top_p=fv.top_p, top_k=fv.top_k, greedy=fv.greedy,
      num_samples=fv.num_samples, batch_size=fv.batch_size,
      system_prompt=fv.system_prompt, chat_template=fv.chat_template,
      seed=fv.seed, dtype=fv.dtype)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
  print(json.dumps(from_flags()))


if __name__ == '__main__':
  define_flags()
  app.run(main)
