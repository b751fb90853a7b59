"""Preference triples: padding, labels, pairs from ranked samples, batching."""

import numpy as np
import pytest

from jaxrlgen.data import preferences
from jaxrlgen.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()


def test_collate_pads_prompts_left_and_completions_right():
  out = preferences.collate_triples(['1+1=', '9='], ['2', [50, TOK.eos_id]],
                                    ['3', '11'], TOK, 6, 4)
  assert out['prompt'].shape == (2, 6) and out['chosen'].shape == (2, 4)
  np.testing.assert_array_equal(out['prompt_mask'][1], [0, 0, 0, 0, 1, 1])
  # Text completions get EOS; id sequences are taken as they are.
  np.testing.assert_array_equal(out['chosen'][0], [ord('2'), TOK.eos_id,
                                                   TOK.pad_id, TOK.pad_id])
  np.testing.assert_array_equal(out['chosen'][1][:2], [50, TOK.eos_id])
  np.testing.assert_array_equal(out['rejected_mask'][1], [1, 1, 1, 0])
  with pytest.raises(ValueError, match='max_completion_len'):
    preferences.collate_triples(['1='], ['12345'], ['1'], TOK, 4, 4)
  with pytest.raises(ValueError, match='as many prompts'):
    preferences.collate_triples(['1='], ['1', '2'], ['1'], TOK, 4, 4)


def test_bradley_terry_labels_follow_the_sigmoid():
  rng = np.random.default_rng(0)
  n = 20000
  a = np.full(n, 0.6)
  b = np.full(n, 0.5)
  wins = preferences.label_pairs(a, b, rng, label='bradley_terry',
                                 temperature=0.1)
  want = 1 / (1 + np.exp(-1.0))
  assert abs(wins.mean() - want) < 0.015, (wins.mean(), want)
  np.testing.assert_array_equal(
      preferences.label_pairs(np.array([1.0, 0.0, 0.3]),
                              np.array([0.0, 1.0, 0.3]), rng), [1, 0, 1])
  with pytest.raises(ValueError, match='known'):
    preferences.label_pairs(a, b, rng, label='coin')


def test_pairs_from_samples():
  rewards = np.array([[0.1, 0.9, 0.5], [0.7, 0.2, 0.4]])
  rng = np.random.default_rng(1)
  chosen, rejected = preferences.pairs_from_samples(rewards, rng,
                                                    strategy='best_worst')
  np.testing.assert_array_equal(chosen, [1, 0])
  np.testing.assert_array_equal(rejected, [0, 1])
  many = np.tile(rewards, (500, 1))
  chosen, rejected = preferences.pairs_from_samples(many, rng)
  assert np.all(chosen != rejected)
  rows = np.arange(len(many))
  assert np.all(many[rows, chosen] >= many[rows, rejected])
  # Random pairs cover every unordered pair of the three samples.
  assert len({tuple(sorted(p)) for p in zip(chosen, rejected)}) == 3
  with pytest.raises(ValueError, match='G >= 2'):
    preferences.pairs_from_samples(np.ones((3, 1)), rng)


def test_triples_from_samples_and_data_batches():
  prompt = np.arange(6).reshape(3, 2)
  completions = np.arange(3 * 2 * 4).reshape(3, 2, 4)
  masks = completions % 3 > 0
  triples = preferences.triples_from_samples(
      prompt, prompt > 0, completions, masks, np.array([1, 0, 1]),
      np.array([0, 1, 0]))
  np.testing.assert_array_equal(triples['chosen'][0], completions[0, 1])
  np.testing.assert_array_equal(triples['rejected'][1], completions[1, 1])
  np.testing.assert_array_equal(triples['chosen_mask'][2], masks[2, 1])
  data = preferences.PreferenceData(triples)
  train, heldout = data.split(1)
  assert len(train) == 2 and len(heldout) == 1
  first = data.batch(5, 2, seed=3)
  np.testing.assert_array_equal(first['chosen'], data.batch(5, 2, seed=3)[
      'chosen'])
  with pytest.raises(ValueError, match='lacks'):
    preferences.PreferenceData({'prompt': prompt})
