"""The comparison drivers (`experiments/compare.py`, used by the arithmetic
and digits experiments): their files, the stages each seed's algorithms
share, the tables against NumPy, and a rerun that finds every run done."""

import dataclasses
import json
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

from experiments import compare
from experiments.arithmetic import compare as arithmetic_compare
from experiments.ddpo_digits import compare as digits_compare
from jaxrlgen.train import writers

SEEDS = ('0', '1')
_ROOT = pathlib.Path(__file__).resolve().parents[2]  # The repository.

# Smoke sizes, with a longer warm start on smaller sums for the arithmetic so
# that held-out accuracy is not 0 everywhere.
ARITHMETIC = dict(
    experiment=arithmetic_compare.EXPERIMENT, algorithms=('grpo', 'ppo'),
    overrides={'task.max_operand': 12, 'task.num_train': 100,
               'task.num_test': 64, 'sft.steps': 60,
               'sft.optimizer.learning_rate': 3e-3},
    # The stage files, and the first evaluation's figures.
    stage_file='sft/metrics.jsonl', first_eval=('eval/accuracy',
                                                'eval/mean_length'))
DIGITS = dict(
    experiment=digits_compare.EXPERIMENT, algorithms=('ddpo_is', 'grpo'),
    overrides={}, stage_file='pretrain/metrics.jsonl',
    first_eval=('eval/reward', 'eval/class_accuracy'))


def _stat(values, signed):
  return (f'{np.mean(values):{"+" if signed else ""}.3f} ± '
          f'{np.std(values, ddof=1):.3f}')


def _rows(text: str, first_cell: str) -> list[list[str]]:
  """The cells of the table rows (after the header) that follow the header
  row whose first cell is `first_cell`."""
  lines = text.splitlines()
  start = next(i for i, line in enumerate(lines)
               if line.startswith(f'| {first_cell} |'))
  rows = []
  for line in lines[start + 2:]:
    if not line.startswith('|'):
      break
    rows.append([c.strip() for c in line.strip('|').split('|')])
  return rows


@pytest.mark.slow  # 8 smoke runs and the reports (~5 min on 2 busy cores).
@pytest.mark.parametrize('case', [ARITHMETIC, DIGITS],
                         ids=['arithmetic', 'digits'])
def test_driver_runs_shares_reports_and_skips(tmp_path, case):
  experiment, algorithms = case['experiment'], case['algorithms']
  workdir = tmp_path / 'cmp'
  text = compare.compare(experiment, str(workdir), algorithms, SEEDS,
                         'smoke', case['overrides'])

  for name in ('compare.json', 'compare.md', 'compare.png'):
    assert (workdir / name).exists(), name
  assert (workdir / 'compare.md').read_text() == text
  summaries = {s: {a: writers.read_summary(str(workdir / f'seed{s}' / a))
                   for a in algorithms} for s in SEEDS}
  saved = json.loads((workdir / 'compare.json').read_text())
  assert saved['runs'] == summaries

  # Every algorithm of a seed starts from the same stages: the same
  # training lines (copied, or retrained identically where a model with
  # another head cannot restore them) and the same first evaluation.
  for seed in SEEDS:
    stage_lines, first_evals = [], []
    for name in algorithms:
      run_dir = workdir / f'seed{seed}' / name
      stage_lines.append([
          {k: v for k, v in r.items() if k not in ('step_time',
                                                   'steps_per_second')}
          for r in writers.read_metrics(str(run_dir / case['stage_file'].
                                            rpartition('/')[0]))])
      first = next(r for r in writers.read_metrics(str(run_dir))
                   if case['first_eval'][0] in r)
      assert first['step'] == 0
      first_evals.append([first[k] for k in case['first_eval']])
    assert stage_lines[0] and all(s == stage_lines[0] for s in stage_lines)
    assert all(f == first_evals[0] for f in first_evals), first_evals
  before = experiment.headline[0].key
  assert summaries['0'][algorithms[0]][before] == \
      summaries['0'][algorithms[1]][before]
  if experiment.share_key is None:  # Copied, not trained again.
    copies = [(workdir / 'seed0' / a / case['stage_file']).read_bytes()
              for a in algorithms]
    assert copies[0] == copies[1]

  # The tables against NumPy over the runs' own summaries.
  rows = _rows(text, 'algorithm')
  assert [r[0] for r in rows] == list(algorithms)
  for row in rows:
    for column, cell in zip(experiment.headline, row[1:]):
      values = [summaries[s][row[0]][column.key] for s in SEEDS]
      assert cell == _stat(values, column.signed), (row[0], column.key)
      stats = saved['aggregate'][row[0]][column.key]
      np.testing.assert_allclose(
          [stats['mean'], stats['std'], stats['min'], stats['max']],
          [np.mean(values), np.std(values, ddof=1), min(values),
           max(values)], rtol=1e-12)
  per_seed = _rows(text, 'seed')
  assert [(r[0], r[1]) for r in per_seed] == [
      (s, a) for s in SEEDS for a in algorithms]
  for seed, name, *cells in per_seed:
    first = experiment.per_seed[0]
    assert cells[0] == ' -> '.join(
        f'{summaries[seed][name][k]:.3f}' for k in first.keys)

  # A rerun finds every run finished: nothing is run, the summaries (their
  # wall times too) and the tables stay as they were.
  files = {p: p.read_bytes() for p in workdir.glob('seed*/*/summary.json')}
  def must_not_run(config, run_dir):
    raise AssertionError(f'{run_dir} ran again')
  again = compare.compare(dataclasses.replace(experiment, run=must_not_run),
                          str(workdir), algorithms, SEEDS, 'smoke',
                          case['overrides'])
  assert again == text
  assert {p: p.read_bytes() for p in files} == files

  # The command line finds them finished too, with the same overrides.
  module = re.sub(r'/config\.py$', '/compare', experiment.config_file)
  command = [sys.executable, '-m', module.replace('/', '.'),
             f'--workdir={workdir}', f'--algos={",".join(algorithms)}',
             f'--seeds={",".join(SEEDS)}',
             f'--config={experiment.config_file}:smoke'] + [
                 f'--config.{k}={v}' for k, v in case['overrides'].items()]
  (workdir / 'compare.md').unlink()
  subprocess.run(command, check=True, capture_output=True, cwd=_ROOT)
  assert (workdir / 'compare.md').read_text() == text
  assert {p: p.read_bytes() for p in files} == files


