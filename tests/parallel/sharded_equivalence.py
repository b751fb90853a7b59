"""Runs steps on several meshes and on one device; prints the differences.

Run by tests/parallel/test_sharding.py in a process of its own with 8
simulated CPU devices (the device count is fixed when JAX starts).
Prints one JSON object: {case: {quantity: max abs difference or bool}}.
"""

import functools
import dataclasses
import json
import os
import sys
import tempfile

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import checkpoint
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from jaxrlgen.policies import lora

MODEL = tfm.TransformerConfig(
    vocab_size=64, hidden_dim=32, mlp_dim=64, num_layers=2, num_heads=8,
    num_kv_heads=4, max_seq_len=24, value_head=True)
MESHES = {
    'data': (8, 1, 1),
    'fsdp': (1, 8, 1),
    'tensor': (1, 1, 4),
    'mixed': (2, 2, 2),
}
NUM_PROMPTS, GROUP, PROMPT_LEN, NEW_TOKENS = 8, 2, 6, 8


def even_reward(rollout, batch):
  del batch
  even = (rollout.actions % 2 == 0) & rollout.mask
  return jnp.sum(even, 1) / jnp.maximum(jnp.sum(rollout.mask, 1), 1)


def make_batch():
  rng = np.random.default_rng(0)
  prompt = rng.integers(1, MODEL.vocab_size, (NUM_PROMPTS, PROMPT_LEN))
  mask = np.ones_like(prompt, bool)
  mask[::3, :2] = False  # Some left padding.
  return {'prompt': prompt.astype(np.int32), 'prompt_mask': mask}


def sft_batch():
  rng = np.random.default_rng(1)
  prompt = rng.integers(1, MODEL.vocab_size, (8, PROMPT_LEN)).astype(np.int32)
  target = rng.integers(1, MODEL.vocab_size, (8, 5)).astype(np.int32)
  return {'prompt': prompt, 'prompt_mask': np.ones_like(prompt, bool),
          'target': target, 'target_mask': np.arange(5) < np.array(
              [5, 3, 4, 5, 2, 5, 1, 5])[:, None]}


def run_rl(algo_name: str, mesh_shape, pack_rows: int = 0):
  """One rl_step: (sampled actions, metrics, new params), as numpy."""
  algo_cfg = algos.default_config(algo_name)
  if algo_name == 'grpo':
    algo_cfg.beta = 0.04  # Exercise the reference model too.
  algo = algos.make(algo_cfg)
  env = TextEnv(LMPolicy(tfm.Transformer(MODEL)), max_new_tokens=NEW_TOKENS,
                sampling=Sampling(), eos_id=3, pad_id=0, num_samples=GROUP,
                pack_rows=pack_rows)
  # Plain SGD: Adam's first step is sign(g), which magnifies rounding noise
  # in near-zero gradients; SGD's update is the gradient itself.
  tx = optax.sgd(0.5)
  key = jax.random.key(0)

  def build(key):
    params = tfm.init_params(MODEL, key)
    ref = params if algo.uses_reference else None
    params = algo.init_params(env, params, jax.random.fold_in(key, 1))
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params), ref_params=ref,
                      algo_state=algo.init_state())

  step = functools.partial(step_lib.rl_step, env=env, reward_fn=even_reward,
                           algo=algo, tx=tx)
  batch = make_batch()
  if mesh_shape is None:
    state = jax.jit(build)(key)
    new_state, metrics = jax.jit(step)(state, batch, jax.random.key(1))
    rollout = jax.jit(functools.partial(
        step_lib.sample, env=env, reward_fn=even_reward))(
            algo.policy_params(state.params), batch, jax.random.key(1)).rollout
  else:
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
        zip(parallel.AXES, mesh_shape))), jax.devices()[:np.prod(mesh_shape)])
    specs = tfm.logical_axes(MODEL)
    with parallel.activate(mesh):
      state = parallel.sharded_init(
          build, key,
          shardings=lambda t: parallel.tree_shardings(t, mesh, specs))
      state_shardings = jax.tree.map(lambda x: x.sharding, state)
      gbatch = parallel.Layout(mesh, specs).batch(batch)
      rollout = jax.jit(functools.partial(
          step_lib.sample, env=env, reward_fn=even_reward))(
              algo.policy_params(state.params), gbatch,
              jax.random.key(1)).rollout
      sharded_step = parallel.jit_step(step, mesh, state_shardings)
      new_state, metrics = sharded_step(state, gbatch, jax.random.key(1))
  return jax.device_get((rollout.actions, metrics, new_state.params))


