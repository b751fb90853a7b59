"""Hugging Face checkpoints: logits and greedy parity with transformers, and
the way back (saved by jaxrlgen, loaded by transformers)."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from jaxrlgen.envs.text import Sampling  # pylint: disable=g-import-not-at-top
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy

VOCAB, EOS = 128, 127
COMMON = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128,
              num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, max_position_embeddings=128)
CONFIGS = {
    'llama3': lambda: transformers.LlamaConfig(
        **COMMON, rope_scaling={
            'rope_type': 'llama3', 'factor': 8.0, 'low_freq_factor': 1.0,
            'high_freq_factor': 4.0, 'original_max_position_embeddings': 16}),
    'llama_tied': lambda: transformers.LlamaConfig(
        **COMMON, tie_word_embeddings=True, rope_theta=500_000.0),
    'qwen2': lambda: transformers.Qwen2Config(**COMMON, rope_theta=1e6),
    'qwen3': lambda: transformers.Qwen3Config(**COMMON, head_dim=32),
    'gemma': lambda: transformers.GemmaConfig(**COMMON, head_dim=16),
    'gemma2': lambda: transformers.Gemma2Config(
        **COMMON, head_dim=16, sliding_window=6, query_pre_attn_scalar=24,
        attn_logit_softcapping=5.0, final_logit_softcapping=3.0),
    'gpt2': lambda: transformers.GPT2Config(
        vocab_size=VOCAB, n_embd=64, n_layer=2, n_head=4, n_positions=128,
        bos_token_id=EOS, eos_token_id=EOS),
}


def random_hf_model(name: str):
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(
      CONFIGS[name](), dtype=torch.float32)
  with torch.no_grad():  # Every tensor random: biases and norms too.
    for param in model.parameters():
      param.add_(0.05 * torch.randn_like(param))
  return model.eval()


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
  with torch.no_grad():
    return model(torch.from_numpy(tokens)).logits.numpy()


def our_logits(config, params, tokens: np.ndarray) -> np.ndarray:
  model = tfm.Transformer(config)
  mask = jnp.ones(tokens.shape, jnp.bool_)
  hidden, _ = model.apply({'params': params}, tokens,
                          tfm.positions_from_mask(mask), mask)
  return np.asarray(model.apply({'params': params}, hidden,
                                method=model.logits))


@pytest.fixture(scope='module', params=sorted(CONFIGS))
def checkpoint(request, tmp_path_factory):
  """(name, HF model, its directory)."""
  model = random_hf_model(request.param)
  path = tmp_path_factory.mktemp(request.param)
  # One family saved in shards, to read through the index.
  shard = '30KB' if request.param == 'llama3' else '1GB'
  model.save_pretrained(path, safe_serialization=True, max_shard_size=shard)
  return request.param, model, str(path)


def test_logits_match_transformers(checkpoint):
  name, model, path = checkpoint
  config, params = hf.load(path, max_seq_len=64)
  tokens = np.random.default_rng(0).integers(0, VOCAB, (2, 24)).astype(
      np.int32)
  diff = np.abs(our_logits(config, params, tokens) - hf_logits(model, tokens))
  assert diff.max() < 1e-4, (name, diff.max())
  if name == 'llama3':
    assert os.path.exists(os.path.join(path, hf.INDEX_FILE))


def test_greedy_generation_matches_transformers(checkpoint):
  name, model, path = checkpoint
  config, params = hf.load(path, max_seq_len=48)
  prompt = np.random.default_rng(1).integers(0, EOS, (2, 8)).astype(np.int32)
  env = TextEnv(LMPolicy(tfm.Transformer(config)), max_new_tokens=32,
                sampling=Sampling(greedy=True), eos_id=EOS, pad_id=0,
                suppress_eos=True)
  batch = {'prompt': prompt, 'prompt_mask': np.ones_like(prompt, bool)}
  rollout = jax.jit(env.rollout)(params, batch, jax.random.key(0))
  with torch.no_grad():
    out = model.generate(torch.from_numpy(prompt).long(), max_new_tokens=32,
                         min_new_tokens=32, do_sample=False,
                         suppress_tokens=[EOS], eos_token_id=None,
                         pad_token_id=0,
                         attention_mask=torch.ones(prompt.shape, dtype=torch.long))
  np.testing.assert_array_equal(np.asarray(rollout.actions),
                                out[:, prompt.shape[1]:].numpy(), err_msg=name)


def test_saved_checkpoint_loads_in_transformers(checkpoint, tmp_path):
  name, model, path = checkpoint
  config, params = hf.load(path, max_seq_len=64)
  hf.save(tmp_path, config, params, hf_config=hf.read_config(path))
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(
      tmp_path, dtype=torch.float32).eval()
  tokens = np.random.default_rng(2).integers(0, VOCAB, (2, 24)).astype(
      np.int32)
  diff = np.abs(hf_logits(reloaded, tokens) - hf_logits(model, tokens))
  assert diff.max() < 1e-5, (name, diff.max())


@pytest.fixture(scope='module')
def saved(tmp_path_factory):
  """A tiny jaxrlgen model saved as a Llama checkpoint by jaxrlgen."""
  config = tfm.TransformerConfig(vocab_size=VOCAB, hidden_dim=32, mlp_dim=64,
                                 num_layers=1, num_heads=4, num_kv_heads=2,
                                 max_seq_len=32)
  params = tfm.init_params(config, jax.random.key(0))
  path = tmp_path_factory.mktemp('ours')
  hf.save(path, config, params)
  return config, params, path


def test_round_trip_of_a_jaxrlgen_model(saved):
  config, params, path = saved
  loaded_config, loaded = hf.load(path, max_seq_len=32)
  assert loaded_config == dataclasses.replace(config, head_dim=8,
                                              max_positions=32)
  jax.tree.map(np.testing.assert_array_equal, loaded, params)
  # bfloat16 on request, placed with the given shardings.
  device = jax.devices()[0]
  sharding = jax.sharding.SingleDeviceSharding(device)
  _, bf16 = hf.load(path, param_dtype='bfloat16',
                    shardings=lambda tree: jax.tree.map(lambda _: sharding,
                                                        tree))
  leaf = bf16['block_0']['attn']['q']['kernel']
  assert leaf.dtype == jnp.bfloat16 and leaf.sharding == sharding


def test_unknown_architecture(saved, tmp_path):
  _, _, path = saved
  config = hf.read_config(path)
  config['architectures'] = ['MambaForCausalLM']
  (tmp_path / 'config.json').write_text(json.dumps(config))
  with pytest.raises(ValueError, match='MambaForCausalLM.*supported'):
    hf.load(tmp_path)


def test_missing_tensor_is_named(saved, tmp_path):
  config, params, _ = saved
  hf.save(tmp_path, config, params)
  from safetensors.numpy import load_file, save_file  # pylint: disable=g-import-not-at-top
  weights = load_file(str(tmp_path / hf.WEIGHTS_FILE))
  del weights['model.layers.0.mlp.up_proj.weight']
  save_file(weights, str(tmp_path / hf.WEIGHTS_FILE))
  with pytest.raises(KeyError, match=r'model\.layers\.0\.mlp\.up_proj\.weight'):
    hf.load(tmp_path)


def test_shape_mismatch_is_named(saved, tmp_path):
  config, params, path = saved
  hf.save(tmp_path, config, params)
  hf_config = hf.read_config(tmp_path)
  hf_config['intermediate_size'] = 48
  (tmp_path / 'config.json').write_text(json.dumps(hf_config))
  with pytest.raises(ValueError, match=r'mlp\.gate_proj\.weight.*\(32, 48\)'):
    hf.load(tmp_path)
