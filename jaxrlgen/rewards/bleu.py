"""Sentence BLEU of token sequences against a fixed reference corpus, in JAX.

BLEU (Papineni et al. 2002) of a candidate c against references R:

  p_n  = sum_g min(count_c(g), max_{r in R} count_r(g)) / (|c| - n + 1)
  BLEU = BP * exp(1/N sum_{n=1..N} log p_n),
  BP   = 1 if |c| > r* else exp(1 - r* / |c|),  r* the reference length
         closest to |c| (the shorter on ties),

with g running over the n-grams of c. SeqGAN's PG-BLEU baseline (Yu et al.
2017) rewards each sample by its BLEU against the training data, so R is
thousands of sequences and the max over references must not be a loop over
them: `build_references` precomputes once, on the host, every distinct
reference n-gram with its largest count in any single reference, sorted by a
32-bit hash; `bleu` finds a candidate's n-grams by binary search on the hash
and confirms each hit by comparing the tokens, so hash collisions cannot
produce false matches (the table knows how many entries share a hash and
probes them all).

Zero matches of some order make unsmoothed BLEU zero; `smooth_epsilon` > 0
replaces a zero numerator by epsilon (Chen & Cherry 2014, "A systematic
comparison of smoothing techniques for sentence-level BLEU", method 1, as
nltk's `SmoothingFunction().method1`).
"""

import flax.struct
import chex
import jax
import jax.numpy as jnp
import numpy as np

_FNV_OFFSET, _FNV_PRIME = 2166136261, 16777619


def _hash(grams, xp):
  """uint32 hash of the n-grams along the last axis (NumPy or jax.numpy).

  FNV-1a over whole tokens, then MurmurHash3's finaliser to spread the bits.
  Both array libraries wrap uint32 arithmetic identically.
  """
  u32 = xp.uint32
  h = xp.full(grams.shape[:-1], _FNV_OFFSET, dtype=u32)
  for i in range(grams.shape[-1]):
    h = (h ^ grams[..., i].astype(u32)) * u32(_FNV_PRIME)
  h = h ^ (h >> u32(16))
  h = h * u32(0x85EBCA6B)
  h = h ^ (h >> u32(13))
  h = h * u32(0xC2B2AE35)
  return h ^ (h >> u32(16))


@flax.struct.dataclass
class NGramTable:
  """The distinct reference n-grams of one order, sorted by hash.

  Attributes:
    hashes: u32[M] sorted hashes.
    grams: i32[M, n] the n-grams.
    max_counts: i32[M] the largest count of each n-gram in one reference.
    probe: how many consecutive entries share a hash at most (static).
  """

  hashes: jax.Array
  grams: jax.Array
  max_counts: jax.Array
  probe: int = flax.struct.field(pytree_node=False)


@flax.struct.dataclass
class References:
  """A reference corpus prepared for `bleu`.

  Attributes:
    tables: one NGramTable per order 1..max_order.
    lengths: i32[K] the distinct reference lengths, ascending.
  """

  tables: tuple[NGramTable, ...]
  lengths: jax.Array

  @property
  def max_order(self) -> int:
    return len(self.tables)


def _windows(tokens: np.ndarray, n: int) -> np.ndarray:
  """[R, L] -> [R, L - n + 1, n] n-grams at every start position."""
  return np.stack([tokens[:, i:tokens.shape[1] - n + 1 + i] for i in range(n)],
                  axis=-1)


def build_references(tokens, lengths=None, *, max_order: int = 4) -> References:
  """Prepares reference sequences (host-side NumPy, once per corpus).

  Args:
    tokens: int[R, L] reference sequences, each a prefix of its row.
    lengths: int[R] length of each reference; default L for all.
    max_order: N, the longest n-gram.
  Returns:
    References for `bleu`.
  """
  tokens = np.asarray(tokens, np.int64)
  if tokens.ndim != 2 or tokens.shape[0] < 1:
    raise ValueError(f'References must be int[R, L] with R >= 1; got shape '
                     f'{tokens.shape}.')
  r, l = tokens.shape
  lengths = (np.full((r,), l) if lengths is None
             else np.asarray(lengths, np.int64))
  if max_order < 1:
    raise ValueError(f'BLEU max_order={max_order} must be >= 1.')
  if max_order > l:
    raise ValueError(f'BLEU max_order={max_order} exceeds the reference '
                     f'length {l}.')
  tables = []
  for n in range(1, max_order + 1):
    grams = _windows(tokens, n)  # [R, P, n]
    valid = np.arange(l - n + 1)[None] + n <= lengths[:, None]
    ref_id = np.broadcast_to(np.arange(r)[:, None], valid.shape)[valid]
    grams = grams[valid]
    # Count of each n-gram within each reference, then the max over them.
    rows, counts = np.unique(np.concatenate([ref_id[:, None], grams], axis=1),
                             axis=0, return_counts=True)
    distinct, inverse = np.unique(rows[:, 1:], axis=0, return_inverse=True)
    max_counts = np.zeros(len(distinct), np.int64)
    np.maximum.at(max_counts, inverse.reshape(-1), counts)
    hashes = _hash(distinct.astype(np.uint32), np)
    order = np.argsort(hashes, kind='stable')
    _, multiplicity = np.unique(hashes, return_counts=True)
    tables.append(NGramTable(
        hashes=jnp.asarray(hashes[order]),
        grams=jnp.asarray(distinct[order], jnp.int32),
        max_counts=jnp.asarray(max_counts[order], jnp.int32),
        probe=int(multiplicity.max())))
  return References(tables=tuple(tables),
                    lengths=jnp.asarray(np.unique(lengths), jnp.int32))


