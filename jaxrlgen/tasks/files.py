"""Prompts from files: `config.task.name='files'`.

  --config.task.train_files='data/train-*.jsonl,extra.parquet'
  --config.task.eval_files='data/test.jsonl'
  --config.task.prompt_field=question --config.task.system_prompt='Be brief.'

Each comma-separated entry of `train_files` / `eval_files` is one of

- a glob of files: `.jsonl` (one JSON object a line), `.json` (a list of
  objects), `.parquet`, or `.arrow` (a Hugging Face `datasets` shard);
- a directory written by `datasets.Dataset.save_to_disk` (its arrow files,
  read with pyarrow; `datasets` itself is not needed);
- `tfds:NAME[:SPLIT]`, a prepared TFDS dataset in `config.data.data_dir`
  read through its array_record data source (no TensorFlow), NAME as TFDS
  writes it (`name`, `name/config`, `name/config:1.0.0`); SPLIT defaults to
  train for train_files and test for eval_files.

Records keep the order of the entries, each glob's files sorted by name, and
each file's rows in order, so record i is the same on every host and every
run, and the recipe's stateless batching (batch = f(seed, step)) resumes
exactly. Without `eval_files`, `eval_size` records drawn with `split_seed`
are held out of the training files.

A record's `prompt_field` (a string, or a list of chat messages) is what the
model is given, rendered through the tokenizer's chat template when it has
one (`chat_template`, on by default) with `system_prompt` first. Its
`completion_field`, when the records have it, is the reference completion of
the supervised warm start. Every other field goes to the reward: strings as
text fields, numbers and booleans as arrays, lists and dicts as their JSON
text.

Prompts longer than `config.data.max_prompt_len` tokens (and reference
completions longer than `config.data.max_target_len`) are not cut: those
records are left out, counted and reported at load (how many of how many, the
longest, the flag to raise); the run fails only if no record is left.
Every problem with the files is found at load, before any compute, and named
with its file and line or row.
"""

import dataclasses
import glob
import json
import os
import re
from typing import Any, ClassVar, Iterator, Sequence

import numpy as np

from jaxrlgen import schema
from jaxrlgen.data import chat
from jaxrlgen.rewards import fields as fields_lib
from jaxrlgen.tasks import base

# Batch keys a record field may not take.
RESERVED = ('prompt', 'prompt_mask', 'target', 'target_mask')
_INT32 = np.iinfo(np.int32)
_VERSION = re.compile(r'\d+\.\d+\.(\d+|\*)')


