"""The benchmarks' timing and `--profile` traces (experiments/benchmarks/common.py)."""

import gzip
import json

from absl import flags
from absl.testing import flagsaver
import jax
import jax.numpy as jnp

from experiments.benchmarks import common


def _counted_matmul():
  calls = []
  matmul = jax.jit(lambda x: x @ x)
  x = jnp.ones((32, 32))

  def fn():
    calls.append(1)
    return matmul(x)
  return fn, calls


def test_time_fn_traces_one_more_call_with_profile(tmp_path):
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()
  fn, calls = _counted_matmul()
  with flagsaver.flagsaver(profile=None):
    assert common.time_fn(fn, repeats=2) > 0
  assert len(calls) == 3  # The warm-up and the timed calls: no trace.

  fn, calls = _counted_matmul()
  with flagsaver.flagsaver(profile=str(tmp_path)):
    common.time_fn(fn, repeats=2, name='matmul 32 / f32')
    common.time_fn(fn, repeats=1, name='matmul 32 / f32')
  assert len(calls) == 3 + 1 + 2 + 1
  # One directory per measurement, named after it; a repeated name gets _2.
  assert sorted(p.name for p in tmp_path.iterdir()) == [
      'matmul_32_f32', 'matmul_32_f32_2']
  traces = list((tmp_path / 'matmul_32_f32').glob(
      'plugins/profile/*/perfetto_trace.json.gz'))
  assert len(traces) == 1
  with gzip.open(traces[0], 'rt') as f:
    events = json.load(f)
  events = events['traceEvents'] if isinstance(events, dict) else events
  # The traced call carries the measurement's name.
  assert any(e.get('name') == 'matmul 32 / f32' for e in events)
