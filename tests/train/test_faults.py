"""A real run killed at any moment, or preempted, ends as an uninterrupted
one does: the same metrics.jsonl rows (timings aside), summary.json, samples
and plots, bit-exact on CPU.

Runs the demo's recipe (tiny model, warm start, GRPO) as subprocesses
through tests/train/killable.py, which plants a SIGKILL inside a chosen
call: the TFDS build, the warm start, the RL loop, a checkpoint write, an
evaluation, a plot, the summary; or at a random moment, several times in a
row. Kill points and delays come from a seeded generator and the call
timings of the uninterrupted run.
"""

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
DRIVER = os.path.join(REPO, 'tests', 'train', 'killable.py')
CONFIG = '--config=' + os.path.join(REPO, 'experiments', 'arithmetic',
                                    'config.py:grpo')
OVERRIDES = (
    'model.hidden_dim=32', 'model.mlp_dim=64', 'model.num_layers=1',
    'task.max_operand=20', 'task.num_train=200', 'task.num_test=64',
    'sft.steps=4', 'sft.batch_size=16', 'sft.log_every=1',
    'rl.batch_size=16', 'rl.group_size=2', 'eval.every=2',
    'eval.num_examples=32', 'eval.batch_size=16', 'total_steps=5',
    'log_every=1', 'checkpoint_every=2',
)
TIMINGS = ('step_time', 'steps_per_second')
SUMMARY_TIMINGS = ('wall_time_s', 'final/step_time', 'final/steps_per_second')
SEED = 20261207
PREEMPTED = 75  # preemption.EXIT_CODE


def _env(cache_dir):
  return {**os.environ,
          'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', ''),
          # Restarts reuse compiled programs: a faster test, and the way
          # resumed runs work in practice. It changes no number.
          'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
          'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0',
          'JAX_PLATFORMS': 'cpu'}


def _command(workdir, *driver_flags):
  return [sys.executable, DRIVER, *driver_flags, '--', CONFIG,
          f'--workdir={workdir}', *(f'--config.{o}' for o in OVERRIDES)]


def _run(workdir, env, *driver_flags):
  return subprocess.run(_command(workdir, *driver_flags), env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=300,
                        check=False)


def _jsonl(path):
  with open(path) as f:
    return [json.loads(line) for line in f]


def _outcome(workdir):
  """What a finished run leaves, timings removed."""
  rows = lambda path: [{k: v for k, v in r.items() if k not in TIMINGS}
                       for r in _jsonl(path)]
  with open(os.path.join(workdir, 'summary.json')) as f:
    summary = {k: v for k, v in json.load(f).items()
               if k not in SUMMARY_TIMINGS}
  samples = os.path.join(workdir, 'samples')
  return {
      'metrics': rows(os.path.join(workdir, 'metrics.jsonl')),
      'sft_metrics': rows(os.path.join(workdir, 'sft', 'metrics.jsonl')),
      'summary': summary,
      'samples': {name: _jsonl(os.path.join(samples, name))
                  for name in sorted(os.listdir(samples))},
      'plots': [os.path.exists(os.path.join(workdir, p))
                for p in ('training.png', os.path.join('sft', 'sft.png'))],
      'checkpoints': sorted(os.listdir(os.path.join(workdir, 'checkpoints'))),
  }


@pytest.fixture(scope='module')
def reference(tmp_path_factory):
  """The uninterrupted run, its outcome and its call timings."""
  root = tmp_path_factory.mktemp('faults')
  env = _env(root / 'jax_cache')
  trace = root / 'trace.jsonl'
  done = _run(root / 'whole', env, f'--trace={trace}')
  assert done.returncode == 0, done.stderr[-3000:]
  outcome = _outcome(root / 'whole')
  # Again, with the compiled programs cached as every restart will have
  # them: how long a run takes, and a check that two runs agree at all.
  start = time.monotonic()
  again = _run(root / 'again_whole', env)
  assert again.returncode == 0, again.stderr[-3000:]
  assert _outcome(root / 'again_whole') == outcome
  return {'root': root, 'env': env, 'outcome': outcome,
          'calls': _jsonl(trace), 'seconds': time.monotonic() - start}


def _kill_plans(calls):
  """One kill per point: a random call of it (seeded) and a moment inside
  that call (its duration in the uninterrupted run, capped)."""
  rng = random.Random(SEED)
  plans = []
  for point in ('data', 'fit', 'checkpoint', 'eval', 'plot', 'summary'):
    mine = [c for c in calls if c['point'] == point]
    assert mine, f'the run never calls {point}'
    call = rng.choice(mine)
    delay = rng.uniform(0, min(call['seconds'], 5.0))
    plans.append(f'{point}:{call["call"]}:{delay:.4f}')
  return plans


def _resume_and_compare(workdir, reference, what):
  resumed = _run(workdir, reference['env'])
  assert resumed.returncode == 0, (what, resumed.stderr[-3000:])
  assert _outcome(workdir) == reference['outcome'], what