@dataclasses.dataclass(frozen=True)
class FilesConfig:
  """`config.task` of the files task (with `name='files'`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'eval_size': schema.Means(zero='none held out (eval_files are given)'),
      'split_seed': schema.Means(zero='a seed like any other'),
      'max_records': schema.Means(zero='every record')}

  train_files: str = ''  # Comma-separated globs, dirs or tfds:NAME[:SPLIT].
  eval_files: str = ''  # The same for held-out prompts; '': eval_size.
  prompt_field: str = 'prompt'  # The field the model is given.
  # The reference completion (supervised warm start), if records have it.
  completion_field: str = 'completion'
  system_prompt: str = ''  # Put before each prompt; '' for none.
  # Render prompts through the tokenizer's chat template when it has one.
  chat_template: bool = True
  eval_size: int = 0  # Without eval_files: training records held out.
  split_seed: int = 0  # Seed of the eval_size draw.
  max_records: int = 0  # Use the first N training records; 0: all.

  def __post_init__(self):
    if not self.train_files.strip():
      raise schema.FieldError('train_files', 'is empty; give the training '
                              'prompts (globs of .jsonl / .json / .parquet, '
                              'a datasets directory or tfds:NAME).')
    if not self.prompt_field:
      raise schema.FieldError('prompt_field', 'is empty.')
    if self.completion_field == self.prompt_field:
      raise schema.FieldError('completion_field', f'= prompt_field '
                              f'{self.prompt_field!r}; they must differ.')
    schema.non_negative(self, 'eval_size', 'split_seed', 'max_records')
    if not self.eval_files.strip() and not self.eval_size:
      raise schema.FieldError('eval_files', 'is empty and eval_size is 0: '
                              'give held-out prompts, or eval_size > 0 to '
                              'hold some of train_files out.')


@dataclasses.dataclass(frozen=True)
class Row:
  """A record as read, and where it came from (for error messages)."""

  values: dict[str, Any]
  where: str  # 'data/a.jsonl line 3', 'x.parquet row 7'.


class Records:
  """A random-access source of prepared records (`len`, `[i]`,
  `__getitems__`)."""

  def __init__(self, records: Sequence[dict[str, Any]]):
    self._records = list(records)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i: int) -> dict[str, Any]:
    return self._records[int(i)]

  def __getitems__(self, indices) -> list[dict[str, Any]]:
    return [self._records[int(i)] for i in indices]


# Reading.


def _read_jsonl(path: str) -> Iterator[Row]:
  with open(path, encoding='utf-8') as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      where = f'{path} line {n}'
      try:
        value = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f'{where} is not JSON: {e}.') from e
      yield Row(_object(value, where), where)


def _read_json(path: str) -> Iterator[Row]:
  with open(path, encoding='utf-8') as f:
    try:
      value = json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f'{path} is not JSON: {e}.') from e
  if not isinstance(value, list):
    raise ValueError(f'{path} holds a JSON {type(value).__name__}; a .json '
                     'file of records must hold a list of objects (or use '
                     '.jsonl, one object a line).')
  for n, item in enumerate(value):
    where = f'{path} item {n}'
    yield Row(_object(item, where), where)


def _object(value, where: str) -> dict[str, Any]:
  if not isinstance(value, dict):
    raise ValueError(f'{where} is a JSON {type(value).__name__}, not an '
                     'object of fields.')
  return value


def _table_rows(table, path: str) -> Iterator[Row]:
  for n, values in enumerate(table.to_pylist()):
    yield Row(values, f'{path} row {n}')


def _read_parquet(path: str) -> Iterator[Row]:
  import pyarrow.parquet as pq  # pylint: disable=g-import-not-at-top
  yield from _table_rows(pq.read_table(path), path)


def _read_arrow(path: str) -> Iterator[Row]:
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  # `datasets` writes the IPC stream format; plain Arrow files are the file
  # format. Try one, then the other.
  with pa.memory_map(path) as source:
    try:
      table = pa.ipc.open_stream(source).read_all()
    except pa.ArrowInvalid:
      table = pa.ipc.open_file(source).read_all()
  yield from _table_rows(table, path)


def _read_dataset_dir(path: str, flag: str) -> Iterator[Row]:
  """A directory of `datasets.Dataset.save_to_disk`."""
  state = os.path.join(path, 'state.json')
  if not os.path.exists(state):
    if os.path.exists(os.path.join(path, 'dataset_dict.json')):
      with open(os.path.join(path, 'dataset_dict.json')) as f:
        splits = json.load(f).get('splits', [])
      raise ValueError(f'{flag}: {path!r} holds a DatasetDict; name one of '
                       f'its splits\' directories: '
                       f'{[os.path.join(path, s) for s in splits]}.')
    raise ValueError(f'{flag}: {path!r} is a directory without state.json '
                     '(a datasets save_to_disk directory); give files or a '
                     'glob instead.')
  with open(state) as f:
    files = [d['filename'] for d in json.load(f).get('_data_files', [])]
  for name in files:
    yield from _read_arrow(os.path.join(path, name))


def _read_tfds(entry: str, default_split: str, data_dir: str,
               flag: str) -> Iterator[Row]:
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  name, split = entry[len('tfds:'):], default_split
  head, sep, tail = name.rpartition(':')
  if sep and not _VERSION.fullmatch(tail):
    name, split = head, tail
  try:
    source = tfds.data_source(name, split=split, data_dir=data_dir or None,
                              download=False)
  except Exception as e:  # Not prepared, unknown name or split.
    # TFDS's message may list every dataset it knows; its first line says it.
    first = (str(e).strip().splitlines() or [''])[0]
    raise ValueError(f'{flag}: {entry!r} does not open as the {split!r} '
                     f'split of the TFDS dataset {name!r} in data_dir '
                     f'{data_dir!r} (config.data.data_dir; prepare it there '
                     f'first): {type(e).__name__}: {first}') from e
  for n in range(len(source)):
    yield Row(_plain(source[n]), f'{entry} record {n}')


def _plain(value):
  """A TFDS record's values as Python values (bytes -> str)."""
  if isinstance(value, dict):
    return {k: _plain(v) for k, v in value.items()}
  if isinstance(value, bytes):
    return value.decode('utf-8')
  if isinstance(value, np.ndarray):
    return _plain(value.tolist()) if value.ndim else _plain(value.item())
  if isinstance(value, np.generic):
    return value.item()
  if isinstance(value, list):
    return [_plain(v) for v in value]
  return value


