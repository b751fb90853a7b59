"""Low-rank adapters through qwix: the adapted policy against its base and
its merged weights, where gradients go, the reference, quantized bases,
checkpoints, learning, and PEFT's layout."""

import dataclasses
import functools
import os

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxrlgen import algos
from jaxrlgen import export as export_lib
from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen.algos import base as algo_base
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.policies import lora
from jaxrlgen.train import checkpoint
from jaxrlgen.train import step as step_lib

from tests.algos import toy

CONFIG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                               num_layers=2, num_heads=4, num_kv_heads=2,
                               head_dim=8, max_seq_len=12)


def adapted(rank=4, alpha=8.0, config=CONFIG, **overrides):
  """(plain env, env with adapters, base params, frozen base, adapters and
  trainable heads)."""
  env = TextEnv(LMPolicy(tfm.Transformer(config)), max_new_tokens=6,
                eos_id=toy.EOS, pad_id=toy.PAD, num_samples=4)
  params = tfm.init_params(config, jax.random.key(0))
  cfg = lora.LoraConfig(rank=rank, alpha=alpha, **overrides)
  policy = env.policy.with_adapters(cfg)
  frozen, heads = policy.split_base(params)
  frozen = policy.quantize_base(frozen)
  adapters = {**policy.init_adapters(frozen, jax.random.key(1)), **heads}
  return (env, dataclasses.replace(env, policy=policy), params, frozen,
          adapters)


def perturbed(adapters, scale=0.3):
  """The adapters with every factor moved (B no longer zero)."""
  leaves, tree = jax.tree.flatten(adapters)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  return jax.tree.unflatten(tree, [
      x + scale * jax.random.normal(k, x.shape, x.dtype)
      for k, x in zip(keys, leaves)])


TOKENS = jnp.array([[2, 7, 7, 9, 4, 11], [0, 0, 3, 5, 6, 8]], jnp.int32)
MASK = TOKENS > 0


@jax.jit
def _logits_plain(params):
  policy = LMPolicy(tfm.Transformer(CONFIG))
  return policy.logits(params, policy.hidden_states(params, TOKENS, MASK))


@functools.partial(jax.jit, static_argnums=0)
def _logits_bound(policy, frozen, params):
  policy = policy.bind(frozen)
  return policy.logits(params, policy.hidden_states(params, TOKENS, MASK))


def test_fresh_adapters_leave_the_base_model():
  _, env, params, frozen, adapters = adapted()
  names = {'/'.join(k) for k in flax.traverse_util.flatten_dict(adapters)}
  assert 'block_0/attn/q/kernel_lora_a' in names
  assert 'block_1/mlp/down/kernel_lora_b' in names
  assert all(n.endswith(('_lora_a', '_lora_b')) for n in names)
  b = adapters['block_0']['attn']['o']['kernel_lora_b']
  assert b.shape == (4, CONFIG.hidden_dim) and not np.any(b)  # B = 0.
  np.testing.assert_allclose(_logits_bound(env.policy, frozen, adapters),
                             _logits_plain(params), atol=1e-6)


def test_merged_weights_give_the_adapted_logits():
  _, env, params, frozen, adapters = adapted(rank=3, alpha=5.0)
  moved = perturbed(adapters)
  adapted_logits = _logits_bound(env.policy, frozen, moved)
  assert np.max(np.abs(adapted_logits - _logits_plain(params))) > 0.1
  merged = lora.merge(frozen, moved, env.policy.adapters.config)
  assert jax.tree.structure(merged) == jax.tree.structure(params)
  np.testing.assert_allclose(_logits_plain(merged), adapted_logits,
                             rtol=1e-5, atol=1e-5)


def test_reference_is_the_base_with_adapters_off():
  _, env, params, frozen, adapters = adapted()
  moved = perturbed(adapters)
  off = lora.adapters_off(moved)
  assert off == {}  # No copy of anything: the bound base is the reference.
  np.testing.assert_allclose(_logits_bound(env.policy, frozen, off),
                             _logits_plain(params), atol=1e-6)


@pytest.mark.parametrize('targets, adapted_paths', [
    ('attention', {'attn/q', 'attn/k', 'attn/v', 'attn/o'}),
    ('mlp', {'mlp/gate', 'mlp/up', 'mlp/down'}),
    (r'.*/attn/(q|v)$', {'attn/q', 'attn/v'}),
])
def test_targets_choose_the_products(targets, adapted_paths):
  *_, adapters = adapted(targets=targets)
  found = {'/'.join(k[1:3]) for k in flax.traverse_util.flatten_dict(adapters)}
  assert found == adapted_paths


