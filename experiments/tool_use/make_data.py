"""Writes the multiplication problems of the tool-use experiment.

  python -m experiments.tool_use.make_data

Each JSONL record holds a 3-digit x 3-digit product:

  {"prompt": "123*456=",
   "completion": "<tool>123*456</tool><result>56088</result>56088",
   "direct": "56088", "answer": 56088}

`completion` is a demonstration: the whole episode exactly as the multi-turn
stream holds it (model turn 1 ends at the calculator's stop string
`</tool>`, the calculator's observation follows, model turn 2 is the
answer). `direct` is the answer alone, the warm start of the run without a
tool. `answer` goes to the exact-match reward. Train and test problems are
disjoint (as unordered operand pairs). Products are balanced by length:
uniform operands give a 5-digit product only 1 time in 5, and a warm start
that had seen so few left every one of them wrong, where GRPO, with no
success in a group to learn from, could not reach them.
"""

import json
import os
import random

DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'data')
NUM_TRAIN = 2000
NUM_TEST = 256
SEED = 0


def record(a: int, b: int) -> dict:
  """The record of the problem a*b; the demonstration is written in the
  calculator's `tags` format (docs/tools.md)."""
  product = a * b
  call = f'<tool>{a}*{b}</tool>'
  observation = f'<result>{product}</result>'
  return {'prompt': f'{a}*{b}=', 'completion': call + observation + str(product),
          'direct': str(product), 'answer': product}


def problems(rng: random.Random, n: int, seen: set) -> list[tuple[int, int]]:
  """n new pairs of 3-digit operands, none in `seen` (either order), half
  of them (alternately) with a 5-digit product."""
  out = []
  while len(out) < n:
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    key = (min(a, b), max(a, b))
    if key in seen or (a * b < 100_000) != (len(out) % 2 == 0):
      continue
    seen.add(key)
    out.append((a, b))
  return out


def write(path: str, pairs) -> None:
  with open(path, 'w') as f:
    for a, b in pairs:
      f.write(json.dumps(record(a, b)) + '\n')


def main() -> None:
  rng, seen = random.Random(SEED), set()
  test = problems(rng, NUM_TEST, seen)
  train = problems(rng, NUM_TRAIN, seen)
  os.makedirs(DATA, exist_ok=True)
  write(os.path.join(DATA, 'train.jsonl'), train)
  write(os.path.join(DATA, 'test.jsonl'), test)


if __name__ == '__main__':
  main()
