"""The soak: the demo's model trains for 20,000 steps; does its memory grow?

  nice -n 19 python -m experiments.benchmarks.soak \
      --workdir=/tmp/soak --out=experiments/benchmarks/results/soak [--json]

Runs the demo (`experiments/arithmetic/config.py:grpo`, its model and the
generic text_rl recipe and loop, unchanged) as a child process with a small
batch -- 2 prompts x 4 samples per step -- and evaluation and checkpoints
every `--every_k` steps, so that the soak also crosses those paths many
times. While it runs, the child's resident memory (RSS, from /proc through
psutil) and its OS thread count are sampled every `--sample_s` seconds and
matched to the last step the run logged in `metrics.jsonl`.

Writes under `--out`: `curve.json` (every sample: seconds, step, RSS MiB,
threads; and the verdict) and `curve.png`. The verdict compares RSS after
warm-up (the first sample at or past `--warmup_steps`) with RSS when the
last step is logged (before the final evaluation and plots), and fits a least-squares slope (MiB per 1,000 steps) to the
samples past warm-up. `--max_minutes` stops the child early (SIGTERM, then
SIGKILL) when the machine cannot give it the full run; the verdict then
says how many steps it reached.
"""

import json
import os
import signal
import subprocess
import sys
import time

from absl import app
from absl import flags
import numpy as np
import psutil

_STEPS = flags.DEFINE_integer('steps', 20_000, 'RL steps.')
_WORKDIR = flags.DEFINE_string('workdir', '/tmp/jaxrlgen_soak',
                               'The run\'s workdir (emptied first).')
_OUT = flags.DEFINE_string('out', '', 'Where curve.json and curve.png go; '
                           "'' for the workdir.")
_SAMPLE_S = flags.DEFINE_float('sample_s', 1.0, 'Seconds between samples.')
_WARMUP = flags.DEFINE_integer('warmup_steps', 2_000,
                               'Step after which memory must stay flat.')
_EVERY_K = flags.DEFINE_integer('every_k', 1_000,
                                'Steps between evaluations and checkpoints.')
_MAX_MINUTES = flags.DEFINE_float('max_minutes', 0.0,
                                  'Stop the run after this long; 0: never.')
_OVERRIDE = flags.DEFINE_multi_string(
    'override', [], 'More config overrides, e.g. '
    '--override=rl.optimizer.learning_rate=5e-5.')
_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object last.')

CONFIG = 'experiments/arithmetic/config.py:grpo'
MIB = 1 << 20


def overrides(steps: int, every_k: int) -> list[str]:
  """The demo with a small batch; the rest of its config as it is."""
  return [
      'rl.batch_size=8', 'rl.group_size=4',  # 2 prompts x 4 samples.
      'sft.log_every=100',  # The demo's warm start (600 steps).
      f'total_steps={steps}', 'log_every=100',
      f'checkpoint_every={every_k}', f'eval.every={every_k}',
      'eval.num_examples=64', 'eval.batch_size=64',
  ]


def last_step(metrics_path: str, offset: int, step: int) -> tuple[int, int]:
  """The last `step` appended to metrics.jsonl since byte `offset`."""
  try:
    with open(metrics_path, 'rb') as f:
      f.seek(offset)
      data = f.read()
  except FileNotFoundError:
    return offset, step
  end = data.rfind(b'\n') + 1  # A half-written last line waits.
  for line in data[:end].splitlines():
    row = json.loads(line)
    if 'step' in row and 'reward/mean' in row:  # RL rows, not warm start.
      step = max(step, int(row['step']))
  return offset + end, step


