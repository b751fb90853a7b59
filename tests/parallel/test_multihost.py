"""Two processes of two CPU devices each train like one process of four.

Runs `launch/local_devices.sh`, which starts `experiments.main` as separate
OS processes that find each other through JAX's distributed runtime (CPU
collectives over gloo) and share a workdir; compares every logged metric with
a single 4-device process.
"""

import json
import os
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
TIMING_KEYS = ('step_time', 'steps_per_second')

# The tiny text_rl run of tests/recipes/test_text_rl.py, on 4 devices split
# (data 2, fsdp 2): parameters sharded across the two processes.
OVERRIDES = (
    'model.hidden_dim=32', 'model.mlp_dim=64', 'model.num_layers=1',
    'task.max_operand=20', 'task.num_train=200', 'task.num_test=64',
    'sft.steps=2', 'sft.batch_size=16', 'sft.log_every=1',
    'rl.batch_size=16', 'rl.group_size=2', 'eval.every=2',
    'eval.num_examples=32', 'eval.batch_size=16', 'total_steps=3',
    'log_every=1', 'checkpoint_every=2', 'mesh.data=2', 'mesh.fsdp=-1',
)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _launch(workdir, data_dir, *launcher_flags):
  env = {**os.environ, 'PYTHON': sys.executable,
         'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
  return subprocess.run(
      ['bash', 'launch/local_devices.sh', *launcher_flags,
       '--config=experiments/arithmetic/config.py:grpo',
       f'--workdir={workdir}', '--', f'--config.data.data_dir={data_dir}',
       *(f'--config.{o}' for o in OVERRIDES)],
      env=env, cwd=REPO, capture_output=True, text=True, timeout=600,
      check=False)


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [{k: v for k, v in json.loads(line).items()
             if k not in TIMING_KEYS} for line in f]


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path):
  one, two = tmp_path / 'one', tmp_path / 'two'
  single = _launch(one, tmp_path / 'data1', '--devices=4')
  assert single.returncode == 0, single.stdout[-2000:] + single.stderr[-4000:]
  # A fresh data dir: process 0 writes the dataset while process 1 waits.
  pair = _launch(two, tmp_path / 'data2', '--devices=4', '--processes=2',
                 f'--port={_free_port()}')
  assert pair.returncode == 0, pair.stdout[-2000:] + pair.stderr[-4000:]

  want, got = _records(one), _records(two)
  assert [r['step'] for r in got] == [r['step'] for r in want]
  for w, g in zip(want, got):
    assert w.keys() == g.keys()
    for key in w:
      assert g[key] == pytest.approx(w[key], rel=1e-4, abs=1e-5), (w['step'],
                                                                   key)
  summary = json.loads((two / 'summary.json').read_text())
  assert summary['num_processes'] == 2
  assert summary['mesh'] == {'data': 2, 'fsdp': 2, 'tensor': 1}
  # Only process 0 reports: one memory table from the two processes.
  assert pair.stdout.count('bytes per device') == 1
  assert (two / 'checkpoints' / '3').is_dir()
