"""Released models' tokenizers: `tokenizer.json` or SentencePiece.

`HFTokenizer.from_dir(path)` reads a Hugging Face checkpoint directory:
`tokenizer.json` through the `tokenizers` library when it is there,
otherwise `tokenizer.model` through SentencePiece. The special tokens come
from the directory's `generation_config.json`, `config.json` and
`tokenizer_config.json` (in that order of precedence for EOS, which is what
generation stops on). `HFTokenizer.from_gguf(path)` builds the same from a
GGUF file's tokenizer metadata (`models.gguf`). It has the methods of
`ByteTokenizer`, so the data pipeline, the environment and the rewards take
either.
"""

import json
import os
from typing import Callable, Sequence

import numpy as np

from jaxrlgen.data.tokenizer import Batching


def _read_json(path: str) -> dict:
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    return json.load(f)


def _token_text(value) -> str | None:
  if isinstance(value, dict):  # {"content": "</s>", ...}
    return value.get('content')
  return value


def _first_id(value) -> int | None:
  if isinstance(value, list):
    return value[0] if value else None
  return value


class HFTokenizer(Batching):
  """encode/decode through a released model's tokenizer.

  Attributes:
    vocab_size: ids the tokenizer can produce (the model's embedding table
      may be larger).
    pad_id, bos_id, eos_id: special ids; bos_id may be None (Qwen has none).
      A model without a pad token pads with EOS, which is never attended to
      (masks carry validity).
    chat_template: the model's Jinja chat template (transformers'
      `chat_template`), or None.
  """

  def __init__(self, *, encode: Callable[[str], list[int]],
               decode: Callable[[list[int]], str], vocab_size: int,
               eos_id: int, pad_id: int | None = None,
               bos_id: int | None = None, chat_template: str | None = None):
    self._encode, self._decode = encode, decode
    self.vocab_size = vocab_size
    self.eos_id = eos_id
    self.pad_id = eos_id if pad_id is None else pad_id
    self.bos_id = bos_id
    self.chat_template = chat_template

  @property
  def special_tokens(self) -> dict[str, str]:
    """The text of BOS and EOS (`bos_token`, `eos_token`), which chat
    templates read (`data.chat.of_tokenizer`)."""
    ids = {'bos_token': self.bos_id, 'eos_token': self.eos_id}
    return {name: self._decode([i]) for name, i in ids.items()
            if i is not None}

  @classmethod
  def from_path(cls, path: str | os.PathLike[str]) -> 'HFTokenizer':
    """The tokenizer of a checkpoint: a `.gguf` file or a Hugging Face
    directory."""
    from jaxrlgen.models import gguf  # pylint: disable=g-import-not-at-top
    return cls.from_gguf(path) if gguf.is_gguf(path) else cls.from_dir(path)

  @classmethod
  def from_gguf(cls, path: str | os.PathLike[str]) -> 'HFTokenizer':
    """The tokenizer stored in a GGUF file's metadata (byte-level BPE)."""
    from jaxrlgen.models import gguf  # pylint: disable=g-import-not-at-top
    file = gguf.open_file(path)
    tok = file.tokenizer()
    info = file.tokenizer_info()
    if info['eos_id'] is None:
      raise ValueError(f'No EOS token in {os.fspath(path)}: its metadata has '
                       'no tokenizer.ggml.eos_token_id.')
    return cls(encode=lambda text: tok.encode(text,
                                              add_special_tokens=False).ids,
               decode=lambda ids: tok.decode(ids, skip_special_tokens=False),
               vocab_size=tok.get_vocab_size(with_added_tokens=True),
               eos_id=info['eos_id'], pad_id=info['pad_id'],
               bos_id=info['bos_id'], chat_template=info['chat_template'])

  @classmethod
  def from_dir(cls, path: str | os.PathLike[str]) -> 'HFTokenizer':
    path = os.fspath(path)
    tok_config = _read_json(os.path.join(path, 'tokenizer_config.json'))
    special = {**_read_json(os.path.join(path, 'special_tokens_map.json')),
               **tok_config}
    model_config = _read_json(os.path.join(path, 'config.json'))
    gen_config = _read_json(os.path.join(path, 'generation_config.json'))
    if os.path.exists(os.path.join(path, 'tokenizer.json')):
      import tokenizers  # pylint: disable=g-import-not-at-top
      tok = tokenizers.Tokenizer.from_file(os.path.join(path,
                                                        'tokenizer.json'))
      encode = lambda text: tok.encode(text, add_special_tokens=False).ids
      decode = lambda ids: tok.decode(ids, skip_special_tokens=False)
      vocab_size = tok.get_vocab_size(with_added_tokens=True)
      token_id = lambda name: (None if _token_text(special.get(name)) is None
                               else tok.token_to_id(_token_text(special[name])))
    elif os.path.exists(os.path.join(path, 'tokenizer.model')):
      import sentencepiece  # pylint: disable=g-import-not-at-top
      sp = sentencepiece.SentencePieceProcessor(
          model_file=os.path.join(path, 'tokenizer.model'))
      encode = lambda text: list(sp.encode(text))
      decode = lambda ids: sp.decode(list(ids))
      vocab_size = sp.get_piece_size()
      own = {'bos_token': sp.bos_id(), 'eos_token': sp.eos_id(),
             'pad_token': sp.pad_id()}

      def token_id(name):
        text = _token_text(special.get(name))
        if text is not None and sp.piece_to_id(text) != sp.unk_id():
          return sp.piece_to_id(text)
        return own[name] if own[name] >= 0 else None
    else:
      raise FileNotFoundError(
          f'{path} has neither tokenizer.json nor tokenizer.model.')

    def pick(*candidates):
      return next((int(c) for c in candidates if c is not None), None)

    eos = pick(_first_id(gen_config.get('eos_token_id')),
               _first_id(model_config.get('eos_token_id')),
               token_id('eos_token'))
    if eos is None:
      raise ValueError(f'No EOS token in {path}: set eos_token_id in its '
                       'config.json or eos_token in tokenizer_config.json.')
    template = tok_config.get('chat_template')
    template_file = os.path.join(path, 'chat_template.jinja')
    if template is None and os.path.exists(template_file):
      with open(template_file) as f:
        template = f.read()
    return cls(chat_template=template if isinstance(template, str) else None,
               encode=encode, decode=decode, vocab_size=vocab_size,
               eos_id=eos,
               pad_id=pick(token_id('pad_token'),
                           _first_id(gen_config.get('pad_token_id')),
                           _first_id(model_config.get('pad_token_id'))),
               bos_id=pick(token_id('bos_token'),
                           _first_id(gen_config.get('bos_token_id')),
                           _first_id(model_config.get('bos_token_id'))))

  def encode(self, text: str | bytes, add_bos: bool = False,
             add_eos: bool = False) -> list[int]:
    """The ids of `text` (no special tokens unless asked for)."""
    if isinstance(text, bytes):  # TFDS text features come back as bytes.
      text = text.decode('utf-8')
    ids = list(self._encode(text))
    if add_bos:
      if self.bos_id is None:
        raise ValueError('This tokenizer has no BOS token; do not ask for '
                         'add_bos.')
      ids.insert(0, self.bos_id)
    if add_eos:
      ids.append(self.eos_id)
    return ids

  def decode(self, ids: Sequence[int] | np.ndarray,
             stop_at_eos: bool = True) -> str:
    """The text of `ids`, without pad and BOS (and from EOS on, if asked)."""
    out = []
    for i in np.asarray(ids, dtype=np.int64).reshape(-1).tolist():
      if i == self.eos_id:
        if stop_at_eos:
          break
        continue
      if i in (self.pad_id, self.bos_id):
        continue
      out.append(i)
    return self._decode(out)