def _max_reference_counts(table: NGramTable, grams: jax.Array) -> jax.Array:
  """i32[...] the table's max count of each n-gram in grams i32[..., n]
  (0 for n-grams no reference has)."""
  h = _hash(grams, jnp)
  start = jnp.searchsorted(table.hashes, h.reshape(-1)).reshape(h.shape)
  size = table.hashes.shape[0]
  found = jnp.zeros(h.shape, jnp.int32)
  for j in range(table.probe):
    i = jnp.minimum(start + j, size - 1)
    same = (table.hashes[i] == h) & jnp.all(table.grams[i] == grams, axis=-1)
    found = jnp.where(same, table.max_counts[i], found)
  return found


def clipped_matches(candidates: jax.Array, lengths: jax.Array,
                    table: NGramTable, n: int) -> tuple[jax.Array, jax.Array]:
  """Clipped n-gram matches and n-gram count of each candidate.

  Args:
    candidates: i32[B, T].
    lengths: i32[B] candidate lengths.
    table: the references' n-grams of order n.
    n: the order.
  Returns:
    (matches f32[B], total i32[B]).
  """
  t = candidates.shape[1]
  if n > t:
    zeros = jnp.zeros(candidates.shape[:1], jnp.int32)
    return zeros.astype(jnp.float32), zeros
  positions = t - n + 1
  grams = jnp.stack([candidates[:, i:i + positions] for i in range(n)],
                    axis=-1)  # [B, P, n]
  valid = jnp.arange(positions)[None] + n <= lengths[:, None]
  same = jnp.all(grams[:, :, None] == grams[:, None], axis=-1)
  same = same & valid[:, :, None] & valid[:, None, :]
  count = jnp.sum(same, axis=-1)  # Occurrences of each position's n-gram.
  reference = _max_reference_counts(table, grams)
  # Each occurrence carries 1/count of its n-gram's clipped count, so the sum
  # over positions is the sum over distinct n-grams.
  share = jnp.minimum(count, reference) / jnp.maximum(count, 1)
  matches = jnp.sum(jnp.where(valid, share, 0.0), axis=-1)
  total = jnp.maximum(lengths - n + 1, 0)
  return matches.astype(jnp.float32), total


def bleu(candidates: jax.Array, mask: jax.Array, references: References, *,
         smooth_epsilon: float = 0.0) -> jax.Array:
  """Sentence BLEU of each candidate against all references.

  Args:
    candidates: i32[B, T] token sequences.
    mask: bool[B, T] valid tokens (a prefix of each row).
    references: from `build_references`; uniform weights over its orders.
    smooth_epsilon: numerator for orders without any match (0: unsmoothed,
      BLEU is then 0 for such candidates).
  Returns:
    f32[B] in [0, 1]; 0 for candidates shorter than the longest order.
  """
  chex.assert_rank([candidates, mask], 2)
  chex.assert_equal_shape([candidates, mask])
  lengths = jnp.sum(mask, axis=1, dtype=jnp.int32)
  log_precision = jnp.zeros(lengths.shape, jnp.float32)
  long_enough = lengths >= references.max_order
  for n, table in enumerate(references.tables, start=1):
    matches, total = clipped_matches(candidates, lengths, table, n)
    numerator = jnp.where(matches > 0, matches, smooth_epsilon)
    safe = jnp.maximum(total, 1).astype(jnp.float32)
    log_precision += jnp.log(jnp.maximum(numerator, 1e-30) / safe)
    long_enough &= numerator > 0
  geometric = jnp.exp(log_precision / references.max_order)
  # The reference length closest to each candidate's, the shorter on ties.
  distance = jnp.abs(references.lengths[None] - lengths[:, None])
  closest = references.lengths[jnp.argmin(distance, axis=1)]
  c = jnp.maximum(lengths, 1).astype(jnp.float32)
  brevity = jnp.where(lengths > closest, 1.0,
                      jnp.exp(1.0 - closest.astype(jnp.float32) / c))
  return jnp.where(long_enough, brevity * geometric, 0.0)