def run_lora(mesh_shape, quantize: str = 'none'):
  """A GRPO step (KL to the adapters-off base) of an adapted policy:
  (sampled actions, metrics, new adapters, the sharding of a query
  adapter's B factor), as numpy."""
  config = dataclasses.replace(MODEL, value_head=False)
  algo_cfg = algos.default_config('grpo')
  algo_cfg.beta = 0.04
  algo = algos.make(algo_cfg)
  policy = LMPolicy(tfm.Transformer(config)).with_adapters(
      lora.LoraConfig(rank=4, alpha=8.0, quantize=quantize))
  env = TextEnv(policy, max_new_tokens=NEW_TOKENS, sampling=Sampling(),
                eos_id=3, pad_id=0, num_samples=GROUP)
  tx = optax.sgd(0.5)
  frozen = policy.quantize_base(tfm.init_params(config, jax.random.key(0)))
  adapters = perturb(policy.init_adapters(frozen, jax.random.key(1)))

  def build(frozen, adapters):
    return TrainState.create(adapters, tx, frozen=frozen, ref_params={})

  step = functools.partial(step_lib.rl_step, env=env, reward_fn=even_reward,
                           algo=algo, tx=tx)
  batch = make_batch()
  if mesh_shape is None:
    state = jax.jit(build)(frozen, adapters)
    new_state, metrics = jax.jit(step)(state, batch, jax.random.key(1))
    spec = None
  else:
    mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
        zip(parallel.AXES, mesh_shape))), jax.devices()[:np.prod(mesh_shape)])
    layout = parallel.Layout(mesh, policy.adapter_logical_axes())
    with parallel.activate(mesh):
      state = layout.init(build, frozen, adapters)
      new_state, metrics = layout.jit_step(step, state)(
          state, layout.batch(batch), jax.random.key(1))
    spec = str(new_state.params['block_0']['attn']['q'][
        'kernel_lora_b'].sharding.spec)
  return jax.device_get((metrics, new_state.params)) + (spec,)


def perturb(adapters):
  """Adapters with B no longer zero, so that they change the policy."""
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(9), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.2 * jax.random.normal(k, x.shape)
                                   for k, x in zip(keys, leaves)])


def run_sft(mesh_shape):
  env = TextEnv(LMPolicy(tfm.Transformer(MODEL)), max_new_tokens=NEW_TOKENS,
                sampling=Sampling(), eos_id=3, pad_id=0)
  tx = optax.sgd(0.5)

  def build(key):
    params = tfm.init_params(MODEL, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  step = functools.partial(step_lib.sft_step, env=env, tx=tx)
  key = jax.random.key(2)
  if mesh_shape is None:
    return jax.device_get(jax.jit(step)(jax.jit(build)(key), sft_batch(), key))
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
      zip(parallel.AXES, mesh_shape))))
  with parallel.activate(mesh):
    state = parallel.sharded_init(
        build, key, shardings=lambda t: parallel.tree_shardings(
            t, mesh, tfm.logical_axes(MODEL)))
    sharded_step = parallel.jit_step(
        step, mesh, jax.tree.map(lambda x: x.sharding, state))
    batch = parallel.Layout(mesh, {}).batch(sft_batch())
    out = sharded_step(state, batch, key)
  return jax.device_get(out)


