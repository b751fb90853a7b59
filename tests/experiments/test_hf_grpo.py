"""The arithmetic experiment's `hf` variant end to end on a tiny random Qwen2
checkpoint with a trained BPE tokenizer, written the way transformers
writes one."""

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
tokenizers = pytest.importorskip('tokenizers')

from experiments.arithmetic import config as arithmetic  # pylint: disable=g-import-not-at-top
from jaxrlgen import recipes
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.train import writers


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
  path = tmp_path_factory.mktemp('qwen')
  tok = tokenizers.Tokenizer(tokenizers.models.BPE())
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(
      add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  rng = np.random.default_rng(0)
  text = [f'{a}+{b}={a + b}' for a, b in rng.integers(0, 100, (500, 2))]
  tok.train_from_iterator(text, tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<|endoftext|>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet()))
  tok.save(str(path / 'tokenizer.json'))
  (path / 'tokenizer_config.json').write_text(json.dumps(
      {'eos_token': '<|endoftext|>', 'pad_token': '<|endoftext|>'}))
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(transformers.Qwen2Config(
      vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64,
      num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
      max_position_embeddings=64, eos_token_id=0, tie_word_embeddings=True))
  model.save_pretrained(path, safe_serialization=True)
  return str(path)


@pytest.mark.slow
def test_hf_grpo_runs_and_exports(checkpoint, tmp_path):
  config = arithmetic.get_config('hf')
  config.model.update(path=checkpoint, param_dtype='float32', dtype='float32')
  config.data.data_dir = str(tmp_path / 'data')
  config.task.update(max_operand=20, num_train=200, num_test=64)
  config.rl.update(batch_size=16, group_size=4)
  config.eval.update(every=2, num_examples=16, batch_size=16)
  config.update(total_steps=2, log_every=1, checkpoint_every=0)
  summary = recipes.run(config, str(tmp_path / 'run'))
  assert 0.0 <= summary['eval/accuracy_after'] <= 1.0
  records = [r for r in writers.read_metrics(str(tmp_path / 'run'))
             if 'reward/mean' in r]
  assert [r['step'] for r in records] == [1, 2]
  # The trained policy is a checkpoint transformers loads, with its tokenizer.
  export = tmp_path / 'run' / 'hf_model'
  model = transformers.AutoModelForCausalLM.from_pretrained(export)
  assert model.config.vocab_size == HFTokenizer.from_dir(export).vocab_size
  assert os.path.exists(export / 'tokenizer.json')
