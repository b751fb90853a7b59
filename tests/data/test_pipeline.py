"""Tests for jaxrlgen/data/pipeline.py."""

import numpy as np
import pytest

from jaxrlgen.data.pipeline import batch_indices
from jaxrlgen.data.pipeline import get_batch
from jaxrlgen.data.tokenizer import ByteTokenizer

PAD, EOS = ByteTokenizer.pad_id, ByteTokenizer.eos_id


def _stream(num_records, seed, num_epochs):
  """The reference: epoch permutations laid end to end."""
  return np.concatenate([
      np.random.default_rng([seed, e]).permutation(num_records)
      for e in range(num_epochs)
  ])


def test_batch_indices_is_pure_function_of_seed_and_step():
  a = batch_indices(50, 8, step=7, seed=1)
  np.testing.assert_array_equal(a, batch_indices(50, 8, step=7, seed=1))
  assert a.shape == (8,) and np.issubdtype(a.dtype, np.integer)
  assert not np.array_equal(a, batch_indices(50, 8, step=7, seed=2))
  assert not np.array_equal(a, batch_indices(50, 8, step=8, seed=1))


def test_each_record_once_per_epoch():
  # 10 steps of 5 = two epochs of 25.
  seen = np.concatenate([batch_indices(25, 5, s, seed=0) for s in range(10)])
  np.testing.assert_array_equal(np.sort(seen[:25]), np.arange(25))
  np.testing.assert_array_equal(np.sort(seen[25:]), np.arange(25))
  assert not np.array_equal(seen[:25], seen[25:])  # Reshuffled per epoch.


@pytest.mark.parametrize('num_records,batch_size', [(10, 4), (7, 3), (3, 8)])
def test_matches_reference_stream_across_epoch_boundaries(
    num_records, batch_size):
  steps = 12
  stream = _stream(num_records, seed=5,
                   num_epochs=steps * batch_size // num_records + 1)
  for step in range(steps):
    np.testing.assert_array_equal(
        batch_indices(num_records, batch_size, step, seed=5),
        stream[step * batch_size:(step + 1) * batch_size])


def test_crossing_batch_takes_rest_from_next_epoch():
  # Step 2 of batch 4 over 10 records covers positions 8..11: the last two
  # of epoch 0 and the first two of epoch 1.
  e0 = np.random.default_rng([0, 0]).permutation(10)
  e1 = np.random.default_rng([0, 1]).permutation(10)
  np.testing.assert_array_equal(
      batch_indices(10, 4, 2, seed=0), np.concatenate([e0[8:], e1[:2]]))


@pytest.mark.parametrize('step', [0, 3, 11])
def test_process_shares_partition_global_batch(step):
  global_batch = batch_indices(13, 12, step, seed=2)
  shares = [
      batch_indices(13, 12, step, seed=2, process_index=p, process_count=4)
      for p in range(4)
  ]
  assert all(s.shape == (3,) for s in shares)
  np.testing.assert_array_equal(np.concatenate(shares), global_batch)


def test_batch_indices_errors():
  with pytest.raises(ValueError, match='batch_size=10 .*process_count=4'):
    batch_indices(100, 10, 0, 0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match='process_index'):
    batch_indices(100, 8, 0, 0, process_index=2, process_count=2)
  with pytest.raises(ValueError, match='num_records'):
    batch_indices(0, 8, 0, 0)


def test_get_batch_reads_in_order():
  source = [{'i': i} for i in range(10)]
  assert get_batch(source, np.array([3, 1, 3])) == [{'i': 3}, {'i': 1},
                                                    {'i': 3}]

  class Batched(list):

    def __getitems__(self, keys):
      assert all(type(k) is int for k in keys)
      return [self[k] for k in keys]

  assert get_batch(Batched(source), np.array([2, 0])) == [{'i': 2}, {'i': 0}]
