"""Tasks: the registry, collation of records into padded arrays, and the
arithmetic task's source."""

import numpy as np
import pytest

from jaxrlgen import tasks
from jaxrlgen.data.pipeline import batch_indices
from jaxrlgen.data.pipeline import get_batch
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.tasks import arithmetic

PAD, EOS = ByteTokenizer.pad_id, ByteTokenizer.eos_id
FIELDS = arithmetic.SPEC.fields


def _records():
  return [
      {'prompt': b'17+5=', 'completion': b'22', 'answer': 22},
      {'prompt': '3+4=', 'completion': '7', 'answer': np.int32(7)},
  ]


def test_collate_shapes_padding_and_eos():
  tok = ByteTokenizer()
  batch = tasks.collate(_records(), tok, max_prompt_len=6, max_target_len=4,
                        fields=FIELDS)
  assert batch['prompt'].dtype == np.int32 and batch['prompt'].shape == (2, 6)
  assert batch['target'].dtype == np.int32 and batch['target'].shape == (2, 4)
  assert batch['prompt_mask'].dtype == np.bool_
  assert batch['target_mask'].dtype == np.bool_
  np.testing.assert_array_equal(batch['answer'], np.array([22, 7], np.int32))
  assert batch['answer'].dtype == np.int32
  # Left-padded prompts, no BOS.
  np.testing.assert_array_equal(batch['prompt'][0], [PAD, *b'17+5='])
  np.testing.assert_array_equal(batch['prompt'][1], [PAD, PAD, *b'3+4='])
  np.testing.assert_array_equal(batch['prompt_mask'],
                                [[0, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]])
  # Completion then EOS, right-padded; the mask covers the EOS.
  np.testing.assert_array_equal(batch['target'],
                                [[*b'22', EOS, PAD], [*b'7', EOS, PAD, PAD]])
  np.testing.assert_array_equal(batch['target_mask'],
                                [[1, 1, 1, 0], [1, 1, 0, 0]])
  assert tok.decode_batch(batch['target']) == ['22', '7']


def test_collate_errors_name_field_and_example():
  tok = ByteTokenizer()
  with pytest.raises(ValueError) as e:
    tasks.collate(_records(), tok, max_prompt_len=4, max_target_len=4)
  msg = str(e.value)
  assert 'config.data.max_prompt_len=4' in msg and "'17+5='" in msg
  assert 'Record 0' in msg and 'at least 5' in msg
  # The EOS counts towards the target length.
  with pytest.raises(ValueError) as e:
    tasks.collate(_records(), tok, max_prompt_len=6, max_target_len=2)
  msg = str(e.value)
  assert 'config.data.max_target_len=2' in msg and "'22'" in msg
  assert 'at least 3' in msg


def test_end_to_end_on_arithmetic_source(tmp_path):
  spec = tasks.get('arithmetic')
  source = spec.load(arithmetic.ArithmeticConfig(num_train=64, num_test=8),
                     str(tmp_path)).train
  tok = ByteTokenizer()
  shares = [
      tasks.collate(
          get_batch(source, batch_indices(len(source), 16, 5, 0, p, 2)), tok,
          max_prompt_len=8, max_target_len=4, fields=FIELDS) for p in range(2)
  ]
  for batch in shares:
    prompts = tok.decode_batch(batch['prompt'])
    sums = [sum(map(int, p.rstrip('=').split('+'))) for p in prompts]
    np.testing.assert_array_equal(sums, batch['answer'])
    assert tok.decode_batch(batch['target']) == [str(s) for s in sums]


def test_collate_fields_and_missing_field():
  tok = ByteTokenizer()
  records = [{'prompt': 'ab=', 'completion': 'ba', 'score': 0.5},
             {'prompt': 'c=', 'completion': 'c', 'score': 2}]
  batch = tasks.collate(records, tok, 4, 3, fields=('score', 'target'))
  assert batch['score'].dtype == np.float32
  np.testing.assert_array_equal(batch['score'], [0.5, 2.0])
  with pytest.raises(ValueError, match="Record 1 has no field 'score'"):
    tasks.collate([records[0], {'prompt': 'c=', 'completion': 'c'}], tok, 4,
                  3, fields=('score',))
  # Strings become text fields (tests/tasks/test_files.py); a field that
  # mixes strings and numbers is an error.
  with pytest.raises(ValueError, match="'name' holds"):
    tasks.collate([{**records[0], 'name': 'x'}, {**records[1], 'name': 3}],
                  tok, 4, 3, fields=('name',))


def test_registry_names_and_import_paths():
  assert 'arithmetic' in tasks.TASKS
  assert tasks.get('jaxrlgen.tasks.arithmetic:SPEC') is arithmetic.SPEC
  with pytest.raises(ValueError, match=r"config\.task\.name='nope'.*arithmetic"):
    tasks.get('nope')
  with pytest.raises(ValueError, match='not a jaxrlgen.tasks.base.TaskSpec'):
    tasks.get('jaxrlgen.tasks.arithmetic:load')


def test_arithmetic_config_checks():
  with pytest.raises(ValueError, match='num_train'):
    arithmetic.ArithmeticConfig(max_operand=3, num_train=10, num_test=10)
