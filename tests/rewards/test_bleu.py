"""Tests for jaxrlgen/rewards/bleu.py against a plain-Python sentence BLEU."""

import collections
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.rewards import bleu


def _reference_bleu(candidate, references, max_order, epsilon):
  """Sentence BLEU with uniform weights and method-1 smoothing, by Counters."""
  if len(candidate) < max_order:
    return 0.0
  log_p = 0.0
  for n in range(1, max_order + 1):
    grams = collections.Counter(tuple(candidate[i:i + n])
                                for i in range(len(candidate) - n + 1))
    best = collections.Counter()
    for ref in references:
      counts = collections.Counter(tuple(ref[i:i + n])
                                   for i in range(len(ref) - n + 1))
      for g, c in counts.items():
        best[g] = max(best[g], c)
    matches = sum(min(c, best[g]) for g, c in grams.items())
    if matches == 0:
      if not epsilon:
        return 0.0
      matches = epsilon
    log_p += math.log(matches / (len(candidate) - n + 1))
  c = len(candidate)
  r = min((abs(len(ref) - c), len(ref)) for ref in references)[1]
  brevity = 1.0 if c > r else math.exp(1.0 - r / c)
  return brevity * math.exp(log_p / max_order)


_bleu = jax.jit(bleu.bleu, static_argnames='smooth_epsilon')


def _corpus(seed, num, length, vocab, min_length):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, vocab, (num, length))
  lengths = rng.integers(min_length, length + 1, num)
  return tokens, lengths


@pytest.mark.parametrize('max_order, epsilon', [(2, 0.0), (3, 0.1), (4, 0.1)])
def test_bleu_matches_python_reference(max_order, epsilon):
  # A 4-token vocabulary makes repeated n-grams (clipping) and partial
  # matches common; varied lengths exercise masks and the brevity penalty.
  refs, ref_lengths = _corpus(0, 6, 9, 4, 5)
  cands, cand_lengths = _corpus(1, 40, 9, 4, 1)
  table = bleu.build_references(refs, ref_lengths, max_order=max_order)
  mask = np.arange(9)[None] < cand_lengths[:, None]
  got = _bleu(jnp.asarray(cands, jnp.int32), jnp.asarray(mask), table,
              smooth_epsilon=epsilon)
  ref_list = [list(r[:l]) for r, l in zip(refs, ref_lengths)]
  want = [_reference_bleu(list(c[:l]), ref_list, max_order, epsilon)
          for c, l in zip(cands, cand_lengths)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)
  assert 0 < np.count_nonzero(want) < len(want) or epsilon


def test_exact_copy_of_a_reference_scores_one():
  refs, _ = _corpus(2, 5, 10, 50, 10)
  table = bleu.build_references(refs, max_order=4)
  scores = _bleu(jnp.asarray(refs, jnp.int32),
                 jnp.ones(refs.shape, jnp.bool_), table)
  np.testing.assert_allclose(scores, 1.0, rtol=1e-6)


def test_hash_collisions_never_match(monkeypatch):
  """With a hash that collides constantly, lookups still find exactly the
  n-grams the references have: every hit is confirmed token by token."""
  weak = lambda grams, xp: (grams.sum(-1) % 3).astype(xp.uint32)
  monkeypatch.setattr(bleu, '_hash', weak)
  refs, ref_lengths = _corpus(3, 5, 8, 6, 4)
  table = bleu.build_references(refs, ref_lengths, max_order=3)
  assert max(t.probe for t in table.tables) > 1
  cands, cand_lengths = _corpus(4, 20, 8, 6, 3)
  mask = np.arange(8)[None] < cand_lengths[:, None]
  # A fresh function, so no trace made with the real hash is reused.
  got = jax.jit(lambda c, m, t: bleu.bleu(c, m, t, smooth_epsilon=0.1))(
      jnp.asarray(cands, jnp.int32), jnp.asarray(mask), table)
  ref_list = [list(r[:l]) for r, l in zip(refs, ref_lengths)]
  want = [_reference_bleu(list(c[:l]), ref_list, 3, 0.1)
          for c, l in zip(cands, cand_lengths)]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)


def test_bad_references():
  with pytest.raises(ValueError, match='max_order'):
    bleu.build_references(np.zeros((2, 3), np.int32), max_order=4)
  with pytest.raises(ValueError, match='int\\[R, L\\]'):
    bleu.build_references(np.zeros((3,), np.int32))