_READERS = {'.jsonl': _read_jsonl, '.json': _read_json,
            '.parquet': _read_parquet, '.arrow': _read_arrow}


def read(files: str, flag: str, default_split: str = 'train',
         data_dir: str = '') -> list[Row]:
  """Every record of a `train_files` / `eval_files` value, in order.

  Raises:
    ValueError: an entry matches nothing, a file's type is unknown, or a
      file does not parse; each names the flag and the file.
  """
  rows, seen = [], set()
  for entry in (e.strip() for e in files.split(',')):
    if not entry:
      continue
    if entry.startswith('tfds:'):
      rows.extend(_read_tfds(entry, default_split, data_dir, flag))
      continue
    paths = sorted(glob.glob(os.path.expanduser(entry), recursive=True))
    if not paths:
      raise ValueError(f'{flag}: {entry!r} matches no file (relative paths '
                       f'start at {os.getcwd()!r}).')
    for path in paths:
      if path in seen:  # Two globs naming one file read it once.
        continue
      seen.add(path)
      if os.path.isdir(path):
        rows.extend(_read_dataset_dir(path, flag))
        continue
      reader = _READERS.get(os.path.splitext(path)[1].lower())
      if reader is None:
        raise ValueError(f'{flag}: {path!r} is not a .jsonl, .json, .parquet '
                         'or .arrow file, a datasets directory or tfds:NAME.')
      rows.extend(reader(path))
  if not rows:
    raise ValueError(f'{flag}={files!r} holds no records.')
  return rows


# Checking.


def _kind(value) -> str:
  if isinstance(value, bool):
    return 'bool'
  if isinstance(value, int):
    return 'int'
  if isinstance(value, float):
    return 'float'
  if isinstance(value, str):
    return 'str'
  if isinstance(value, (list, dict)):
    return 'json'
  return type(value).__name__


def check_rows(rows: Sequence[Row], cfg: FilesConfig, flag: str,
               expect: tuple[str, ...] | None = None) -> tuple[str, ...]:
  """The fields of the records (sorted); errors name file and line.

  Every record has the prompt field and the same fields as the first (or as
  `expect`: the training files' fields, for the eval files).
  """
  first = rows[0]
  names = tuple(sorted(first.values)) if expect is None else expect
  for row in rows:
    if cfg.prompt_field not in row.values:
      raise ValueError(
          f'{row.where} has no prompt field {cfg.prompt_field!r} '
          f'(config.task.prompt_field); it has {sorted(row.values)}.')
    if tuple(sorted(row.values)) != names:
      have = set(row.values)
      raise ValueError(
          f'{flag}: {row.where} has fields {sorted(have)}, but '
          f'{first.where if expect is None else "the training records"} '
          f'have {list(names)} (missing {sorted(set(names) - have)}, extra '
          f'{sorted(have - set(names))}); every record needs the same '
          'fields.')
    prompt = row.values[cfg.prompt_field]
    if not (isinstance(prompt, str) or (isinstance(prompt, list) and all(
        isinstance(m, dict) for m in prompt))):
      raise ValueError(f'{row.where}: the prompt field {cfg.prompt_field!r} '
                       f'holds {_kind(prompt)}; it must be a string or a list '
                       'of chat messages.')
  return names


