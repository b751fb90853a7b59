"""A multi-host run whose process dies: the other stops with an error, soon.

Starts the two processes of `launch/local_devices.sh --processes=2` (the
commands its `--dry-run` prints), waits until they train and have written a
checkpoint, and ends one: SIGKILL, or an exception raised in its main thread
(a signal handler installed by a `sitecustomize` module on the test's
PYTHONPATH). The other must exit with an error within a bound: JAX's
coordination service declares the dead process unhealthy after
`config.distributed.heartbeat_timeout_s` (here 10 s; or at once when the
dead one is process 0, which hosts the service) and aborts every other
process, also one blocked in a collective with the dead one. A process that
fails by an exception must not linger at JAX's shutdown barrier
(`shutdown_timeout_s`, left here at its 300 s default) while the other waits
for it. The newest checkpoint left on disk must then resume a run.
"""

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
HEARTBEAT_S = 10
# Detection takes at most a heartbeat timeout (measured: 10 s when process 1
# dies, 1 s when process 0 does); the rest is slack for a loaded machine.
EXIT_BOUND_S = 60
START_BOUND_S = 600

# The tiny run of test_multihost.py, with steps enough to outlast the test
# and a checkpoint every 2 steps, so one may be half-written at the kill.
OVERRIDES = (
    'model.hidden_dim=32', 'model.mlp_dim=64', 'model.num_layers=1',
    'task.max_operand=20', 'task.num_train=200', 'task.num_test=64',
    'sft.steps=2', 'sft.batch_size=16', 'sft.log_every=1',
    'rl.batch_size=16', 'rl.group_size=2', 'eval.every=100000',
    'eval.num_examples=32', 'eval.batch_size=16', 'total_steps=100000',
    'log_every=1', 'checkpoint_every=2', 'max_checkpoints=2', 'mesh.data=2',
    'mesh.fsdp=-1', f'distributed.heartbeat_timeout_s={HEARTBEAT_S}',
)

# Makes SIGUSR2 raise an exception in the main thread of a process of the
# run: a Python error at an arbitrary point of training.
SITECUSTOMIZE = '''
import os, signal
if os.environ.get('JAXRLGEN_TEST_RAISE_ON_SIGUSR2'):
  def _raise(signum, frame):
    raise RuntimeError('test_dead_host: an error raised on SIGUSR2')
  signal.signal(signal.SIGUSR2, _raise)
'''


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(('localhost', 0))
    return s.getsockname()[1]


def _env(*paths):
  return {**os.environ, 'PYTHON': sys.executable,
          'PYTHONPATH': os.pathsep.join(
              (*paths, REPO, os.environ.get('PYTHONPATH', '')))}


def _launcher(workdir, data_dir, *flags, overrides=OVERRIDES):
  return ['bash', 'launch/local_devices.sh', '--devices=4', *flags,
          '--config=experiments/arithmetic/config.py:grpo',
          f'--workdir={workdir}', '--', f'--config.data.data_dir={data_dir}',
          *(f'--config.{o}' for o in overrides)]


def _process_commands(workdir, data_dir) -> list[list[str]]:
  """The launcher's command for each of its two processes."""
  dry = subprocess.run(
      _launcher(workdir, data_dir, '--processes=2', f'--port={_free_port()}',
                '--dry-run'),
      env=_env(), cwd=REPO, capture_output=True, text=True, check=True)
  commands = [shlex.split(line) for line in dry.stdout.splitlines()]
  assert len(commands) == 2, dry.stdout
  return commands


def _rl_rows(workdir) -> int:
  try:
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
      return sum('reward/mean' in line for line in f)
  except FileNotFoundError:
    return 0


def _checkpoints(workdir) -> list[int]:
  """Steps of the RL stage's finished checkpoints (orbax writes into a
  temporary directory and renames it when the save is complete)."""
  directory = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(directory):
    return []
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _tail(path, chars=4000) -> str:
  with open(path, errors='replace') as f:
    return f.read()[-chars:]


@pytest.mark.slow
@pytest.mark.parametrize('how, victim', [('kill', 1), ('kill', 0),
                                         ('raise', 1)])
def test_survivor_exits_with_an_error(tmp_path, how, victim):
  workdir, data_dir = tmp_path / 'run', tmp_path / 'data'
  logs = [tmp_path / f'process{i}.log' for i in range(2)]
  (tmp_path / 'site').mkdir()
  (tmp_path / 'site' / 'sitecustomize.py').write_text(SITECUSTOMIZE)
  env = {**_env(str(tmp_path / 'site')), 'JAXRLGEN_TEST_RAISE_ON_SIGUSR2': '1'}
  procs = []
  try:
    for command, log in zip(_process_commands(workdir, data_dir), logs):
      with open(log, 'w') as out:
        procs.append(subprocess.Popen(command, cwd=REPO, env=env,
                                      stdout=out, stderr=subprocess.STDOUT))
    deadline = time.monotonic() + START_BOUND_S
    while not (_rl_rows(workdir) >= 3 and _checkpoints(workdir)):
      for proc, log in zip(procs, logs):
        assert proc.poll() is None, _tail(log)
      assert time.monotonic() < deadline, 'the run did not start training'
      time.sleep(0.5)

    survivor = procs[1 - victim]
    procs[victim].send_signal(
        signal.SIGKILL if how == 'kill' else signal.SIGUSR2)
    killed_at = time.monotonic()
    try:
      survivor.wait(timeout=EXIT_BOUND_S)
    except subprocess.TimeoutExpired:
      pytest.fail(f'process {1 - victim} still runs {EXIT_BOUND_S} s after '
                  f'process {victim} died:\n' + _tail(logs[1 - victim]))
    elapsed = time.monotonic() - killed_at
    log = _tail(logs[1 - victim], 20000)
    assert survivor.returncode != 0, log
    # Which error ends it depends on where the dead process left it: the
    # coordination service's abort (missed heartbeats, or process 0 gone),
    # a gloo read on a closed connection, or a collective that no longer
    # matches; an exception then takes `distributed._exit_on_error`.
    assert re.search(r'distributed service|coordination service|heartbeat|'
                     r'Gloo|exiting without JAX', log), log
    print(f'process {1 - victim} exited ({survivor.returncode}) '
          f'{elapsed:.1f} s after process {victim} was ended ({how})')
    if how == 'raise':
      procs[victim].wait(timeout=EXIT_BOUND_S)
      assert procs[victim].returncode == 1
      assert 'an error raised on SIGUSR2' in _tail(logs[victim], 20000)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()

  # The checkpoint it left resumes the run (one process of 4 devices: the
  # same mesh): a half-written save must not be taken for the newest one.
  steps = _checkpoints(workdir)
  assert steps
  resume_overrides = [o for o in OVERRIDES if not o.startswith('total_steps')]
  resume_overrides.append(f'total_steps={steps[-1] + 1}')
  resumed = subprocess.run(
      _launcher(workdir, data_dir, overrides=resume_overrides),
      env=_env(), cwd=REPO, capture_output=True, text=True,
      timeout=START_BOUND_S, check=False)
  output = resumed.stdout[-2000:] + resumed.stderr[-6000:]
  assert resumed.returncode == 0, output
  assert f'checkpoints, step {steps[-1]}.' in resumed.stderr, output
  assert _checkpoints(workdir)[-1] == steps[-1] + 1, output
