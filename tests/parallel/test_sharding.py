"""Sharded steps equal one-device steps; see sharded_equivalence.py.

Also the pure pieces of jaxrlgen/parallel/sharding.py on abstract meshes.
"""

import json
import os
import subprocess
import sys

import jax
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P
import numpy as np
import optax
import pytest

from jaxrlgen import parallel
from jaxrlgen.models import transformer as tfm

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
SIZES = {'data': 2, 'fsdp': 2, 'tensor': 2}


@pytest.mark.parametrize('logical, shape, want', [
    (('embed', 'mlp'), (32, 64), P('fsdp', 'tensor')),
    (('batch', 'length', 'act_embed'), (8, 5, 32), P(('data', 'fsdp'))),
    # Not divisible: replicated rather than an error.
    (('embed', 'kv_heads', 'head_dim'), (32, 1, 8), P('fsdp')),
    (('batch', None), (6, 3), P()),
    # An axis already used is not used again.
    (('vocab', 'mlp'), (64, 64), P('tensor')),
])
def test_spec_for(logical, shape, want):
  assert parallel.spec_for(logical, shape, SIZES) == want


def test_spec_for_unknown_name():
  with pytest.raises(ValueError, match="'hidden' has no entry"):
    parallel.spec_for(('hidden',), (4,), SIZES)


def test_size_one_axes_are_dropped():
  sizes = {'data': 1, 'fsdp': 4, 'tensor': 1}
  assert parallel.spec_for(('batch',), (8,), sizes) == P('fsdp')
  assert parallel.spec_for(('embed', 'mlp'), (8, 8), sizes) == P('fsdp')


def test_tree_shardings_follow_parameter_paths():
  config = tfm.TransformerConfig(vocab_size=64, hidden_dim=32, mlp_dim=64,
                                 num_layers=1, num_heads=4, num_kv_heads=2,
                                 max_seq_len=8)
  mesh = AbstractMesh((2, 2, 2), parallel.AXES)
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adam(1e-3))

  def state(key):
    params = tfm.init_params(config, key)
    return {'params': params, 'opt_state': tx.init(params),
            'ref': params, 'step': jax.numpy.zeros((), 'int32')}

  abstract = jax.eval_shape(state, jax.random.key(0))
  shardings = parallel.tree_shardings(abstract, mesh,
                                      tfm.logical_axes(config))
  up = ('block_0', 'mlp', 'up', 'kernel')
  get = lambda tree, path: tree[path[0]][path[1]][path[2]][path[3]]
  assert get(shardings['params'], up).spec == P('fsdp', 'tensor')
  assert get(shardings['ref'], up).spec == P('fsdp', 'tensor')
  adam = shardings['opt_state'][1][0]
  assert get(adam.mu, up).spec == P('fsdp', 'tensor')
  assert get(adam.nu, up).spec == P('fsdp', 'tensor')
  assert adam.count.spec == P()
  assert shardings['step'].spec == P()
  q = shardings['params']['block_0']['attn']['q']['kernel']
  assert q.spec == P('fsdp', 'tensor')  # heads on tensor; head_dim whole.


def test_memory_bytes_per_device():
  # One device, no mesh: whole arrays.
  tree = {'a': np.zeros((4, 8), np.float32), 'b': np.zeros(3, np.int8)}
  assert parallel.bytes_per_device(
      jax.tree.map(jax.numpy.asarray, tree)) == 4 * 8 * 4 + 3
  report = parallel.memory_report({'parameters': tree})
  assert 'parameters' in report and 'total' in report


@pytest.fixture(scope='module')
def sharded_results():
  env = {**os.environ,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
  script = os.path.join(os.path.dirname(__file__), 'sharded_equivalence.py')
  result = subprocess.run([sys.executable, script, 'ppo'], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
  return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize('case', ['grpo/data', 'grpo/fsdp', 'grpo/tensor',
                                  'grpo/mixed', 'ppo/mixed',
                                  'grpo_packed/mixed'])
def test_rl_step_on_a_mesh_equals_one_device(sharded_results, case):
  result = sharded_results[case]
  assert result['same_actions'], 'sampled tokens differ'
  assert result['metrics'] < 1e-5, result
  assert result['params'] < 1e-5, result


@pytest.mark.parametrize('case', ['lora_none/mixed', 'lora_int8/mixed'])
def test_lora_steps_on_a_mesh_equal_one_device(sharded_results, case):
  """Adapters (on a float or an int8 base) carry their kernels' logical
  names: a query adapter's B [r, heads x head_dim] is split over `tensor`."""
  result = sharded_results[case]
  assert result['metrics'] < 1e-5 and result['params'] < 1e-5, result
  assert result['spec'] == str(P(None, 'tensor')), result


def test_sft_step_on_a_mesh_equals_one_device(sharded_results):
  result = sharded_results['sft/mixed']
  assert result['metrics'] < 1e-5 and result['params'] < 1e-5, result


def test_checkpoint_restores_onto_another_mesh(sharded_results):
  result = sharded_results['restore']
  assert result['values'] == 0.0
  # Saved on (data 2, fsdp 2, tensor 2), restored onto (tensor 4).
  assert result['sharding'] == str(P(None, 'tensor'))
  assert result['num_devices'] == 4


def test_hf_checkpoint_loads_into_shards(sharded_results):
  result = sharded_results['hf_load']
  assert result['values'] == 0.0
  assert result['sharding'] == str(P('fsdp', 'tensor'))
  assert result['shard_shape'] == [16, 32]  # [32, 64] over fsdp 2 x tensor 2.
