"""Scores a tool_use run's held-out samples by exact match, whatever reward
the run trained on.

  python -m experiments.tool_use.score WORKDIR [STEP ...]
  python -m experiments.tool_use.score --plot=OUT.png LABEL=WORKDIR ...

Reads WORKDIR/samples/STEP.jsonl (every step there if none is given) and
prints, per step: the exact-match accuracy of the answer (the text after
the last '</result>', or the whole completion when there is none), the same
split by the length of the product, the rate of episodes that call the
calculator, and how many calls copy the operands right. A run whose
`config.reward.terms` is shaped reports that shaped mean as `eval/accuracy`;
this is the figure to compare across rewards. With --plot, the
exact-match accuracy of every step of each run is drawn against the step,
one line per run (and the tool-call rate below it).
"""

import json
import pathlib
import re
import sys

_CALL = re.compile(r'<tool>(.*?)</tool>')


def score(lines: list[dict]) -> dict[str, float]:
  """Exact-match accuracy, by product length, and tool-call rates."""
  right = {5: [0, 0], 6: [0, 0]}
  calls = operands = 0
  for line in lines:
    prompt = line['prompt'].rstrip('=')
    a, b = (int(x) for x in prompt.split('*'))
    product = a * b
    text = line['completion']
    answer = text.rsplit('</result>', 1)[-1].strip()
    call = _CALL.search(text)
    calls += call is not None
    operands += call is not None and call.group(1).strip() == prompt
    tally = right[len(str(product))]
    tally[0] += answer == str(product)
    tally[1] += 1
  n = len(lines)
  return {'accuracy': (right[5][0] + right[6][0]) / n,
          'right_5_digit': right[5][0], 'of_5_digit': right[5][1],
          'right_6_digit': right[6][0], 'of_6_digit': right[6][1],
          'tool_call_rate': calls / n, 'operands_right_rate': operands / n}


def run_scores(workdir, steps=()) -> list[dict]:
  """`score` of WORKDIR/samples/STEP.jsonl for `steps` (default: all)."""
  samples = pathlib.Path(workdir) / 'samples'
  steps = steps or sorted(int(p.stem) for p in samples.glob('[0-9]*.jsonl'))
  if not steps:
    raise SystemExit(f'{samples} holds no STEP.jsonl: give the workdir of a '
                     'tool_use run (its evaluations write them).')
  out = []
  for step in steps:
    path = samples / f'{step}.jsonl'
    lines = [json.loads(l) for l in path.read_text().splitlines() if l]
    out.append({'step': step, **score(lines)})
  return out


def plot(path: str, runs: dict[str, list[dict]]) -> None:
  """Exact-match accuracy and tool-call rate against the step, per run."""
  import matplotlib  # Only --plot needs it.
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt
  fig, (top, bottom) = plt.subplots(
      2, 1, figsize=(6, 5), sharex=True, height_ratios=(3, 1))
  for label, rows in runs.items():
    steps = [r['step'] for r in rows]
    top.plot(steps, [r['accuracy'] for r in rows], marker='o', label=label)
    bottom.plot(steps, [r['tool_call_rate'] for r in rows], marker='.')
  top.set(ylabel='held-out exact match', ylim=(0, 1))
  top.legend(fontsize=8)
  bottom.set(xlabel='GRPO step', ylabel='tool calls', ylim=(0, 1.05))
  for ax in (top, bottom):
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=80)


def main(argv: list[str]) -> None:
  args = argv[1:]
  if not args:
    raise SystemExit(__doc__)
  if args[0].startswith('--plot='):
    pairs = [a.split('=', 1) for a in args[1:]]
    if not pairs or any(len(p) != 2 for p in pairs):
      raise SystemExit('--plot=OUT.png needs LABEL=WORKDIR arguments.')
    plot(args[0].split('=', 1)[1], {k: run_scores(v) for k, v in pairs})
    return
  for row in run_scores(args[0], [int(s) for s in args[1:]]):
    print(json.dumps(row))


if __name__ == '__main__':
  main(sys.argv)