def _reward_fields(names: Sequence[str], cfg: FilesConfig) -> tuple[str, ...]:
  # A field named 'completion' that is not the reference (completion_field
  # '') is left out too: a reward function's `completion` is what the model
  # wrote.
  out = tuple(n for n in names if n not in (cfg.prompt_field,
                                             cfg.completion_field,
                                             'completion'))
  clash = [n for n in out if n in RESERVED]
  if clash:
    raise ValueError(f'Record field(s) {clash} collide with the batch\'s own '
                     f'arrays {list(RESERVED)}; rename them in the files.')
  return out


def _field_kinds(rows: Sequence[Row], fields: Sequence[str]) -> dict[str, str]:
  """Each reward field's kind over all rows: 'str', 'int', 'float', 'bool'
  or 'json'; a field of mixed kinds (ints with floats are floats) fails."""
  kinds = {}
  for field in fields:
    seen = {}
    for row in rows:
      value = row.values[field]
      kind = _kind(value)
      if kind == 'int' and not _INT32.min <= value <= _INT32.max:
        raise ValueError(f'{row.where}: field {field!r} = {value} does not fit '
                         'int32; store it as a string or a float.')
      seen.setdefault(kind, row.where)
    if set(seen) == {'int', 'float'}:
      seen = {'float': seen['float']}
    if len(seen) > 1 or not set(seen) <= {'str', 'int', 'float', 'bool',
                                          'json'}:
      detail = ', '.join(f'{k} at {w}' for k, w in seen.items())
      raise ValueError(f'Field {field!r} holds values of more than one kind or '
                       f'an unsupported kind ({detail}); a reward field holds '
                       'strings, numbers, booleans or JSON lists/objects, one '
                       'kind throughout.')
    kinds[field] = next(iter(seen))
  return kinds


def _record(row: Row, cfg: FilesConfig, kinds: dict[str, str],
            has_completion: bool) -> dict[str, Any]:
  record = {'prompt': row.values[cfg.prompt_field],
            'completion': (row.values[cfg.completion_field]
                           if has_completion else '')}
  if has_completion and not isinstance(record['completion'], str):
    raise ValueError(f'{row.where}: the completion field '
                     f'{cfg.completion_field!r} holds '
                     f'{_kind(record["completion"])}, not a string.')
  for field, kind in kinds.items():
    value = row.values[field]
    if kind == 'json':
      value = json.dumps(value, ensure_ascii=False)
    elif kind == 'float':
      value = float(value)
    record[field] = value
  return record


def load(cfg: FilesConfig, data_dir: str) -> base.Splits:
  """Reads and checks the files (records' prompts as given; `prepare`
  renders and measures them)."""
  train_rows = read(cfg.train_files, 'config.task.train_files', 'train',
                    data_dir)
  names = check_rows(train_rows, cfg, 'config.task.train_files')
  if cfg.eval_files.strip():
    test_rows = read(cfg.eval_files, 'config.task.eval_files', 'test',
                     data_dir)
    check_rows(test_rows, cfg, 'config.task.eval_files', names)
    if cfg.max_records:
      train_rows = train_rows[:cfg.max_records]
  else:
    if cfg.max_records:
      train_rows = train_rows[:cfg.max_records]
    if cfg.eval_size >= len(train_rows):
      raise ValueError(f'config.task.eval_size={cfg.eval_size} leaves none of '
                       f'the {len(train_rows)} training records; lower it or '
                       'give config.task.eval_files.')
    held = np.random.default_rng(cfg.split_seed).permutation(
        len(train_rows))[:cfg.eval_size]
    is_test = np.zeros(len(train_rows), bool)
    is_test[held] = True
    test_rows = [r for r, t in zip(train_rows, is_test) if t]
    train_rows = [r for r, t in zip(train_rows, is_test) if not t]
  has_completion = bool(cfg.completion_field) and cfg.completion_field in names
  fields = _reward_fields(names, cfg)
  kinds = _field_kinds([*train_rows, *test_rows], fields)
  return base.Splits(
      train=[_record(r, cfg, kinds, has_completion) for r in train_rows],
      test=[_record(r, cfg, kinds, has_completion) for r in test_rows],
      fields=fields, has_completion=has_completion)


