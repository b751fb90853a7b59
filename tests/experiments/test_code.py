"""The code experiment's problems: the files load as the files task reads
them, and each held-out problem's reference solution passes its tests in
the sandbox (so a held-out pass rate below 1 is the model's, not the
data's)."""

import json
import os
import re

from jaxrlgen.rewards import code
from jaxrlgen.tasks import files

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    __file__))), 'experiments', 'code', 'data')


def _rows(split):
  with open(os.path.join(DATA, f'tasks_{split}.jsonl'), encoding='utf-8') as f:
    return [json.loads(line) for line in f]


def test_files_load_with_the_reward_fields():
  splits = files.load(files.FilesConfig(
      train_files=os.path.join(DATA, 'tasks_train.jsonl'),
      eval_files=os.path.join(DATA, 'tasks_test.jsonl')), data_dir='')
  assert (len(splits.train), len(splits.test)) == (45, 15)
  assert set(splits.fields) == {'tests', 'solution'}
  prompts = [r['prompt'] for r in (*splits.train, *splits.test)]
  assert len(set(prompts)) == len(prompts)


def test_held_out_solutions_pass_and_wrong_ones_do_not():
  for row in _rows('test'):
    name = re.match(r'def (\w+)\(', row['solution']).group(1)
    # The prompt names the function the tests call.
    assert f'`{name}(' in row['prompt'] and f'{name}(' in row['tests']
    fenced = f'Here:\n```python\n{row["solution"]}```\n'
    assert code.unit_tests(fenced, tests=row['tests']) == 1.0, row['prompt']
  # A program that defines the name but returns nothing useful fails them.
  row = _rows('test')[0]
  name = re.match(r'def (\w+)\(', row['solution']).group(1)
  wrong = f'def {name}(*args):\n  return None\n'
  assert code.unit_tests(wrong, tests=row['tests']) < 1.0
