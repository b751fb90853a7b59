"""Scores completions of the code problems with the `unit_tests` reward.

  python -m jaxrlgen.generate --model=WORKDIR --prompts=experiments/code/data/tasks_test.jsonl \
      --out=OUT.jsonl --temperature=1.0 --num_samples=8 --max_new_tokens=80
  python experiments/code/score.py OUT.jsonl [MORE.jsonl ...]

Reads `jaxrlgen.generate`'s output (each record's `tests` and its
`completion`) and prints per file: the mean
fraction of asserts passed, the fraction of completions passing every assert,
the fraction passing any, and the number of problems with at least one
completion passing every assert (of how many), with the fraction of
completions cut at the token budget when the file says.
"""

import json
import sys

from jaxrlgen.rewards import code


def score(path: str) -> dict:
  """The figures above for one JSONL file of records with `tests` and
  `completion`."""
  rows = [json.loads(line) for line in open(path, encoding='utf-8')
          if line.strip()]
  rewards, solved = [], {}
  for row in rows:
    r = code.unit_tests(row['completion'], tests=row['tests'], timeout_s=5.0)
    rewards.append(r)
    solved[row['tests']] = solved.get(row['tests'], False) or r == 1.0
  n = len(rewards)
  out = {'completions': n,
         'mean_reward': sum(rewards) / n,
         'all_pass': sum(r == 1.0 for r in rewards) / n,
         'any_pass': sum(r > 0 for r in rewards) / n,
         'problems_solved': f'{sum(solved.values())}/{len(solved)}'}
  if 'finished' in rows[0]:
    out['cut_at_budget'] = sum(not r['finished'] for r in rows) / n
  return out


def main(paths):
  for path in paths:
    print(path, json.dumps(score(path)))


if __name__ == '__main__':
  main(sys.argv[1:])