def commit() -> str:
  try:
    return subprocess.run(['git', 'rev-parse', '--short', 'HEAD'],
                          capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return 'unknown'


def verdict(samples: list[dict], warmup_steps: int) -> dict:
  """RSS when RL starts, after warm-up and at the last step; the slope past
  warm-up."""
  rss = np.array([s['rss_mib'] for s in samples])
  steps = np.array([s['step'] for s in samples])
  last = int(steps.max())
  at_last = int(np.argmax(steps == last))  # Before the final eval and plots.
  result = {'samples': len(samples), 'last_step': last,
            'rss_peak_mib': float(rss.max()),
            'rss_last_step_mib': float(rss[at_last]),
            'rss_exit_mib': float(rss[-1])}
  if (steps > 0).any():  # The first RL step logged: everything is built.
    result['rss_first_logged_step_mib'] = float(rss[np.argmax(steps > 0)])
  late = (steps >= warmup_steps) & (np.arange(len(steps)) <= at_last)
  if late.sum() >= 2 and steps[late].max() > steps[late].min():
    first = int(np.argmax(late))
    slope, _ = np.polyfit(steps[late] / 1000.0, rss[late], 1)
    result.update(
        warmup_step=int(steps[first]), rss_after_warmup_mib=float(rss[first]),
        growth_after_warmup_mib=float(rss[at_last] - rss[first]),
        min_after_warmup_mib=float(rss[late].min()),
        max_after_warmup_mib=float(rss[late].max()),
        slope_mib_per_1k_steps=float(slope))
  return result


def plot(samples: list[dict], result: dict, path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
  steps = [s['step'] for s in samples]
  fig, ax = plt.subplots(figsize=(7, 3.5))
  ax.plot(steps, [s['rss_mib'] for s in samples], lw=1)
  ax.axvline(_WARMUP.value, color='grey', ls=':', lw=1)
  ax.set_xlabel('RL step')
  ax.set_ylabel('resident memory (MiB)')
  slope = result.get('slope_mib_per_1k_steps')
  ax.set_title(f'soak: demo model, batch 8; {result["last_step"]:,} steps'
               + (f', slope {slope:+.2f} MiB / 1k steps' if slope is not None
                  else ''))
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def main(argv):
  del argv
  workdir, out = _WORKDIR.value, _OUT.value or _WORKDIR.value
  if os.path.exists(os.path.join(workdir, 'metrics.jsonl')):
    raise SystemExit(f'--workdir={workdir} holds a run; the soak starts '
                     'from scratch (give an empty or new directory).')
  os.makedirs(out, exist_ok=True)
  cmd = [sys.executable, '-m', 'experiments.main', f'--config={CONFIG}',
         f'--workdir={workdir}',
         *(f'--config.{o}' for o in overrides(_STEPS.value, _EVERY_K.value)
           + _OVERRIDE.value)]
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  log = open(os.path.join(out, 'run.log'), 'w')
  start = time.monotonic()
  child = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
  proc = psutil.Process(child.pid)
  metrics = os.path.join(workdir, 'metrics.jsonl')
  samples, offset, step, stopped = [], 0, 0, False
  while child.poll() is None:
    try:
      if proc.status() == psutil.STATUS_ZOMBIE:  # Exited; not yet reaped.
        break
      rss, threads = proc.memory_info().rss / MIB, proc.num_threads()
    except psutil.NoSuchProcess:
      break
    offset, step = last_step(metrics, offset, step)
    samples.append({'s': round(time.monotonic() - start, 2), 'step': step,
                    'rss_mib': round(rss, 2), 'threads': threads})
    if (_MAX_MINUTES.value and not stopped
        and time.monotonic() - start > 60 * _MAX_MINUTES.value):
      child.send_signal(signal.SIGTERM)
      stopped = True
      try:
        child.wait(60)
      except subprocess.TimeoutExpired:
        child.kill()
    time.sleep(_SAMPLE_S.value)
  child.wait()
  log.close()
  _, step = last_step(metrics, offset, step)
  if not samples:
    raise SystemExit(f'The run exited at once (status {child.returncode}); '
                     f'see {out}/run.log.')
  result = verdict(samples, _WARMUP.value)
  result.update(exit_code=child.returncode, stopped_early=stopped,
                last_logged_step=step, target_steps=_STEPS.value,
                wall_s=round(time.monotonic() - start, 1),
                threads_start=samples[0]['threads'],
                threads_end=samples[-1]['threads'],
                command=' '.join(cmd[1:]), commit=commit())
  summary = os.path.join(workdir, 'summary.json')
  if os.path.exists(summary):  # Whether the policy learnt meanwhile.
    with open(summary) as f:
      result.update({k: v for k, v in json.load(f).items()
                     if k.startswith('eval/accuracy')})
  with open(os.path.join(out, 'curve.json'), 'w') as f:
    json.dump({'verdict': result, 'samples': samples}, f)
  plot(samples, result, os.path.join(out, 'curve.png'))
  width = max(len(k) for k in result)
  for key, value in result.items():
    print(f'{key:<{width}}  {value}')
  if _JSON.value:
    print(json.dumps(result))
  if child.returncode and not stopped:
    raise SystemExit(f'The run failed (status {child.returncode}); see '
                     f'{out}/run.log.')


if __name__ == '__main__':
  app.run(main)
