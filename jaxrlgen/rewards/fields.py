"""Text fields of a batch: strings as fixed-shape arrays that travel through
jit to host rewards and come back exactly.

A jitted step takes arrays of static shape, and a string is not one. A text
field of N records is stored as one array `i16[N, L]`: row i holds the UTF-8
bytes of record i's string (0..255), then -1 up to the width L. L is fixed
per dataset when it is loaded (the longest string of the field in any
split), so every batch has the same shape and the step compiles once.

Why one int16 array rather than u8 bytes plus a length array: a batch stays a
flat mapping of one array per field (the offline dataset's `.npz`, the
recipe's field lists and `repeat_batch` all work per key), the -1 padding
makes the length part of the row (a string may hold NUL bytes, so a u8 pad
could not), and int16 is a dtype no numeric field has (`collate` gives
int32, float32 or bool), so a host reward knows a text field by its dtype.
"""

from typing import Sequence

import numpy as np

TEXT_DTYPE = np.int16
PAD = -1


def utf8(value: str | bytes) -> bytes:
  """The UTF-8 bytes of a string (bytes, as TFDS gives them, pass through)."""
  return value if isinstance(value, bytes) else str(value).encode('utf-8')


def encode_texts(values: Sequence[str | bytes], width: int,
                 name: str = 'field') -> np.ndarray:
  """Strings -> i16[N, width]: UTF-8 bytes, then -1.

  Args:
    values: N strings (or UTF-8 bytes).
    width: L, at least the longest string's byte length.
    name: the field, for the error message.
  Raises:
    ValueError: a string is longer than `width` bytes.
  """
  out = np.full((len(values), width), PAD, TEXT_DTYPE)
  for i, value in enumerate(values):
    data = np.frombuffer(utf8(value), np.uint8)
    if data.size > width:
      raise ValueError(
          f'Text field {name!r} of record {i} has {data.size} UTF-8 bytes, '
          f'more than the {width} fixed for the dataset at load.')
    out[i, :data.size] = data
  return out


def is_text(array) -> bool:
  """Whether an array of a batch (or one row of it) is a text field."""
  return getattr(array, 'dtype', None) == TEXT_DTYPE


def decode_text(row: np.ndarray) -> str:
  """One row of a text field (`i16[L]`) -> the string."""
  row = np.asarray(row)
  n = int(np.sum(row >= 0))
  return row[:n].astype(np.uint8).tobytes().decode('utf-8')


def decode_texts(array: np.ndarray) -> list[str]:
  """A text field `i16[N, L]` -> its N strings."""
  return [decode_text(row) for row in np.asarray(array)]


def item_value(value):
  """What a per-item host function gets for one item of a field: a str for a
  text field, a Python number (or bool) for a numeric one, else the array."""
  value = np.asarray(value)
  if value.dtype == TEXT_DTYPE and value.ndim == 1:
    return decode_text(value)
  if value.ndim == 0:
    return value.item()
  return value
