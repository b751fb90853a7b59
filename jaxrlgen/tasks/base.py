"""What a task is: prompts with their fields, in train and held-out splits.

A task is registered under a name (`jaxrlgen.tasks.TASKS`) as a `TaskSpec`:
the schema of its `config.task` section and a `load` function that returns
its `Splits`. Records are dicts with at least

  'prompt':      str (or bytes): what the model is given;
  'completion':  str (or bytes): a reference completion (the supervised warm
                 start's target; rewards may compare against it);

and whatever other fields the reward reads (`TaskSpec.fields`, e.g. the
integer 'answer' of arithmetic, or `Splits.fields` when a task finds them in
its data). `collate` turns records into fixed-shape arrays: numbers into
int32 / float32 / bool arrays, strings into text fields (`i16[N, L]` of UTF-8
bytes padded with -1, `jaxrlgen.rewards.fields`, L fixed per dataset by
`Splits.text_lengths`), which host rewards get back as the exact strings.
The recipe repeats each prompt's fields over its group of samples, so a
reward `(rollout, batch) -> f32[B]` reads `batch[field]` per sequence.

`open_splits` is what a recipe calls: the task's `load`, then its `prepare`
(which needs the tokenizer: chat templates, prompt lengths).
"""

import dataclasses
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from jaxrlgen.rewards import fields as fields_lib

Record = Mapping[str, Any]
# The arrays every collated batch has; `fields` add to them.
PROMPT_KEYS = ('prompt', 'prompt_mask')
TARGET_KEYS = ('target', 'target_mask')


@dataclasses.dataclass(frozen=True)
class Splits:
  """Random-access sources of records (`len`, `source[i]`, and optionally
  `source.__getitems__(indices)`, as TFDS array_record sources have), and
  what a task learnt about them at load.

  Attributes:
    train, test: the record sources.
    fields: the record fields the reward reads, when the task finds them in
      its data (None: `TaskSpec.fields`).
    text_lengths: width L (UTF-8 bytes) of each text field, the longest in
      either split, so every batch has one shape.
    has_completion: whether records carry a reference completion (a
      supervised warm start needs one).
    report: lines for the run's log (records read, prompts left out).
    stats: numbers for the run's summary (e.g. 'train/long_prompts').
  """

  train: Sequence[Record]
  test: Sequence[Record]
  fields: tuple[str, ...] | None = None
  text_lengths: Mapping[str, int] = dataclasses.field(default_factory=dict)
  has_completion: bool = True
  report: str = ''
  stats: Mapping[str, int] = dataclasses.field(default_factory=dict)


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
    prepare: optional (task config, Splits, tokenizer, max_prompt_len,
      max_target_len) -> Splits, run after `load` by `open_splits`: what
      needs the tokenizer (a chat template, leaving out prompts that do not
      fit).
  """

  config_cls: type
  load: Callable[[Any, str], Splits]
  fields: tuple[str, ...] = ()
  reward: Mapping[str, float] = dataclasses.field(
      default_factory=lambda: {'target_match': 1.0})
  description: str = ''
  prepare: Callable[[Any, Splits, Any, int, int], Splits] | None = None


def open_splits(spec: TaskSpec, task_cfg, data_dir: str, tokenizer,
                max_prompt_len: int, max_target_len: int) -> Splits:
  """The task's splits, ready for `collate`: `spec.load`, then
  `spec.prepare`; `fields` filled from `spec.fields` when the task did not
  find its own."""
  splits = spec.load(task_cfg, data_dir)
  if spec.prepare is not None:
    splits = spec.prepare(task_cfg, splits, tokenizer, max_prompt_len,
                          max_target_len)
  if splits.fields is None:
    splits = dataclasses.replace(splits, fields=tuple(spec.fields))
  return splits


def _text(value: str | bytes) -> str:
  # TFDS Text features come back as bytes.
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def collate(records: Sequence[Record], tokenizer, max_prompt_len: int,
            max_target_len: int, fields: Sequence[str] = (),
            text_lengths: Mapping[str, int] | None = None
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
      axis N (integers as int32, floats as float32, booleans as bool,
      strings as a text field i16[N, L], see `jaxrlgen.rewards.fields`).
    text_lengths: L of each text field (`Splits.text_lengths`); a text
      field without one is as wide as this batch's longest string, so its
      shape changes from batch to batch.
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
    raw = [r[key] for r in records]
    if raw and all(isinstance(v, (str, bytes)) for v in raw):
      width = (text_lengths or {}).get(key)
      if width is None:
        width = max(len(fields_lib.utf8(v)) for v in raw)
      out[key] = fields_lib.encode_texts(raw, max(width, 1), key)
      continue
    values = np.asarray(raw)
    if values.dtype.kind in 'iub':
      values = values.astype(np.int32 if values.dtype.kind != 'b' else bool)
    elif values.dtype.kind == 'f':
      values = values.astype(np.float32)
    else:
      raise ValueError(f'Field {key!r} holds {values.dtype} values; a reward '
                       'field must be numbers, booleans or strings (all of '
                       'one kind).')
    out[key] = values
  return out
