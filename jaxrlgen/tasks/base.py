"""What a task is: prompts with their fields, in train and held-out splits.

A task is registered under a name (`jaxrlgen.tasks.TASKS`) as a `TaskSpec`:
the schema of its `config.task` section and a `load` function that returns
its `Splits`. Records are dicts with at least

  'prompt':      str (or bytes): what the model is given;
  'completion':  str (or bytes): a reference completion (the supervised warm
                 start's target; rewards may compare against it);

and whatever other fields the reward reads (`TaskSpec.fields`, e.g. the
integer 'answer' of arithmetic). `collate` turns records into fixed-shape
arrays; the recipe repeats each prompt's fields over its group of samples, so
a reward `(rollout, batch) -> f32[B]` reads `batch[field]` per sequence.
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

Record = Mapping[str, Any]
# The arrays every collated batch has; `fields` add to them.
PROMPT_KEYS = ('prompt', 'prompt_mask')
TARGET_KEYS = ('target', 'target_mask')


@dataclasses.dataclass(frozen=True)
class Splits:
  """Random-access sources of records (`len`, `source[i]`, and optionally
  `source.__getitems__(indices)`, as TFDS array_record sources have)."""

  train: Sequence[Record]
  test: Sequence[Record]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """A registered task.

  Attributes:
    config_cls: frozen dataclass, the schema of `config.task` (less `name`).
    load: (task config, data_dir) -> Splits. Writes whatever it builds under
      data_dir (atomically: a half-built dataset is never read as good).
    fields: record fields collated for the reward besides the prompt
      (numbers become arrays; `target` / `target_mask` name the tokenized
      reference completion).
    reward: the default `config.reward.terms` (reward name -> weight).
    description: one line, shown by `--help`-like listings.
  """

  config_cls: type
  load: Callable[[Any, str], Splits]
  fields: tuple[str, ...] = ()
  reward: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: {'target_match': 1.0})
  description: str = ''


def _text(value: str | bytes) -> str:
  # TFDS Text features come back as bytes.
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def collate(records: Sequence[Record], tokenizer, max_prompt_len: int,
            max_target_len: int, fields: Sequence[str] = ()
            ) -> dict[str, np.ndarray]:
  """Fixed-shape arrays of N records.

  Prompts are left-padded (no BOS) so generation starts in the same column
  for every row; targets are the completion followed by EOS, right-padded,
  ready for teacher forcing or for comparison with a sampled completion.

  Args:
    records: N dicts with 'prompt', 'completion' and each of `fields`.
    tokenizer: has `encode(text, add_eos=)` and `pad_batch`.
    max_prompt_len: P (`config.data.max_prompt_len`).
    max_target_len: T (`config.data.max_target_len`), EOS included.
    fields: further record fields, each stacked into an array with leading
      axis N (integers as int32, floats as float32).
  Returns:
    `prompt` i32[N, P], `prompt_mask` bool[N, P], `target` i32[N, T],
    `target_mask` bool[N, T], and each field.
  Raises:
    ValueError: a record lacks a field, or a prompt or target does not fit.
  """
  prompts, targets = [], []
  for i, record in enumerate(records):
    for key in ('prompt', 'completion', *fields):
      if key not in record and key not in TARGET_KEYS:
        raise ValueError(f'Record {i} has no field {key!r}; it has '
                         f'{sorted(record)}.')
    prompt, completion = _text(record['prompt']), _text(record['completion'])
    p = tokenizer.encode(prompt)
    t = tokenizer.encode(completion, add_eos=True)
    if len(p) > max_prompt_len:
      raise ValueError(
          f'Record {i} has prompt {prompt!r} of {len(p)} tokens, longer than '
          f'config.data.max_prompt_len={max_prompt_len}; raise it to at least '
          f'{len(p)}.')
    if len(t) > max_target_len:
      raise ValueError(
          f'Record {i} has completion {completion!r} of {len(t)} tokens with '
          f'EOS, longer than config.data.max_target_len={max_target_len}; '
          f'raise it to at least {len(t)}.')
    prompts.append(p)
    targets.append(t)
  prompt, prompt_mask = tokenizer.pad_batch(
      prompts, max_prompt_len, 'left', length_name='config.data.max_prompt_len')
  target, target_mask = tokenizer.pad_batch(
      targets, max_target_len, 'right',
      length_name='config.data.max_target_len')
  out = {'prompt': prompt, 'prompt_mask': prompt_mask, 'target': target,
         'target_mask': target_mask}
  for key in fields:
    if key in out:
      continue
    values = np.asarray([r[key] for r in records])
    if values.dtype.kind in 'iub':
      values = values.astype(np.int32 if values.dtype.kind != 'b' else bool)
    elif values.dtype.kind == 'f':
      values = values.astype(np.float32)
    else:
      raise ValueError(f'Field {key!r} holds {values.dtype} values; a reward '
                       'field must be numeric (decode text on the host).')
    out[key] = values
  return out