def _summary(before, after):
  return {'eval/accuracy_before': before, 'eval/accuracy_after': after,
          'eval/accuracy_gain': after - before, 'wall_time_s': 60.0,
          'mesh': {'data': 1}}


def test_tables_against_numpy():
  results = {'0': {'grpo': _summary(0.1, 0.3), 'ppo': _summary(0.1, 0.25)},
             '1': {'grpo': _summary(0.2, 0.2), 'ppo': _summary(0.2, 0.5)},
             '3': {'grpo': _summary(0.05, 0.4), 'ppo': _summary(0.05, 0.1)}}
  text = compare.tables(arithmetic_compare.EXPERIMENT, results)
  assert text.startswith('Mean ± sample standard deviation over 3 seeds '
                         '(0, 1, 3).')
  rows = _rows(text, 'algorithm')
  after = np.array([[0.3, 0.2, 0.4], [0.25, 0.5, 0.1]])
  before = np.array([0.1, 0.2, 0.05])
  for row, a in zip(rows, after):
    assert row == [row[0], _stat(before, False), _stat(a, False),
                   _stat(a - before, True)]
  assert rows[0][3] == '+0.183 ± 0.176'  # By hand: gains 0.2, 0, 0.35.
  assert _rows(text, 'seed')[1] == ['0', 'ppo', '0.100 -> 0.250', '+0.150',
                                    '60 s']


def test_configs_per_algorithm_and_bad_input():
  experiment = arithmetic_compare.EXPERIMENT
  by_algo = compare.configs(experiment, ['grpo', 'ppo'], 'ppo,smoke',
                            {'total_steps': 7, 'rl.temperature': 0.5})
  assert list(by_algo) == ['grpo', 'ppo']
  grpo, ppo = by_algo['grpo'], by_algo['ppo']
  assert (grpo.algo.name, ppo.algo.name) == ('grpo', 'ppo')
  # Each algorithm's own variant (learning rate, value head), the other
  # variants (smoke) and every override.
  assert (grpo.rl.optimizer.learning_rate,
          ppo.rl.optimizer.learning_rate) == (5e-4, 2e-4)
  assert not grpo.model.value_head and ppo.model.value_head
  assert grpo.model.num_layers == ppo.model.num_layers == 1
  assert grpo.total_steps == ppo.total_steps == 7
  assert grpo.rl.temperature == ppo.rl.temperature == 0.5
  # The warm start is shared only by runs with the same model.
  assert experiment.share_key(grpo) != experiment.share_key(ppo)
  rloo = compare.configs(experiment, ['rloo'], 'smoke', {})['rloo']
  assert experiment.share_key(grpo) == experiment.share_key(rloo)

  with pytest.raises(ValueError, match=r"unknown \['nope'\].*'grpo'"):
    compare.configs(experiment, ['grpo', 'nope'], '', {})
  with pytest.raises(ValueError, match='total_stepz'):
    compare.configs(experiment, ['grpo'], '', {'total_stepz': 3})
  with pytest.raises(ValueError, match='learning_rate'):  # The schema's.
    compare.configs(experiment, ['grpo'], '',
                    {'rl.optimizer.learning_rate': -1.0})
