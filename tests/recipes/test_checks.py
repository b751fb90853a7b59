"""Cross-section checks of a text-RL config, before any compute.

Each bad config is built the way a run builds it (the arithmetic smoke
config, overridden like flags, then `text_rl.parse`, `algos.make`,
`text_rl.model_and_tokenizer`, `parallel.make_mesh`), and each error must
name the fields involved. Nothing compiles: a mesh of more devices than this
machine has is an `AbstractMesh`.
"""

import jax
import pytest

from experiments.arithmetic import config as arithmetic
from experiments.ddpo_digits import config as ddpo_config
from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.recipes import checks
from jaxrlgen.recipes import text_rl


def _config(algo=None, **overrides):
  """The arithmetic smoke config (GRPO), with algorithm `algo` at its
  defaults if given, then `overrides` (flattened, as flags give them)."""
  config = arithmetic.get_config('grpo,smoke')
  if algo is not None:
    config.algo = algos.default_config(algo)
  config.update_from_flattened_dict(overrides)
  return config


def _parts(mesh_shape=None, algo=None, **overrides):
  """(settings, algorithm, tokenizer, model config, mesh) as a run has them."""
  config = _config(algo, **overrides)
  settings = text_rl.parse(config)
  tokenizer, model_cfg = text_rl.model_and_tokenizer(config.model)
  mesh = (jax.sharding.AbstractMesh(mesh_shape, parallel.AXES) if mesh_shape
          else parallel.make_mesh(config.mesh))
  return settings, algos.make(config.algo), tokenizer, model_cfg, mesh


def _check(mesh_shape=None, algo=None, **overrides):
  settings, algo, _, model_cfg, mesh = _parts(mesh_shape, algo, **overrides)
  checks.check(settings, algo, model_cfg, mesh)


def test_the_smoke_config_passes():
  _check()
  _check((2, 2, 2))  # Its heads, MLP and hidden width divide by 2.


@pytest.mark.parametrize('mesh_shape, overrides, message', [
    ((1, 1, 3), {}, r'config\.model\.num_heads=4 is not divisible by '
     r'config\.mesh\.tensor=3: .*one of \[1, 2, 4\]'),
    ((1, 1, 2), {'model.mlp_dim': 66 + 1},
     r'config\.model\.mlp_dim=67 is not divisible by config\.mesh\.tensor=2'),
    ((1, 3, 1), {}, r'config\.model\.hidden_dim=32 is not divisible by '
     r'config\.mesh\.fsdp=3'),
])
def test_model_dimensions_the_mesh_does_not_divide(mesh_shape, overrides,
                                                   message):
  with pytest.raises(ValueError, match=message):
    _check(mesh_shape, **overrides)


def test_key_value_heads_fewer_than_tensor_shards_are_allowed():
  _check((1, 1, 4), **{'model.num_kv_heads': 2})  # Repeated, as in GQA.


def test_minibatches_that_do_not_divide_the_batch():
  with pytest.raises(ValueError, match=(
      r'config\.rl\.batch_size=16 sequences per step must be divisible by '
      r'config\.algo\.num_minibatches=3; set .* one of \[1, 2, 4, 8, 16\]')):
    _check(**{'algo.num_minibatches': 3})
  _check(**{'algo.num_minibatches': 4})


def test_online_dpo_minibatches_split_prompts():
  with pytest.raises(ValueError, match=(
      r'config\.rl\.batch_size / config\.rl\.group_size = 4 prompts \(pairs\)'
      r' per step must be divisible by config\.algo\.num_minibatches=8')):
    _check(algo='online_dpo', **{'algo.num_minibatches': 8})
  _check(algo='online_dpo', **{'algo.num_minibatches': 4})


def test_replay_minibatches_are_left_to_the_replay_check():
  # DQN splits its replay sample, not the step's batch (replay.check_config).
  _check(algo='dqn', **{'algo.num_minibatches': 3,
                        'algo.replay_batch_size': 12})


@pytest.mark.parametrize('name', ['grpo', 'rloo', 'online_dpo'])
def test_group_relative_algorithms_need_two_samples_per_prompt(name):
  with pytest.raises(ValueError, match=(
      rf"config\.rl\.group_size=1: config\.algo\.name='{name}' compares the "
      r'samples of a prompt')):
    _check(algo=name, **{'rl.group_size': 1})


def test_a_reward_of_zero_weights_only():
  with pytest.raises(ValueError, match=(
      r"config\.reward\.terms=\{'exact_match': 0\.0\} weighs every term by 0")):
    _check(**{'reward.terms': (('exact_match', 0.0),)})
  _check(**{'reward.terms': (('exact_match', 0.0), ('length_penalty', 0.5))})


# The checks that other modules make, through the same path.

def test_a_mesh_larger_than_the_devices():
  with pytest.raises(ValueError, match=(
      rf'config\.mesh=.* uses {4 * jax.device_count()} devices but there are '
      rf'{jax.device_count()}; make the sizes multiply')):
    _parts(**{'mesh.data': 4 * jax.device_count()})


def test_heads_that_do_not_divide_the_hidden_width():
  with pytest.raises(ValueError, match=(
      r'config\.model\.hidden_dim=30 must be divisible by num_heads=4 .* or '
      r'set head_dim')):
    _parts(**{'model.hidden_dim': 30})


def test_a_batch_that_groups_do_not_divide():
  with pytest.raises(ValueError, match=(
      r'config\.rl\.batch_size=10 must be divisible by group_size=4')):
    _parts(**{'rl.batch_size': 10})


def test_sequences_longer_than_the_model_holds():
  settings, algo, tokenizer, model_cfg, mesh = _parts(
      **{'rl.max_new_tokens': 17})  # 8 prompt + 17 > max_seq_len 24.
  with pytest.raises(ValueError, match=(
      r'config\.data\.max_prompt_len \+ config\.rl\.max_new_tokens = 25 '
      r'tokens do not fit .* config\.model\.max_seq_len=24')):
    text_rl.validate(settings, algo, tokenizer, model_cfg, mesh)


def test_no_reward_terms():
  # The text recipe falls back to the task's reward; the digits experiment
  # has none to fall back to.
  config = ddpo_config.get_config('ddpo_is,smoke')
  config.reward.terms = ()
  with pytest.raises(ValueError, match=r'config\.reward\.terms is empty'):
    ddpo_config.parse(config)