@pytest.mark.slow
def test_killed_inside_each_part_of_a_run_resumes_to_the_same_end(reference):
  plans = _kill_plans(reference['calls'])
  for i, plan in enumerate(plans):
    workdir = reference['root'] / f'killed{i}'
    killed = _run(workdir, reference['env'], f'--kill={plan}')
    assert killed.returncode == -signal.SIGKILL, (plan, killed.stderr[-3000:])
    assert 'KILLED' in killed.stderr, plan
    _resume_and_compare(workdir, reference, plan)


@pytest.mark.slow
def test_killed_again_and_again_at_random_moments(reference):
  rng = random.Random(SEED + 1)
  workdir = reference['root'] / 'again'
  kills = 0
  for _ in range(3):  # Each restart is killed again somewhere.
    delay = rng.uniform(0.2, 0.7) * reference['seconds']
    killed = _run(workdir, reference['env'], f'--kill=time:0:{delay:.2f}')
    if killed.returncode == 0:  # The resumed run had less to do.
      break
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    kills += 1
  assert kills >= 2
  _resume_and_compare(workdir, reference, 'random kills')


@pytest.mark.slow
def test_sigterm_saves_exits_75_and_resumes_to_the_same_end(reference):
  workdir = reference['root'] / 'preempted'
  metrics = workdir / 'metrics.jsonl'
  proc = subprocess.Popen(_command(workdir), env=reference['env'], cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)
  deadline = time.monotonic() + 240
  # Once the RL loop has logged a training step, the notice comes mid-run.
  while time.monotonic() < deadline and proc.poll() is None:
    if metrics.exists() and any('reward/mean' in r for r in _jsonl(metrics)):
      break
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=240)
  assert proc.returncode == PREEMPTED, stderr[-3000:]
  assert 'Preempted (SIGTERM): saved the checkpoint of step' in stderr
  step = int(stderr.split('checkpoint of step ')[1].split()[0])
  assert f'{step}' in os.listdir(workdir / 'checkpoints')
  assert max(r['step'] for r in _jsonl(metrics)) == step
  _resume_and_compare(workdir, reference, 'SIGTERM')


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _processes(workdir, env, num_processes, devices=4):
  """The run as `num_processes` local processes of JAX's distributed
  runtime (or one), with `devices` CPU devices in all."""
  port = _free_port()
  mesh = ('--config.mesh.data=2', '--config.mesh.fsdp=-1')
  env = {**env, 'XLA_FLAGS': '--xla_force_host_platform_device_count='
                             f'{devices // num_processes}'}
  procs = []
  for i in range(num_processes):
    multi = () if num_processes == 1 else (
        f'--config.distributed.coordinator_address=localhost:{port}',
        f'--config.distributed.num_processes={num_processes}',
        f'--config.distributed.process_id={i}')
    procs.append(subprocess.Popen(
        [*_command(workdir), *mesh, *multi], env=env, cwd=REPO,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
  return procs


def _wait(procs):
  return [(p.wait(timeout=400), p.communicate()[1]) for p in procs]


@pytest.mark.slow
def test_two_processes_preempted_save_one_step_and_resume(reference):
  root, env = reference['root'], reference['env']
  [(code, err)] = _wait(_processes(root / 'one_process', env, 1))
  assert code == 0, err[-3000:]
  workdir = root / 'two_processes'
  procs = _processes(workdir, env, 2)
  metrics = workdir / 'metrics.jsonl'
  deadline = time.monotonic() + 300
  while time.monotonic() < deadline and all(p.poll() is None for p in procs):
    if metrics.exists() and any('reward/mean' in r for r in _jsonl(metrics)):
      break
    time.sleep(0.05)
  procs[1].send_signal(signal.SIGTERM)  # Only one host gets the notice.
  ended = _wait(procs)
  assert [code for code, _ in ended] == [PREEMPTED] * 2, [
      err[-2000:] for _, err in ended]
  steps = {int(err.split('checkpoint of step ')[1].split()[0])
           for _, err in ended}
  assert len(steps) == 1, steps  # Both saved the same step.
  assert f'{steps.pop()}' in os.listdir(workdir / 'checkpoints')
  ended = _wait(_processes(workdir, env, 2))
  assert [code for code, _ in ended] == [0, 0], [err[-2000:]
                                                 for _, err in ended]
  got, want = _outcome(workdir), _outcome(root / 'one_process')
  # Two processes equal one of four devices up to float reassociation in
  # the cross-process reductions (tests/parallel/test_multihost.py).
  assert [sorted(r) for r in got['metrics']] == [
      sorted(r) for r in want['metrics']]
  for g, w in zip(got['metrics'], want['metrics']):
    assert g == pytest.approx(w, rel=1e-4, abs=1e-5)
