"""jaxrlgen/parallel/mesh.py and distributed.py on one process."""

import jax
import ml_collections
import pytest

from jaxrlgen import parallel
from jaxrlgen.parallel import distributed


@pytest.mark.parametrize('sizes, devices, want', [
    ((-1, 1, 1), 8, (8, 1, 1)),
    ((2, -1, 2), 8, (2, 2, 2)),
    ((1, 1, -1), 4, (1, 1, 4)),
    ((2, 2, 2), 8, (2, 2, 2)),
])
def test_resolve_shape(sizes, devices, want):
  assert parallel.resolve_shape(*sizes, devices) == want


@pytest.mark.parametrize('sizes, devices, message', [
    ((-1, -1, 1), 8, 'only one axis may be -1'),
    ((0, 1, 1), 8, r'config\.mesh\.data=0'),
    ((3, -1, 1), 8, 'must divide the device count'),
    ((2, 2, 1), 8, 'uses 4 devices but there are 8'),
    ((1, -2, 1), 8, r'config\.mesh\.fsdp=-2'),
])
def test_resolve_shape_errors(sizes, devices, message):
  with pytest.raises(ValueError, match=message):
    parallel.resolve_shape(*sizes, devices)


def test_make_mesh_default_is_data_parallel():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == parallel.AXES
  assert dict(mesh.shape) == {'data': jax.device_count(), 'fsdp': 1,
                              'tensor': 1}
  assert parallel.batch_size_divisor(mesh) == jax.device_count()


def test_initialize_single_process_is_a_no_op(monkeypatch):
  for name in ('JAX_COORDINATOR_ADDRESS', 'SLURM_NTASKS',
               'OMPI_COMM_WORLD_SIZE', 'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(name, raising=False)
  assert not parallel.initialize(distributed.default_config())
  assert not parallel.initialize(ml_collections.ConfigDict({'mode': 'off'}))


@pytest.mark.parametrize('fields, message', [
    ({'mode': 'sometimes'}, r'config\.distributed\.mode'),
    ({'coordinator_address': 'localhost:1234'},
     r'needs config\.distributed\.num_processes'),
    ({'coordinator_address': 'localhost:1234', 'num_processes': 2,
      'process_id': 2}, r'config\.distributed\.process_id=2'),
])
def test_initialize_errors(monkeypatch, fields, message):
  monkeypatch.delenv('JAX_NUM_PROCESSES', raising=False)
  monkeypatch.delenv('JAX_PROCESS_ID', raising=False)
  config = distributed.default_config()
  config.update(fields)
  with pytest.raises(ValueError, match=message):
    parallel.initialize(config)


@pytest.mark.parametrize('field', ['heartbeat_timeout_s',
                                   'initialization_timeout_s',
                                   'shutdown_timeout_s'])
@pytest.mark.parametrize('value', [0, -5, 2.5, True, '10'])
def test_initialize_timeout_errors(field, value):
  # Checked before anything starts, on one process too.
  config = ml_collections.ConfigDict(
      {**distributed.default_config().to_dict(), 'mode': 'off', field: value})
  with pytest.raises(ValueError, match=rf'config\.distributed\.{field}='):
    parallel.initialize(config)


def test_initialize_passes_the_timeouts(monkeypatch):
  calls = []
  monkeypatch.setattr(jax.distributed, 'is_initialized', lambda: False)
  monkeypatch.setattr(jax.distributed, 'initialize',
                      lambda **kwargs: calls.append(kwargs))
  config = distributed.default_config()
  config.update(coordinator_address='localhost:1234', num_processes=2,
                process_id=1, heartbeat_timeout_s=7, shutdown_timeout_s=9)
  assert parallel.initialize(config)
  assert calls == [dict(coordinator_address='localhost:1234',
                        num_processes=2, process_id=1, local_device_ids=None,
                        heartbeat_timeout_seconds=7,
                        initialization_timeout=300,
                        shutdown_timeout_seconds=9)]


def test_exit_on_error_reports_then_exits(monkeypatch):
  seen, exits = [], []
  monkeypatch.setattr(distributed.os, '_exit', exits.append)
  hook = distributed._exit_on_error(lambda *args: seen.append(args[1]))
  error = RuntimeError('boom')
  hook(RuntimeError, error, None)
  assert seen == [error] and exits == [1]
  assert hook.jaxrlgen_exit_on_error


def test_process_shard():
  assert parallel.process_shard(8) == slice(0, 8)