@pytest.mark.parametrize('overrides, message', [
    ({'rank': -1}, r'rank=-1 must be >= 0'),
    ({'rank': 4, 'targets': 'attn/(q'}, r'targets=.*not a regex'),
    ({'rank': 4, 'dropout': 0.1}, r'dropout=0\.1.*not supported'),
    ({'rank': 0, 'quantize': 'int8'}, r'quantize=.*rank > 0'),
    ({'rank': 4, 'quantize': 'int3'}, r'quantize'),
    ({'rank': 4, 'quantize_block': 64}, r'quantize_block=64.*int8'),
])
def test_bad_config_names_the_field(overrides, message):
  with pytest.raises(ValueError, match=r'config\.lora\.' + message):
    schema.parse(lora.LoraConfig, overrides, 'config.lora')


def test_quantize_block_must_divide_the_input_axes():
  with pytest.raises(ValueError, match=r'config\.lora\.quantize_block=16 '
                     'must divide'):
    adapted(quantize='int8', quantize_block=16)  # Head size 8.


def test_targets_matching_nothing_fail_before_training():
  with pytest.raises(ValueError, match='matches no product'):
    adapted(targets=r'.*/nothing$')


def test_policy_without_its_base_says_how_to_bind():
  _, env, _, _, adapters = adapted()
  with pytest.raises(ValueError, match='bind'):
    env.policy.hidden_states(adapters, TOKENS, MASK)


def grpo_state(env, frozen, adapters, tx, algo):
  return TrainState.create(
      adapters, tx, frozen=frozen,
      ref_params=lora.adapters_off(adapters) if algo.uses_reference else None,
      algo_state=algo.init_state())


def test_a_step_trains_only_the_adapters():
  """GRPO with a KL term: the optimizer holds the adapters only, the base is
  untouched, and the first step's KL to the reference is zero (the adapted
  policy starts as its base, which is the reference)."""
  _, env, _, frozen, adapters = adapted()
  config = algos.default_config('grpo')
  config.beta = 0.04
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = grpo_state(env, frozen, adapters, tx, algo)
  opt_leaves = [x for x in jax.tree.leaves(state.opt_state) if x.ndim]
  assert sum(x.size for x in opt_leaves) == 2 * lora.count(adapters)
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx))
  batch = {'prompt': jnp.full((2, 3), 7, jnp.int32),
           'prompt_mask': jnp.ones((2, 3), bool)}
  new, metrics = step(state, batch, jax.random.key(0))
  assert abs(float(metrics['kl'])) < 1e-6
  jax.tree.map(np.testing.assert_array_equal, new.frozen, frozen)
  moved = {path: float(jnp.max(jnp.abs(a - b))) for (path, a), b in zip(
      flax.traverse_util.flatten_dict(new.params).items(),
      flax.traverse_util.flatten_dict(adapters).values())}
  # B leaves zero; A's gradient is zero while B is (dL/dA = x^T g B^T).
  assert all(v > 0 for p, v in moved.items() if p[-1].endswith('_lora_b'))
  assert all(v == 0 for p, v in moved.items() if p[-1].endswith('_lora_a'))


def test_lora_grpo_learns_the_toy_task():
  """Adapters alone (embedding and LM head frozen) learn to emit token 5;
  margin: mean reward +0.4 over 40 steps."""
  env, params, batch = toy.setup()
  policy = env.policy.with_adapters(lora.LoraConfig(rank=4, alpha=8.0))
  env = TextEnv(policy, max_new_tokens=6, eos_id=toy.EOS, pad_id=toy.PAD,
                num_samples=8)
  adapters = policy.init_adapters(params, jax.random.key(1))
  algo = algos.make(algos.default_config('grpo'))
  tx = optax.adam(1e-2)
  state = grpo_state(env, params, adapters, tx, algo)
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx), donate_argnums=0)
  history = []
  for i in range(40):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.2
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.4, history


@pytest.mark.parametrize('qtype, block, tolerance', [
    ('int8', 0, 0.02), ('int8', 8, 0.02), ('int4', 0, 0.3)])
