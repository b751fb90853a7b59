"""The files task: JSONL / JSON / Parquet / datasets dirs read in a fixed
order, errors that name the file and line, long prompts left out and
reported, chat templates, and text fields that reach a host reward inside
jit as the exact strings."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import rewards
from jaxrlgen import schema
from jaxrlgen import tasks
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.data import chat
from jaxrlgen.data.pipeline import batch_indices
from jaxrlgen.data.pipeline import get_batch
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.tasks import files
from tests.rewards.test_functions import text_rollout

TOK = ByteTokenizer()
SPEC = tasks.get('files')


def _write_jsonl(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return path


def _records(n, start=0):
  return [{'prompt': f'q{i}', 'completion': f'a{i}', 'answer': f'ans {i}',
           'n': i, 'w': 0.5 if i % 2 else 1, 'meta': {'id': i}}
          for i in range(start, start + n)]


def _open(tmp_path, max_prompt_len=8, max_target_len=8, tokenizer=TOK,
          **fields):
  cfg = schema.parse(files.FilesConfig, fields, 'config.task')
  return tasks.open_splits(SPEC, cfg, str(tmp_path / 'data'), tokenizer,
                           max_prompt_len, max_target_len)


def test_jsonl_and_parquet_in_order_with_fields(tmp_path):
  pq = pytest.importorskip('pyarrow.parquet')
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  _write_jsonl(tmp_path / 'b.jsonl', _records(3))
  _write_jsonl(tmp_path / 'a.jsonl', _records(2, start=10))
  pq.write_table(pa.Table.from_pylist(_records(4, start=20)),
                 tmp_path / 'c.parquet')
  _write_jsonl(tmp_path / 'test.jsonl', _records(2, start=30))
  splits = _open(tmp_path, train_files=f'{tmp_path}/*.jsonl,{tmp_path}/c.*',
                 eval_files=str(tmp_path / 'test.jsonl'))
  # test.jsonl matches the glob too: globs are sorted, files in order.
  order = [r['prompt'] for r in splits.train]
  assert order == ['q10', 'q11', 'q0', 'q1', 'q2', 'q30', 'q31',
                   'q20', 'q21', 'q22', 'q23']
  assert [r['prompt'] for r in splits.test] == ['q30', 'q31']
  assert splits.fields == ('answer', 'meta', 'n', 'w')
  assert splits.has_completion
  assert splits.text_lengths == {'answer': 6, 'meta': len('{"id": 22}')}
  # Records are addressable by index: a batch is f(seed, step).
  batch = tasks.collate(
      get_batch(splits.train, batch_indices(len(splits.train), 4, 3, 0)),
      TOK, 8, 8, splits.fields, splits.text_lengths)
  again = _open(tmp_path, train_files=f'{tmp_path}/*.jsonl,{tmp_path}/c.*',
                eval_files=str(tmp_path / 'test.jsonl'))
  batch2 = tasks.collate(
      get_batch(again.train, batch_indices(len(again.train), 4, 3, 0)),
      TOK, 8, 8, again.fields, again.text_lengths)
  for key in batch:
    np.testing.assert_array_equal(batch[key], batch2[key])
  assert batch['answer'].dtype == np.int16 and batch['answer'].shape == (4, 6)
  assert batch['n'].dtype == np.int32 and batch['w'].dtype == np.float32
  prompts = TOK.decode_batch(batch['prompt'])
  assert rewards.fields.decode_texts(batch['answer']) == [
      'ans ' + p[1:] for p in prompts]
  assert [json.loads(m) for m in rewards.fields.decode_texts(batch['meta'])
          ] == [{'id': int(p[1:])} for p in prompts]


def test_long_prompts_are_left_out_and_reported(tmp_path):
  records = _records(6)
  records[1]['prompt'] = 'x' * 12
  records[4]['prompt'] = 'y' * 9
  records[3]['completion'] = 'a long'
  _write_jsonl(tmp_path / 'train.jsonl', records)
  splits = _open(tmp_path, train_files=str(tmp_path / 'train.jsonl'),
                 eval_size=1)
  assert len(splits.train) + len(splits.test) == 4
  assert splits.stats['train/long_prompts'] + splits.stats[
      'test/long_prompts'] == 2
  assert 'config.data.max_prompt_len=8' in splits.report
  assert 'the longest has 12' in splits.report
  assert all(len(r['prompt']) <= 8 for r in splits.train)
  with pytest.raises(ValueError, match='No train record fits'):
    _open(tmp_path, max_prompt_len=1,
          train_files=str(tmp_path / 'train.jsonl'), eval_size=1)
  # Reference completions too long for the warm start are left out as well,
  # unless the task is told to ignore them.
  test = _write_jsonl(tmp_path / 'test.jsonl', _records(2))
  splits = _open(tmp_path, max_target_len=3, max_prompt_len=12,
                 train_files=str(tmp_path / 'train.jsonl'),
                 eval_files=str(test))
  assert len(splits.train) == 5 and len(splits.test) == 2
  assert 'config.data.max_target_len=3' in splits.report
  splits = _open(tmp_path, max_target_len=3, max_prompt_len=12,
                 train_files=str(tmp_path / 'train.jsonl'),
                 eval_files=str(test), completion_field='')
  assert len(splits.train) == 6
  assert not splits.has_completion and 'completion' not in splits.fields


def test_bad_input_names_flag_file_and_line(tmp_path):
  with pytest.raises(ValueError, match='train_files'):
    schema.parse(files.FilesConfig, {}, 'config.task')
  with pytest.raises(ValueError, match=r"config.task.train_files: '.*nope\*"
                     r".jsonl' matches no file"):
    _open(tmp_path, train_files=f'{tmp_path}/nope*.jsonl', eval_size=1)
  records = _records(3)
  del records[2]['prompt']
  _write_jsonl(tmp_path / 'a.jsonl', records)
  with pytest.raises(ValueError) as e:
    _open(tmp_path, train_files=str(tmp_path / 'a.jsonl'), eval_size=1)
  msg = str(e.value)
  assert 'a.jsonl line 3' in msg and "'prompt'" in msg
  assert 'config.task.prompt_field' in msg and "'answer'" in msg
  records = _records(3)
  records[1]['extra'] = 1
  _write_jsonl(tmp_path / 'b.jsonl', records)
  with pytest.raises(ValueError, match=r"b.jsonl line 2 has fields .*extra"):
    _open(tmp_path, train_files=str(tmp_path / 'b.jsonl'), eval_size=1)
  records = _records(3)
  records[2]['n'] = 'three'
  _write_jsonl(tmp_path / 'c.jsonl', records)
  with pytest.raises(ValueError, match=r"'n' holds .*c.jsonl line 3"):
    _open(tmp_path, train_files=str(tmp_path / 'c.jsonl'), eval_size=1)
  (tmp_path / 'd.jsonl').write_text('{"prompt": "a"}\n{"prompt": \n')
  with pytest.raises(ValueError, match='d.jsonl line 2 is not JSON'):
    _open(tmp_path, train_files=str(tmp_path / 'd.jsonl'), eval_size=1)


class ChatTokenizer(ByteTokenizer):
  chat_template = ("{% for m in messages %}<{{ m.role }}>{{ m.content }}"
                   "{% endfor %}{% if add_generation_prompt %}<a>{% endif %}")


def test_chat_template_system_prompt_and_json_and_arrow(tmp_path):
  import pyarrow as pa  # pylint: disable=g-import-not-at-top
  # A datasets save_to_disk directory: arrow stream shards and state.json.
  folder = tmp_path / 'ds'
  folder.mkdir()
  table = pa.Table.from_pylist([{'question': 'hi', 'answer': 'a'}])
  with pa.ipc.new_stream(str(folder / 'data-00000-of-00001.arrow'),
                         table.schema) as writer:
    writer.write_table(table)
  (folder / 'state.json').write_text(json.dumps(
      {'_data_files': [{'filename': 'data-00000-of-00001.arrow'}]}))
  (tmp_path / 'eval.json').write_text(json.dumps([
      {'question': [{'role': 'user', 'content': 'yo'}], 'answer': 'b'}]))
  splits = _open(tmp_path, max_prompt_len=40, tokenizer=ChatTokenizer(),
                 train_files=str(folder),
                 eval_files=str(tmp_path / 'eval.json'),
                 prompt_field='question', system_prompt='S')
  assert splits.train[0]['prompt'] == '<system>S<user>hi<a>'
  assert splits.test[0]['prompt'] == '<system>S<user>yo<a>'
  assert not splits.has_completion and splits.fields == ('answer',)
  # Without the template, the system prompt goes first as plain text.
  splits = _open(tmp_path, train_files=str(folder), eval_size=0,
                 eval_files=str(folder), prompt_field='question',
                 system_prompt='S', max_prompt_len=40)
  assert splits.train[0]['prompt'] == 'S\n\nhi'
  with pytest.raises(ValueError, match='holds chat messages'):
    _open(tmp_path, train_files=str(folder), prompt_field='question',
          eval_files=str(tmp_path / 'eval.json'))
  # A template that refuses to render names its flag.
  class Refusing(ByteTokenizer):
    chat_template = "{{ raise_exception('no system role') }}"
  with pytest.raises(chat.ChatTemplateError,
                     match='config.task.chat_template.*no system role'):
    _open(tmp_path, tokenizer=Refusing(), train_files=str(folder),
          eval_files=str(folder), prompt_field='question')


def test_text_fields_reach_a_host_reward_exactly_inside_jit():
  answers = ['Ünïcode ∑ 🙂', '', 'nul\x00byte  ', '42']
  records = [{'prompt': f'p{i}', 'completion': 'c', 'answer': a, 'n': i}
             for i, a in enumerate(answers)]
  width = max(len(a.encode()) for a in answers) + 3
  batch = tasks.collate(records, TOK, 4, 4, ('answer', 'n'),
                        {'answer': width})
  assert batch['answer'].shape == (4, width)
  seen = []

  def score(completion, answer, n, prompt):
    seen.append((completion, answer, n, prompt))
    assert isinstance(answer, str) and isinstance(n, int)
    return float(completion == answer) + n

  reward = rewards.host.text_reward(score, TOK, fields=('answer', 'n'),
                                    with_prompt=True)
  group = 2  # Fields repeat over each prompt's group of samples.
  repeated = rollout_lib.repeat_batch(
      {k: jnp.asarray(v) for k, v in batch.items()}, group)
  completions = [a if j == 0 else 'no' for a in answers for j in range(group)]
  rollout = text_rollout(completions, [f'p{i}' for i in range(4)
                                   for _ in range(group)])
  got = jax.jit(reward)(rollout, repeated)
  np.testing.assert_array_equal(
      got, [1 + i if j == 0 else i for i in range(4) for j in range(group)])
  assert sorted({s[1] for s in seen}) == sorted(answers)
  assert {(s[2], s[3]) for s in seen} == {(i, f'p{i}') for i in range(4)}


def test_tfds_source_reads_the_prepared_dataset_in_order(tmp_path):
  from jaxrlgen.tasks import arithmetic  # pylint: disable=g-import-not-at-top
  built = tasks.get('arithmetic').load(
      arithmetic.ArithmeticConfig(num_train=16, num_test=4), str(tmp_path))
  version = next((tmp_path / 'arithmetic').glob('*/*'))
  name = f'tfds:arithmetic/{version.parent.name}:{version.name}'
  cfg = files.FilesConfig(train_files=name, eval_files=name + ':test')
  splits = tasks.open_splits(SPEC, cfg, str(tmp_path), TOK, 8, 4)
  assert splits.fields == ('a', 'answer', 'b')
  assert [r['prompt'] for r in splits.test] == [
      r['prompt'].decode() for r in built.test]
  assert [r['answer'] for r in splits.train] == [
      int(r['answer']) for r in built.train]
  with pytest.raises(ValueError, match=r"train_files: 'tfds:nope' does not "
                     "open .*config.data.data_dir"):
    tasks.open_splits(SPEC, files.FilesConfig(train_files='tfds:nope',
                                              eval_size=1),
                      str(tmp_path), TOK, 8, 4)
