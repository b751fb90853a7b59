"""A byte-level tokenizer: one token per UTF-8 byte plus three special ids.

Bytes need no vocabulary file and no training, round-trip any string exactly,
and keep the vocabulary tiny (259), which is what the small arithmetic and
toy-text tasks want. Special ids sit after the 256 byte values so that a byte
never collides with a control token.
"""

from collections.abc import Sequence
from typing import Literal

import numpy as np


class Batching:
  """The batch methods every tokenizer shares, given `decode` and `pad_id`.

  A tokenizer has `vocab_size`, `pad_id`, `bos_id`, `eos_id`,
  `encode(text, add_bos=False, add_eos=False) -> list[int]` and
  `decode(ids, stop_at_eos=True) -> str`; this adds `decode_batch` and
  `pad_batch`.
  """

  pad_id: int

  def decode_batch(
      self,
      ids: np.ndarray,
      mask: np.ndarray | None = None,
      stop_at_eos: bool = True,
  ) -> list[str]:
    """Decodes each row of a batch.

    Args:
      ids: `[B, T]` token ids (a NumPy or JAX array).
      mask: optional `bool[B, T]`; positions where it is false are skipped.
      stop_at_eos: as in `decode`.

    Returns:
      B strings.
    """
    ids = np.asarray(ids)
    if ids.ndim != 2:
      raise ValueError(f'decode_batch expects ids of shape [B, T], got '
                       f'{ids.shape}.')
    if mask is not None:
      mask = np.asarray(mask, dtype=bool)
      if mask.shape != ids.shape:
        raise ValueError(f'mask shape {mask.shape} != ids shape {ids.shape}.')
    return [
        self.decode(row if mask is None else row[mask[b]], stop_at_eos)
        for b, row in enumerate(ids)
    ]

  def pad_batch(
      self,
      seqs: Sequence[Sequence[int]],
      length: int,
      side: Literal['left', 'right'] = 'right',
      *,
      length_name: str = 'length',
  ) -> tuple[np.ndarray, np.ndarray]:
    """Pads sequences with `pad_id` to a fixed length.

    Prompts are padded on the left so that every row's last prompt token sits
    at the same position and generation starts in one column for the whole
    batch; targets are padded on the right.

    Args:
      seqs: B sequences of ids, each at most `length` long.
      length: the padded length T.
      side: 'left' or 'right'.
      length_name: what to call `length` in the error, e.g. the config field
        it comes from ('data.max_prompt_len'), so the message says what to
        raise.

    Returns:
      `(ids, mask)`: `int32[B, T]` padded ids and `bool[B, T]`, true on real
      tokens.

    Raises:
      ValueError: a sequence is longer than `length`, or `side` is unknown.
    """
    if side not in ('left', 'right'):
      raise ValueError(f"side must be 'left' or 'right', got {side!r}.")
    ids = np.full((len(seqs), length), self.pad_id, dtype=np.int32)
    mask = np.zeros((len(seqs), length), dtype=np.bool_)
    for row, seq in enumerate(seqs):
      n = len(seq)
      if n > length:
        raise ValueError(
            f'Sequence {row} has {n} tokens but {length_name}={length}. '
            f'Raise {length_name} to at least {n} (or shorten the input).')
      if n == 0:
        continue
      cols = slice(length - n, length) if side == 'left' else slice(0, n)
      ids[row, cols] = seq
      mask[row, cols] = True
    return ids, mask


class ByteTokenizer(Batching):
  """UTF-8 bytes as ids 0..255, then `pad_id`, `bos_id` and `eos_id`.

  Stateless; every method could be a function. It is a class so that callers
  can hold "a tokenizer" and swap in another with the same methods.
  """

  byte_level: bool = True  # Ids are characters: rewards parse them in jit.
  pad_id: int = 256
  bos_id: int = 257
  eos_id: int = 258
  vocab_size: int = 259

  def encode(
      self,
      text: str | bytes,
      add_bos: bool = False,
      add_eos: bool = False,
  ) -> list[int]:
    """Encodes `text` as its UTF-8 bytes.

    Args:
      text: the string (or already-encoded bytes, as TFDS text features are
        read back).
      add_bos: prepend `bos_id`.
      add_eos: append `eos_id`.

    Returns:
      The ids, `len(text.encode('utf-8')) + add_bos + add_eos` of them.
    """
    data = text if isinstance(text, bytes) else text.encode('utf-8')
    ids = list(data)
    if add_bos:
      ids.insert(0, self.bos_id)
    if add_eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray,
             stop_at_eos: bool = True) -> str:
    """Decodes ids back to a string.

    Pad and BOS ids are dropped. Bytes that do not form valid UTF-8 (a model
    may emit any byte sequence) become U+FFFD rather than raising.

    Args:
      ids: `[T]` token ids.
      stop_at_eos: ignore everything from the first EOS on; otherwise EOS ids
        are dropped like pad.

    Returns:
      The decoded text.

    Raises:
      ValueError: an id is outside `[0, vocab_size)`.
    """
    out = bytearray()
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i == self.eos_id:
        if stop_at_eos:
          break
        continue
      if i in (self.pad_id, self.bos_id):
        continue
      if not 0 <= i < 256:
        raise ValueError(
            f'Token id {i} is outside the byte tokenizer vocabulary '
            f'[0, {self.vocab_size}); was the model built with a larger '
            'vocab_size than the tokenizer?')
      out.append(i)
    return out.decode('utf-8', errors='replace')