def test_quantized_base(qtype, block, tolerance):
  """QLoRA: the base's adapted kernels are stored as integers (one scale
  per output channel, or per block of inputs); fresh adapters give the
  quantized base's logits, a bounded distance from the unquantized
  model's."""
  _, env, params, frozen, adapters = adapted(quantize=qtype,
                                             quantize_block=block)
  scale = frozen['block_0']['mlp']['up']['kernel'].array.scale
  assert scale.shape == ((CONFIG.hidden_dim // block, CONFIG.mlp_dim)
                         if block else (1, CONFIG.mlp_dim))
  leaves = jax.tree.leaves(frozen)
  assert any(x.dtype == jnp.dtype(qtype) for x in leaves)
  assert parallel.bytes_per_device(frozen) < 0.7 * parallel.bytes_per_device(
      params)
  quantized = _logits_bound(env.policy, frozen, {})
  np.testing.assert_allclose(_logits_bound(env.policy, frozen, adapters),
                             quantized, atol=1e-6)
  plain = _logits_plain(params)
  error = np.max(np.abs(quantized - plain)) / np.max(np.abs(plain))
  assert 0 < error < tolerance, error
  # Adapters on a quantized base still train; merging dequantizes.
  moved = perturbed(adapters)
  merged = lora.merge(frozen, moved, env.policy.adapters.config)
  np.testing.assert_allclose(_logits_plain(merged),
                             _logits_bound(env.policy, frozen, moved),
                             rtol=1e-4, atol=1e-4)


def test_checkpoints_hold_the_adapters_not_the_base(tmp_path):
  _, _, params, frozen, adapters = adapted()
  tx = optax.adam(1e-3)
  state = TrainState.create(adapters, tx, frozen=frozen, ref_params={})
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    ckpt.save(1, state)
  saved = ocp.StandardCheckpointer().restore(tmp_path / '1' / 'default')
  assert saved['frozen'] is None
  assert lora.count(saved, lambda p: True) < lora.count(params,
                                                        lambda p: True)
  with checkpoint.Checkpointer(tmp_path) as ckpt:
    restored = ckpt.restore(1, jax.tree.map(jnp.zeros_like, state).replace(
        frozen=frozen))
  assert restored.frozen is frozen
  jax.tree.map(np.testing.assert_array_equal, restored.params, adapters)


def test_adapters_export_in_peft_layout_that_peft_loads(tmp_path):
  """write_adapters' files, loaded by PEFT onto transformers' model of the
  base, give our adapted logits; so does the merged model, reloaded."""
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  peft = pytest.importorskip('peft')
  _, env, params, frozen, adapters = adapted(rank=2, alpha=6.0)
  moved = perturbed(adapters, 0.5)
  base_dir, adapter_dir = tmp_path / 'base', tmp_path / 'adapters'
  hf.save(base_dir, CONFIG, params)
  export_lib.write_adapters(adapter_dir, base_dir, CONFIG, moved,
                            env.policy.adapters.config)
  assert sorted(os.listdir(adapter_dir)) == ['adapter_config.json',
                                             'adapter_model.safetensors']
  model = transformers.AutoModelForCausalLM.from_pretrained(
      base_dir, dtype=torch.float32)
  model = peft.PeftModel.from_pretrained(model, adapter_dir).eval()
  tokens = np.array([[2, 7, 7, 9, 4, 11]])
  with torch.no_grad():
    theirs = model(torch.from_numpy(tokens)).logits.numpy()
  ours = _logits_bound(env.policy, frozen, moved)[:1]
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
  # The adapters merged into the base, as a run exports them, reload too.
  merged_dir = tmp_path / 'merged'
  hf.save(merged_dir, CONFIG, lora.merge(frozen, moved,
                                         env.policy.adapters.config))
  merged = transformers.AutoModelForCausalLM.from_pretrained(
      merged_dir, dtype=torch.float32).eval()
  with torch.no_grad():
    theirs = merged(torch.from_numpy(tokens)).logits.numpy()
  np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)


# Every algorithm the text recipe steps with `rl_step` (MCTS expert iteration
# is GRPO's loss on a search's rollouts; the diffusion losses are DDPO's).
RL_STEP_ALGORITHMS = ('a2c', 'dapo', 'dqn', 'dr_grpo', 'grpo', 'gspo', 'ilql',
                      'impala', 'online_dpo', 'ppo', 'reinforce', 'remax',
                      'rloo', 'sac', 'scst', 'sql')


@pytest.mark.slow
@pytest.mark.parametrize('name', RL_STEP_ALGORITHMS)
def test_every_rl_step_algorithm_steps_with_adapters(name):
  """Each text algorithm's step runs on an adapted policy: its trainable
  tree (adapters and the algorithm's heads) moves, the base does not."""
  # PPO's default critic is a value head on the policy: it trains.
  _, env, _, frozen, adapters = adapted(
      config=dataclasses.replace(CONFIG, value_head=True))
  assert 'value_proj' in adapters and 'value_proj' not in frozen
  batch = {'prompt': jnp.full((2, 3), 7, jnp.int32),
           'prompt_mask': jnp.ones((2, 3), bool)}
  algo = algos.make(algos.default_config(name))
  tx = optax.adam(1e-3)
  bound = algo_base.bind(env, frozen)
  params = algo.init_params(bound, adapters, jax.random.key(2))
  example = jax.eval_shape(bound.rollout, adapters, batch, jax.random.key(0))
  state = TrainState.create(
      params, tx, frozen=frozen,
      ref_params=(lora.adapters_off(adapters) if algo.uses_reference
                  else None),
      algo_state=algo_base.init_algo_state(algo, params, rollout=example))
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx))
  new, metrics = step(state, batch, jax.random.key(0))
  new, metrics = step(new, batch, jax.random.key(1))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  jax.tree.map(np.testing.assert_array_equal, new.frozen, frozen)
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: float(jnp.max(jnp.abs(a - b))), new.params, params))
  assert max(moved) > 0, 'nothing trained'