def restore_on_other_mesh(directory: str) -> dict:
  """Saves a sharded train state on one mesh, restores it onto another."""
  tx = optax.adam(1e-3)

  def build(key):
    params = tfm.init_params(MODEL, key)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=tx.init(params))

  specs = tfm.logical_axes(MODEL)
  layouts = {name: parallel.Layout(parallel.make_mesh(
      ml_collections.ConfigDict(dict(zip(parallel.AXES, MESHES[name]))),
      jax.devices()[:np.prod(MESHES[name])]), specs)
             for name in ('mixed', 'tensor')}
  saved = layouts['mixed'].init(build, jax.random.key(3))
  with checkpoint.Checkpointer(directory) as ckpt:
    ckpt.save(1, saved)
  target = layouts['tensor'].init(build, jax.random.key(4))
  with checkpoint.Checkpointer(directory) as ckpt:
    restored = ckpt.restore(1, target)
  kernel = restored.params['block_0']['mlp']['up']['kernel']
  return {'values': max_diff(restored, saved),
          'sharding': str(kernel.sharding.spec),
          'num_devices': len(kernel.sharding.device_set)}


def load_hf_into_shards(directory: str) -> dict:
  """Saves a model as a Hugging Face checkpoint; loads it onto a mesh."""
  config = dataclasses.replace(MODEL, value_head=False)
  params = tfm.init_params(config, jax.random.key(5))
  hf.save(directory, config, params)
  mesh = parallel.make_mesh(ml_collections.ConfigDict(dict(
      zip(parallel.AXES, MESHES['mixed']))))
  layout = parallel.Layout(mesh, tfm.logical_axes(config))
  _, loaded = hf.load(directory, max_seq_len=MODEL.max_seq_len,
                      shardings=layout.shardings)
  kernel = loaded['block_0']['mlp']['up']['kernel']
  return {'values': max_diff(loaded, params),
          'sharding': str(kernel.sharding.spec),
          'shard_shape': list(kernel.addressable_shards[0].data.shape)}


def max_diff(a, b) -> float:
  """Largest difference relative to max(1, |reference|), over all leaves."""
  diffs = jax.tree.map(lambda x, y: float(np.max(
      np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64))
      / np.maximum(1.0, np.abs(np.asarray(y, np.float64))), initial=0.0)),
                       a, b)
  return max(jax.tree.leaves(diffs), default=0.0)


def main(argv):
  cases = {f'grpo/{m}': ('grpo', m, 0) for m in MESHES}
  for name in argv[1:]:  # Further algorithms on the mixed mesh.
    cases[f'{name}/mixed'] = (name, 'mixed', 0)
  # Packed training passes (16 rows for 16 sequences: the packed program,
  # its rows split over the data axes), against one device unpacked.
  cases['grpo_packed/mixed'] = ('grpo', 'mixed', 16)
  results, reference = {}, {}
  for case, (algo_name, mesh_name, pack_rows) in cases.items():
    if algo_name not in reference:
      reference[algo_name] = run_rl(algo_name, None)
    actions, metrics, params = run_rl(algo_name, MESHES[mesh_name], pack_rows)
    ref_actions, ref_metrics, ref_params = reference[algo_name]
    results[case] = {
        'same_actions': bool(np.array_equal(actions, ref_actions)),
        'metrics': max_diff({k: metrics[k] for k in ref_metrics}, ref_metrics),
        'worst_metric': max(ref_metrics, key=lambda k: max_diff(
            metrics[k], ref_metrics[k])),
        'params': max_diff(params, ref_params),
    }
  for quantize in ('none', 'int8'):  # Data, FSDP and tensor axes at once.
    ref_metrics, ref_params, _ = run_lora(None, quantize)
    metrics, params, spec = run_lora(MESHES['mixed'], quantize)
    results[f'lora_{quantize}/mixed'] = {
        'metrics': max_diff(metrics, ref_metrics),
        'params': max_diff(params, ref_params), 'spec': spec}
  (ref_state, ref_metrics) = run_sft(None)
  state, metrics = run_sft(MESHES['mixed'])
  results['sft/mixed'] = {'metrics': max_diff(metrics, ref_metrics),
                          'params': max_diff(state.params, ref_state.params)}
  with tempfile.TemporaryDirectory() as directory:
    results['restore'] = restore_on_other_mesh(directory)
  with tempfile.TemporaryDirectory() as directory:
    results['hf_load'] = load_hf_into_shards(directory)
  print(json.dumps(results))


if __name__ == '__main__':
  main(sys.argv)
