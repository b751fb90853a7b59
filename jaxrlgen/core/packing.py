"""Sequence packing for teacher-forced passes: uneven sequences share rows.

A rollout's B sequences sit in [B, L] arrays padded to the longest budget
(prompt padding before, completion padding after EOS), so a teacher-forced
pass over them costs B * L token positions whatever their real lengths. Packing
moves each sequence's real tokens, in order, to a span of one of R rows of S
slots (first fit, longest first), with

  segment_ids: i32[R, S], 1 + the sequence's index in the batch (0: empty),
  positions:   i32[R, S], the token's index among its sequence's real tokens
               (the rotary position the unpacked pass gives it),

and attention restricted to keys of the same segment. Every real token then
sees exactly the tokens it saw unpacked, so the pass's states at real tokens
equal the unpacked ones up to float rounding, at a cost of R * S positions.

Shapes are static: R and S are chosen ahead (S at least the longest
sequence), and a batch whose sequences do not all fit reports it (`fits`);
callers then run the unpacked pass instead (`TextEnv.pack_rows`).
"""

from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class Layout(NamedTuple):
  """Where every token of a [B, L] batch goes in [R, S] packed rows.

  Attributes:
    slot: i32[B, L] flat index row * S + column of each real token in the
      packed rows; R * S (out of range) for tokens that are not real or
      whose sequence did not fit.
    tokens, segment_ids, positions: i32[R, S] the packed rows.
    fits: bool[] whether every sequence was placed.
  """

  slot: jax.Array
  tokens: jax.Array
  segment_ids: jax.Array
  positions: jax.Array
  fits: jax.Array

  @property
  def num_slots(self) -> int:
    return self.tokens.size


def first_fit(lengths: jax.Array, rows: int, row_length: int
              ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Places sequences, longest first, in the first row with room (FFD).

  Args:
    lengths: i32[B] tokens per sequence.
    rows: R, the packed rows.
    row_length: S, slots per row.
  Returns:
    (row i32[B], R where the sequence did not fit; offset i32[B], its first
    slot in the row; fits bool[], every sequence placed).
  """
  chex.assert_rank(lengths, 1)
  lengths = lengths.astype(jnp.int32)
  order = jnp.argsort(-lengths, stable=True)

  def place(fill, i):
    n = lengths[i]
    room = fill + n <= row_length
    placed = jnp.any(room)
    row = jnp.where(placed, jnp.argmax(room), rows)
    offset = jnp.where(placed, fill[jnp.minimum(row, rows - 1)], 0)
    return fill.at[row].add(n, mode='drop'), (row, offset)

  _, (row, offset) = jax.lax.scan(place, jnp.zeros((rows,), jnp.int32),
                                  order)
  row = jnp.zeros_like(row).at[order].set(row)
  offset = jnp.zeros_like(offset).at[order].set(offset)
  return row, offset, jnp.all(row < rows)


def pack(tokens: jax.Array, real: jax.Array, rows: int,
         row_length: int) -> Layout:
  """Packs each sequence's real tokens into `rows` rows of `row_length`.

  Args:
    tokens: i32[B, L].
    real: bool[B, L] the tokens that exist (attended to and attending);
      they need not be contiguous.
    rows, row_length: R and S.
  Returns:
    The `Layout`.
  """
  chex.assert_rank([tokens, real], 2)
  chex.assert_equal_shape([tokens, real])
  b, _ = tokens.shape
  size = rows * row_length
  rank = jnp.cumsum(real, axis=1, dtype=jnp.int32) - 1
  row, offset, fits = first_fit(jnp.sum(real, axis=1, dtype=jnp.int32), rows,
                                row_length)
  placed = real & (row < rows)[:, None]
  slot = jnp.where(placed, row[:, None] * row_length + offset[:, None] + rank,
                   size)
  scatter = lambda values: jnp.zeros((size,), jnp.int32).at[
      slot.reshape(-1)].set(values.reshape(-1).astype(jnp.int32),
                            mode='drop').reshape(rows, row_length)
  segment = jnp.broadcast_to(jnp.arange(1, b + 1, dtype=jnp.int32)[:, None],
                             tokens.shape)
  return Layout(slot=slot, tokens=scatter(tokens),
                segment_ids=scatter(segment), positions=scatter(rank),
                fits=fits)


def scatter_rows(layout: Layout, slot: jax.Array, values: jax.Array,
                 fill=0) -> jax.Array:
  """values [B, T] written at packed `slot`s i32[B, T] (out of range: not
  written) of an [R, S] array filled with `fill`."""
  out = jnp.full((layout.num_slots,), fill, values.dtype)
  out = out.at[slot.reshape(-1)].set(values.reshape(-1), mode='drop')
  return out.reshape(layout.tokens.shape)


def gather_rows(packed: jax.Array, slot: jax.Array) -> jax.Array:
  """[B, T, ...] the packed [R, S, ...] values at `slot`s i32[B, T]; slots
  out of range read the last one (garbage, as masked steps hold)."""
  flat = packed.reshape((-1,) + packed.shape[2:])
  return jnp.take(flat, jnp.minimum(slot, flat.shape[0] - 1), axis=0)
