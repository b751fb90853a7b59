"""Multi-host start-up and host-local -> global arrays.

jaxrlgen runs on many hosts with JAX's own multi-controller runtime: every
process runs the same program, reads its own share of the data, and the
arrays of a step are global `jax.Array`s spanning every process's devices.

`initialize(config.distributed)` must run before anything touches a device.
Where the processes find each other:

  * `config.distributed.coordinator_address` (and `num_processes`,
    `process_id`) when given, e.g. for local multi-process runs;
  * otherwise the environment: `JAX_COORDINATOR_ADDRESS` (with
    `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`), or a cluster JAX detects by
    itself -- Cloud TPU pod slices, SLURM (`srun`), Open MPI, Kubernetes.

When a process dies, the others do not hang: JAX's coordination service
(hosted by process 0) marks a process that sent no heartbeat for
`heartbeat_timeout_s` as dead and aborts all the others with an error, even
one blocked in a collective; if process 0 dies, the others abort as soon as
its connection drops. A process that fails with an uncaught exception leaves
at once rather than wait at JAX's shutdown barrier (`_exit_on_error`), so
that the others see it die (docs/scaling.md, "When a host dies";
tests/parallel/test_dead_host.py).
"""

import os
import sys

from absl import logging
import jax
import ml_collections

MODES = ('auto', 'on', 'off')

# Variables that mean "this process is one of several"; their presence makes
# mode 'auto' start the distributed runtime.
_MULTI_PROCESS_ENV = {
    'SLURM_NTASKS': lambda v: int(v) > 1,
    'OMPI_COMM_WORLD_SIZE': lambda v: int(v) > 1,
    'TPU_WORKER_HOSTNAMES': lambda v: ',' in v,
    'MEGASCALE_NUM_SLICES': lambda v: int(v) > 1,
}


def default_config() -> ml_collections.ConfigDict:
  """`config.distributed`."""
  return ml_collections.ConfigDict({
      # 'auto': start when the config or the environment names other
      # processes; 'on': always (let JAX detect the cluster); 'off': never.
      'mode': 'auto',
      'coordinator_address': '',  # host:port of process 0; '' to detect.
      'num_processes': 0,  # 0: from $JAX_NUM_PROCESSES or the cluster.
      'process_id': -1,  # -1: from $JAX_PROCESS_ID or the cluster.
      # Local devices this process uses; '' for all (e.g. '0,1').
      'local_device_ids': '',
      # Failure detection (whole seconds; JAX's defaults). A process that
      # sends no heartbeat for heartbeat_timeout_s is declared dead and
      # every other process is stopped with an error. Heartbeats come from
      # a thread of their own (a long step or compile does not miss them);
      # a lower value notices a dead host sooner but kills a run whose host
      # freezes entirely (swapping, a paused VM) for that long.
      'heartbeat_timeout_s': 100,
      # How long start-up waits for every process to connect.
      'initialization_timeout_s': 300,
      # How long an exiting process waits for the others at the shutdown
      # barrier before it gives up on them.
      'shutdown_timeout_s': 300,
  })


def _env_int(name: str) -> int | None:
  value = os.environ.get(name)
  return int(value) if value not in (None, '') else None


def _multi_process_environment() -> bool:
  for name, is_multi in _MULTI_PROCESS_ENV.items():
    value = os.environ.get(name)
    if value:
      try:
        if is_multi(value):
          return True
      except ValueError:
        continue
  return False


# config.distributed field -> jax.distributed.initialize argument.
_TIMEOUTS = {
    'heartbeat_timeout_s': 'heartbeat_timeout_seconds',
    'initialization_timeout_s': 'initialization_timeout',
    'shutdown_timeout_s': 'shutdown_timeout_seconds',
}


def _timeouts(config: ml_collections.ConfigDict) -> dict[str, int]:
  """The timeout fields as `jax.distributed.initialize` arguments."""
  defaults = default_config()
  timeouts = {}
  for field, argument in _TIMEOUTS.items():
    value = config.get(field, defaults[field])
    # JAX takes whole seconds; a bool is an int to Python but not here.
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f'config.distributed.{field}={value!r}: give a '
                       f'positive whole number of seconds (default '
                       f'{defaults[field]}).')
    timeouts[argument] = value
  return timeouts


