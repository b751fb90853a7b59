"""Tests for jaxrlgen/data/tokenizer.py."""

import numpy as np
import pytest

from jaxrlgen.data.tokenizer import ByteTokenizer


@pytest.fixture
def tok():
  return ByteTokenizer()


def test_special_ids_follow_bytes(tok):
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.vocab_size) == (256, 257,
                                                                    258, 259)
  assert ByteTokenizer.vocab_size == 259


@pytest.mark.parametrize('text', ['', '17+5=', 'héllo wörld', '数学 ∑ 🙂'])
def test_round_trip(tok, text):
  ids = tok.encode(text)
  assert ids == list(text.encode('utf-8'))
  assert all(0 <= i < 256 for i in ids)
  assert tok.decode(ids) == text


def test_encode_bos_eos(tok):
  assert tok.encode('ab', add_bos=True, add_eos=True) == [257, 97, 98, 258]
  assert tok.encode(b'ab') == [97, 98]


def test_decode_drops_pad_bos_and_stops_at_eos(tok):
  ids = [256, 257, 104, 105, 258, 120, 256]
  assert tok.decode(ids) == 'hi'
  assert tok.decode(ids, stop_at_eos=False) == 'hix'
  assert tok.decode(np.asarray(ids, np.int32)) == 'hi'


def test_decode_invalid_utf8_is_replaced(tok):
  assert tok.decode([0xff, 97]) == '\ufffda'
  # A truncated multi-byte character, as a model may emit.
  assert tok.decode(list('é'.encode('utf-8'))[:1]) == '\ufffd'


def test_decode_rejects_out_of_vocab(tok):
  with pytest.raises(ValueError, match='259'):
    tok.decode([97, 259])


def test_decode_batch_with_mask(tok):
  ids = np.array([[256, 104, 105, 258], [120, 258, 121, 256]])
  assert tok.decode_batch(ids) == ['hi', 'x']
  mask = np.array([[True, True, False, True], [True, False, True, True]])
  assert tok.decode_batch(ids, mask) == ['h', 'xy']


@pytest.mark.parametrize('side', ['left', 'right'])
def test_pad_batch(tok, side):
  ids, mask = tok.pad_batch([[1, 2, 3], [], [4]], 4, side)
  assert ids.dtype == np.int32 and mask.dtype == np.bool_
  assert ids.shape == mask.shape == (3, 4)
  p = 256
  if side == 'left':
    np.testing.assert_array_equal(ids, [[p, 1, 2, 3], [p, p, p, p],
                                        [p, p, p, 4]])
    np.testing.assert_array_equal(mask, [[0, 1, 1, 1], [0, 0, 0, 0],
                                         [0, 0, 0, 1]])
  else:
    np.testing.assert_array_equal(ids, [[1, 2, 3, p], [p, p, p, p],
                                        [4, p, p, p]])
    np.testing.assert_array_equal(mask, [[1, 1, 1, 0], [0, 0, 0, 0],
                                         [1, 0, 0, 0]])


def test_pad_batch_too_long_names_row_length_and_fix(tok):
  with pytest.raises(ValueError) as e:
    tok.pad_batch([[1], [1, 2, 3, 4, 5]], 4, 'left',
                  length_name='data.max_prompt_len')
  msg = str(e.value)
  assert 'Sequence 1' in msg and '5 tokens' in msg
  assert 'data.max_prompt_len=4' in msg and 'Raise data.max_prompt_len' in msg
  with pytest.raises(ValueError, match=r'length=2'):
    tok.pad_batch([[1, 2, 3]], 2)


def test_pad_batch_bad_side(tok):
  with pytest.raises(ValueError, match='side'):
    tok.pad_batch([[1]], 2, 'middle')