# Preparing: chat template and lengths.


def render(prompt, cfg: FilesConfig, template: chat.ChatTemplate | None
           ) -> str:
  """The text the model is given for one record's prompt."""
  if template is not None:
    return template.render(chat.conversation(prompt, cfg.system_prompt),
                           add_generation_prompt=True)
  if not isinstance(prompt, str):
    raise ValueError(
        f'The prompt field {cfg.prompt_field!r} holds chat messages, but '
        + ('config.task.chat_template is False' if not cfg.chat_template else
           'the tokenizer has no chat template')
        + '; give plain-text prompts or a model with a chat template.')
  return f'{cfg.system_prompt}\n\n{prompt}' if cfg.system_prompt else prompt


def _fit(records: list[dict], split: str, tokenizer, limit: int, key: str,
         flag: str, add_eos: bool) -> tuple[list[dict], int, str]:
  """The records whose `key` fits `limit` tokens; (kept, left out, line)."""
  lengths = [len(tokenizer.encode(r[key], add_eos=add_eos)) for r in records]
  long = [n for n in lengths if n > limit]
  if not long:
    return records, 0, ''
  kept = [r for r, n in zip(records, lengths) if n <= limit]
  what = 'prompts' if key == 'prompt' else 'reference completions (with EOS)'
  line = (f'files task, {split}: {len(long)} of {len(records)} {what} are '
          f'longer than {flag}={limit} tokens (the longest has {max(long)}); '
          f'those records are left out. Raise {flag} to {max(long)} to keep '
          'them' + ('.' if key == 'prompt' else
                    ", or set config.task.completion_field='' if no warm "
                    'start reads them.'))
  if not kept:
    raise ValueError(f'No {split} record fits: ' + line)
  return kept, len(long), line


def prepare(cfg: FilesConfig, splits: base.Splits, tokenizer,
            max_prompt_len: int, max_target_len: int) -> base.Splits:
  """Renders prompts through the chat template, leaves out (and reports)
  records whose prompt or reference completion does not fit, and fixes each
  text field's width."""
  template = chat.of_tokenizer(tokenizer) if cfg.chat_template else None
  out, report, stats = {}, [], {}
  for split, records in (('train', splits.train), ('test', splits.test)):
    records = [{**r, 'prompt': render(r['prompt'], cfg, template)}
               for r in records]
    total = len(records)
    records, long_prompts, line = _fit(records, split, tokenizer,
                                       max_prompt_len, 'prompt',
                                       'config.data.max_prompt_len', False)
    report += [line] if line else []
    long_targets = 0
    if splits.has_completion:
      records, long_targets, line = _fit(records, split, tokenizer,
                                         max_target_len, 'completion',
                                         'config.data.max_target_len', True)
      report += [line] if line else []
    out[split] = records
    stats.update({f'{split}/records': total,
                  f'{split}/long_prompts': long_prompts,
                  f'{split}/long_completions': long_targets})
  text_lengths = {}
  for field in splits.fields or ():
    values = [r[field] for r in (*out['train'], *out['test'])]
    if values and isinstance(values[0], str):
      text_lengths[field] = max(1, *(len(fields_lib.utf8(v)) for v in values))
  report.insert(0, (
      f'files task: {len(out["train"])} training and {len(out["test"])} '
      f'held-out records; reward fields {list(splits.fields or ())}; chat '
      f'template {"from " + template.source if template else "off"}.'))
  return dataclasses.replace(
      splits, train=Records(out['train']), test=Records(out['test']),
      text_lengths=text_lengths, report='\n'.join(report), stats=stats)


SPEC = base.TaskSpec(
    config_cls=FilesConfig, load=load, prepare=prepare, fields=(),
    reward={'exact_string': 1.0},
    description='Prompts (and any reward fields) from JSONL / JSON / Parquet '
    '/ datasets / TFDS files; the fields are found in the data.')
