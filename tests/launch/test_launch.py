"""The launch scripts' --dry-run prints the commands they would run."""

import os
import shlex
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
CONFIG = 'experiments/arithmetic/config.py:grpo'


def dry_run(script, *args, env=None):
  result = subprocess.run(['bash', f'launch/{script}', '--dry-run', *args],
                          cwd=REPO, capture_output=True, text=True,
                          check=False, timeout=60,
                          env={**os.environ, **(env or {})})
  assert result.returncode == 0, result.stderr
  return [shlex.split(line) for line in result.stdout.splitlines()
          if line and not line.startswith(('#', '('))]


def test_local_devices_one_process():
  [cmd] = dry_run('local_devices.sh', '--devices=8', f'--config={CONFIG}',
                  '--workdir=/tmp/run', '--', '--config.mesh.fsdp=2',
                  env={'PYTHON': 'python3'})
  assert cmd[:3] == ['env', 'JAX_PLATFORMS=cpu',
                     'XLA_FLAGS=--xla_force_host_platform_device_count=8']
  assert cmd[3:] == ['python3', '-m', 'experiments.main', f'--config={CONFIG}',
                     '--workdir=/tmp/run', '--config.mesh.fsdp=2']


def test_local_devices_several_processes():
  cmds = dry_run('local_devices.sh', '--devices=8', '--processes=4',
                 '--port=4321', f'--config={CONFIG}', '--workdir=/tmp/run')
  assert len(cmds) == 4
  for i, cmd in enumerate(cmds):
    assert 'XLA_FLAGS=--xla_force_host_platform_device_count=2' in cmd
    assert cmd[-3:] == ['--config.distributed.coordinator_address=localhost:4321',
                        '--config.distributed.num_processes=4',
                        f'--config.distributed.process_id={i}']


def test_local_devices_errors():
  result = subprocess.run(
      ['bash', 'launch/local_devices.sh', '--devices=6', '--processes=4',
       f'--config={CONFIG}', '--workdir=/tmp/run', '--dry-run'],
      cwd=REPO, capture_output=True, text=True, check=False)
  assert result.returncode != 0 and 'not divisible' in result.stderr
  result = subprocess.run(['bash', 'launch/local_devices.sh', '--dry-run',
                           f'--config={CONFIG}'], cwd=REPO,
                          capture_output=True, text=True, check=False)
  assert result.returncode != 0 and '--workdir' in result.stderr


def test_tpu_pod():
  cmds = dry_run('tpu_pod.sh', '--name=pod', '--zone=us-central2-b',
                 '--accelerator-type=v4-32', '--project=proj',
                 f'--config={CONFIG}', '--workdir=gs://bucket/run', '--',
                 '--config.mesh.fsdp=-1', '--config.mesh.data=1')
  gcloud = [c for c in cmds if c[0] == 'gcloud']
  verbs = [c[4] for c in gcloud]
  assert verbs == ['create', 'scp', 'ssh', 'ssh', 'scp', 'delete']
  create = gcloud[0]
  assert '--accelerator-type=v4-32' in create and '--zone=us-central2-b' in create
  assert '--project=proj' in create
  for cmd in gcloud[1:4]:
    assert '--worker=all' in cmd, cmd
  remote = [a for a in gcloud[3] if a.startswith('--command=')][0]
  main = shlex.split(remote.split('&&', 1)[1].split('2>&1')[0])
  assert main == ['python3', '-m', 'experiments.main', f'--config={CONFIG}',
                  '--workdir=gs://bucket/run', '--config.mesh.fsdp=-1',
                  '--config.mesh.data=1']
  assert gcloud[-1][-1] == '--quiet'  # The slice is deleted at the end.


def test_tpu_pod_keep():
  cmds = dry_run('tpu_pod.sh', '--name=pod', '--zone=z', '--keep',
                 '--accelerator-type=v4-8', f'--config={CONFIG}',
                 '--workdir=gs://b/r')
  assert not [c for c in cmds if 'delete' in c]


def test_slurm_gpu():
  cmds = dry_run('slurm_gpu.sbatch', f'--config={CONFIG}',
                 '--workdir=/shared/run', '--nodes=4', '--venv=/shared/venv',
                 '--', '--config.total_steps=10')
  sbatch = [c for c in cmds if c[0] == 'sbatch'][0]
  assert sbatch[1] == '--nodes=4'
  assert sbatch[2] == 'launch/slurm_gpu.sbatch'
  assert '--dry-run' not in sbatch
  srun = [c for c in cmds if c[0] == 'srun'][0]
  assert srun[2:] == ['/shared/venv/bin/python', '-m', 'experiments.main',
                      f'--config={CONFIG}', '--workdir=/shared/run',
                      '--config.total_steps=10']


def test_slurm_inside_a_job_runs_srun():
  cmds = dry_run('slurm_gpu.sbatch', f'--config={CONFIG}', '--workdir=/w',
                 env={'SLURM_JOB_ID': '7', 'SLURM_SUBMIT_DIR': REPO})
  assert cmds == [['srun', '--kill-on-bad-exit=1', 'python', '-m',
                   'experiments.main', f'--config={CONFIG}', '--workdir=/w']]


@pytest.mark.parametrize('script', ['local_devices.sh', 'tpu_pod.sh',
                                    'slurm_gpu.sbatch'])
def test_help(script):
  result = subprocess.run(['bash', f'launch/{script}', '--help'], cwd=REPO,
                          capture_output=True, text=True, check=True)
  assert '--workdir' in result.stdout and '--dry-run' in result.stdout
