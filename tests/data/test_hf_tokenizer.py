"""HFTokenizer over tokenizer.json and over a SentencePiece model."""

import json

import numpy as np
import pytest

tokenizers = pytest.importorskip('tokenizers')
sentencepiece = pytest.importorskip('sentencepiece')

from jaxrlgen.data.hf_tokenizer import HFTokenizer  # pylint: disable=g-import-not-at-top

TEXT = ['what is 12 plus 30', 'the sum is 42', 'what is 7 plus 5',
        'the sum is 12'] * 20


def write_json(path, value):
  path.write_text(json.dumps(value))


@pytest.fixture
def bpe_dir(tmp_path):
  tok = tokenizers.Tokenizer(tokenizers.models.BPE(unk_token='<unk>'))
  tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = tokenizers.decoders.ByteLevel()
  trainer = tokenizers.trainers.BpeTrainer(
      vocab_size=300, special_tokens=['<pad>', '<s>', '</s>', '<unk>'],
      initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
  tok.train_from_iterator(TEXT, trainer)
  tok.save(str(tmp_path / 'tokenizer.json'))
  write_json(tmp_path / 'tokenizer_config.json',
             {'bos_token': '<s>', 'eos_token': {'content': '</s>'},
              'pad_token': '<pad>'})
  return tmp_path


def test_tokenizer_json(bpe_dir):
  tok = HFTokenizer.from_dir(bpe_dir)
  assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
  ids = tok.encode('what is 12 plus 30', add_bos=True, add_eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert len(ids) < len('what is 12 plus 30') + 2  # Merges happened.
  assert tok.decode(ids) == 'what is 12 plus 30'
  assert tok.decode(ids + [5, 6]) == 'what is 12 plus 30'  # Stops at EOS.
  padded, mask = tok.pad_batch([ids, ids[:3]], 30, side='left')
  assert padded.shape == (2, 30) and mask.sum() == len(ids) + 3
  assert (padded[~mask] == tok.pad_id).all()
  assert tok.decode_batch(padded, mask)[0] == 'what is 12 plus 30'


def test_eos_from_generation_config_wins(bpe_dir):
  write_json(bpe_dir / 'config.json', {'eos_token_id': 1})
  write_json(bpe_dir / 'generation_config.json', {'eos_token_id': [3, 2]})
  assert HFTokenizer.from_dir(bpe_dir).eos_id == 3


def test_no_pad_token_pads_with_eos(bpe_dir):
  write_json(bpe_dir / 'tokenizer_config.json', {'eos_token': '</s>'})
  tok = HFTokenizer.from_dir(bpe_dir)
  assert tok.pad_id == tok.eos_id == 2 and tok.bos_id is None
  with pytest.raises(ValueError, match='no BOS'):
    tok.encode('x', add_bos=True)


def test_sentencepiece(tmp_path):
  corpus = tmp_path / 'corpus.txt'
  corpus.write_text('\n'.join(TEXT))
  sentencepiece.SentencePieceTrainer.train(
      input=str(corpus), model_prefix=str(tmp_path / 'tokenizer'),
      vocab_size=40, pad_id=3, model_type='bpe', minloglevel=2)
  tok = HFTokenizer.from_dir(tmp_path)
  assert (tok.bos_id, tok.eos_id, tok.pad_id) == (1, 2, 3)
  ids = tok.encode('the sum is 42', add_eos=True)
  assert tok.decode(ids) == 'the sum is 42'
  assert tok.vocab_size == 40


def test_missing_files(tmp_path):
  with pytest.raises(FileNotFoundError, match='tokenizer.json'):
    HFTokenizer.from_dir(tmp_path)