def _exit_on_error(excepthook):
  """`sys.excepthook` for one process of several: report, then leave now.

  A process that ends by an uncaught exception would otherwise wait at JAX's
  shutdown barrier (an atexit handler) for up to `shutdown_timeout_s`, still
  sending heartbeats, while the others wait for it inside a collective: the
  whole run would hang that long. Leaving without the barrier stops the
  heartbeats, and the others abort within `heartbeat_timeout_s` (at once when
  this is process 0, whose exit takes the coordination service with it).
  Other atexit work is skipped too; checkpoints are written by then or
  left incomplete, and an incomplete one is never read. SystemExit (a clean
  exit, a preemption) does not come here and keeps the barrier.
  """
  def hook(kind, value, traceback):
    excepthook(kind, value, traceback)
    sys.stderr.write(f'Process {jax.process_index()} of '
                     f'{jax.process_count()} failed: exiting without JAX\'s '
                     'shutdown barrier, so that the others stop too.\n')
    logging.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(1)  # pylint: disable=protected-access
  hook.jaxrlgen_exit_on_error = True
  return hook


def initialize(config: ml_collections.ConfigDict | None = None) -> bool:
  """Starts JAX's distributed runtime when this is a multi-process run.

  Idempotent: a second call (or a runtime started by the caller) is a no-op.

  Returns:
    Whether the runtime is running (this process is one of several).
  Raises:
    ValueError: a bad `config.distributed` field.
  """
  config = config if config is not None else default_config()
  if config.mode not in MODES:
    raise ValueError(f'config.distributed.mode={config.mode!r}; known: '
                     f'{MODES}.')
  timeouts = _timeouts(config)  # Checked on one process too.
  if jax.distributed.is_initialized():
    return True
  if config.mode == 'off':
    return False
  address = config.coordinator_address or os.environ.get(
      'JAX_COORDINATOR_ADDRESS') or None
  num_processes = config.num_processes or _env_int('JAX_NUM_PROCESSES')
  process_id = (config.process_id if config.process_id >= 0
                else _env_int('JAX_PROCESS_ID'))
  if config.mode == 'auto' and address is None and (
      not _multi_process_environment()):
    return False
  if address is not None and (num_processes is None or process_id is None):
    raise ValueError(
        f'config.distributed.coordinator_address={address!r} needs '
        'config.distributed.num_processes and .process_id (or '
        '$JAX_NUM_PROCESSES and $JAX_PROCESS_ID).')
  if num_processes is not None and process_id is not None and not (
      0 <= process_id < num_processes):
    raise ValueError(
        f'config.distributed.process_id={process_id} is not in '
        f'[0, num_processes={num_processes}).')
  local_ids = ([int(i) for i in config.local_device_ids.split(',')]
               if config.local_device_ids else None)
  jax.distributed.initialize(coordinator_address=address,
                             num_processes=num_processes,
                             process_id=process_id,
                             local_device_ids=local_ids, **timeouts)
  logging.info('Process %d of %d; %d local of %d devices.',
               jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count())
  if jax.process_count() > 1 and not getattr(
      sys.excepthook, 'jaxrlgen_exit_on_error', False):
    sys.excepthook = _exit_on_error(sys.excepthook)
  return True


def is_primary() -> bool:
  """Whether this process writes metrics, summaries and plots."""
  return jax.process_index() == 0


def process_shard(num_rows: int) -> slice:
  """This process's contiguous share of `num_rows` global rows."""
  count, index = jax.process_count(), jax.process_index()
  if num_rows % count:
    raise ValueError(f'{num_rows} rows cannot be split evenly over {count} '
                     'processes; make the batch a multiple of the process '
                     'count.')
  local = num_rows // count
  return slice(index * local, (index + 1) * local)