@pytest.mark.slow  # A U-Net's step compiles for about 20 s.
def test_dpok_on_an_adapted_unet_trains_only_its_adapters():
  """DDPO's family on the denoising environment: a U-Net's convolutions
  and dense layers get adapters, a DPOK step moves them (its KL to the
  adapters-off base is zero at the start) and leaves the base."""
  from jaxrlgen.envs import diffusion  # pylint: disable=g-import-not-at-top
  from jaxrlgen.models import unet  # pylint: disable=g-import-not-at-top
  from jaxrlgen.policies import DenoiserPolicy  # pylint: disable=g-import-not-at-top
  model = unet.UNet(unet.UNetConfig(image_size=8, features=(8,),
                                    embed_dim=16, num_groups=4))
  policy = DenoiserPolicy(model).with_adapters(
      lora.LoraConfig(rank=2, alpha=4.0, targets='.*'))
  # As if pretrained: a fresh U-Net's zero output layer passes no gradient.
  frozen = perturbed(policy.init_params(jax.random.key(0)), 0.1)
  adapters = policy.init_adapters(frozen, jax.random.key(1))
  assert 'Conv3x3_0' in adapters
  env = diffusion.DiffusionEnv(
      policy, schedule=diffusion.NoiseSchedule(num_timesteps=100),
      sampler=diffusion.Sampler(num_steps=3, eta=1.0), num_samples=2)
  config = algos.default_config('dpok')
  # One minibatch: the KL metric is taken before the step moves anything.
  config.update(min_count=2, buffer_size=4, kl_coef=0.5, num_minibatches=1)
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = TrainState.create(adapters, tx, frozen=frozen,
                            ref_params=lora.adapters_off(adapters),
                            algo_state=algo.init_state())
  brightness = lambda rollout, batch: jnp.mean(
      diffusion.final_images(rollout), axis=(1, 2, 3))
  batch = {'prompt': jnp.array([1, 2], jnp.int32),
           'prompt_mask': jnp.ones((2,), bool)}
  new, metrics = jax.jit(functools.partial(
      step_lib.rl_step, env=env, reward_fn=brightness, algo=algo, tx=tx))(
          state, batch, jax.random.key(0))
  assert abs(float(metrics['kl'])) < 1e-6, metrics
  jax.tree.map(np.testing.assert_array_equal, new.frozen, frozen)
  moved = {k: float(jnp.max(jnp.abs(v - flax.traverse_util.flatten_dict(
      adapters)[k]))) for k, v in flax.traverse_util.flatten_dict(
          new.params).items()}
  assert all(v > 0 for k, v in moved.items() if k[-1].endswith('_lora_b'))


def test_offline_dpo_with_adapters_prefers_chosen():
  """DPO's offline step on adapters (the reference: the base, adapters
  off): chosen = all 5s, rejected = all 9s; the preference gap grows."""
  from jaxrlgen.algos import preference  # pylint: disable=g-import-not-at-top
  _, env, _, frozen, adapters = adapted(rank=4, alpha=16.0)
  cfg = preference.PreferenceConfig(loss='dpo', beta=0.5)
  tx = optax.adam(1e-2)
  state = TrainState.create(adapters, tx, frozen=frozen,
                            ref_params=lora.adapters_off(adapters))
  batch = {'prompt': jnp.full((2, 3), 7, jnp.int32),
           'prompt_mask': jnp.ones((2, 3), bool),
           'chosen': jnp.full((2, 3), 5, jnp.int32),
           'rejected': jnp.full((2, 3), 9, jnp.int32),
           'chosen_mask': jnp.ones((2, 3), bool),
           'rejected_mask': jnp.ones((2, 3), bool)}
  step = jax.jit(functools.partial(preference.offline_step, cfg=cfg, env=env,
                                   tx=tx))

  @jax.jit
  def gap(params):
    chosen, rejected = preference.pair_logp(env.bind(frozen), params, batch)
    return jnp.mean(chosen - rejected)

  before = float(gap(adapters))
  for i in range(15):
    state, metrics = step(state, batch, jax.random.key(i))
  assert float(gap(state.params)) > before + 3.0
  assert float(metrics['accuracy']) == 1.0
