"""Writes sums_train.jsonl and sums_test.jsonl: "What is a + b?" for every
a, b in 1..20, a seeded quarter of the pairs held out.

  python experiments/rl/data/make_sums.py

Each record: `prompt`, `completion` (the sum, for a supervised warm start)
and `answer` (the sum, an integer, for the numeric_answer verifier).
"""

import json
import os
import random

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
  pairs = [(a, b) for a in range(1, 21) for b in range(1, 21)]
  random.Random(0).shuffle(pairs)
  held_out = len(pairs) // 4
  splits = {'test': pairs[:held_out], 'train': pairs[held_out:]}
  for split, rows in splits.items():
    with open(os.path.join(HERE, f'sums_{split}.jsonl'), 'w') as f:
      for a, b in rows:
        f.write(json.dumps({'prompt': f'What is {a} + {b}?',
                            'completion': str(a + b), 'answer': a + b}) + '\n')


if __name__ == '__main__':
  main()
