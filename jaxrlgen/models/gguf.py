"""GGUF checkpoints in: llama.cpp's one-file format (weights, config, tokenizer).

  config, params = gguf.load('SmolLM2-135M-Instruct.Q4_1.gguf')
  tokenizer = HFTokenizer.from_gguf('SmolLM2-135M-Instruct.Q4_1.gguf')
  hf_config = gguf.hf_config(path)   # the equivalent config.json

`hf.load(path)` takes a `.gguf` file as well and comes here. A GGUF file is
read with the `gguf` package (`gguf.GGUFReader`); each tensor is dequantized
(`gguf.quants.dequantize`) to float32, converted to Hugging Face's layout and
then goes through the same tensor table as a safetensors checkpoint
(`hf.ARCHITECTURES`, `hf.load_tensors`): cast to `param_dtype` and placed with
its sharding one tensor at a time, so the host holds one dequantized tensor at
once.

Two things differ from a Hugging Face checkpoint:
- The configuration is metadata under the architecture's prefix
  (`llama.block_count`, `llama.attention.head_count`, ...); `hf_config` turns
  it into the config.json transformers would write, and `hf.model_config`
  turns that into a TransformerConfig, as for a directory.
- llama.cpp's converter reorders the rows of each head of q and k: Hugging
  Face's rotary embedding rotates the two halves of a head
  (x[i], x[i + D/2]), llama.cpp's the adjacent pairs (x[2i], x[2i+1]), so the
  converter interleaves the halves. `_unpermute` undoes it.

Tokenizer: a byte-level BPE vocabulary (`tokenizer.ggml.model = 'gpt2'`)
becomes a `tokenizers.Tokenizer` with its merges, special tokens and chat
template (`GGUFFile.tokenizer`).
"""

import functools
import json
import os
from typing import Any, Callable

import numpy as np

from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm

PyTree = Any

SUFFIX = '.gguf'
MAGIC = b'GGUF'

# Tensor types this loader dequantizes (through `gguf.quants`); its tests
# cover each.
SUPPORTED_TYPES = ('F32', 'F16', 'BF16', 'Q4_0', 'Q4_1', 'Q5_0', 'Q5_1',
                   'Q8_0', 'Q2_K', 'Q3_K', 'Q4_K', 'Q5_K', 'Q6_K')
# general.architecture -> the Hugging Face architecture of the same model.
ARCHITECTURES = {'llama': 'LlamaForCausalLM'}
# tokenizer.ggml.pre values (llama.cpp's names) whose text split is GPT-2's
# regex; 'smollm' and the like first cut every digit off on its own, as their
# tokenizer.json does. (llama.cpp's 'default' is neither.) The tests check
# each against llama.cpp.
GPT2_SPLITS = ('gpt-2',)
DIGIT_SPLITS = ('smollm', 'starcoder', 'refact')

# token_type values (llama.cpp's llama_token_attr).
_CONTROL, _USER_DEFINED = 3, 4


def _gguf():
  try:
    import gguf  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError('Reading a GGUF file needs the `gguf` package: '
                      'pip install gguf') from e
  return gguf


def is_gguf(path: str | os.PathLike[str]) -> bool:
  """Whether `path` names a GGUF file (by its suffix, or its magic bytes)."""
  path = os.fspath(path)
  if path.endswith(SUFFIX):
    return True
  if not os.path.isfile(path):
    return False
  with open(path, 'rb') as f:
    return f.read(4) == MAGIC


def _hf_tensor_names(num_layers: int) -> dict[str, str]:
  """Hugging Face's Llama tensor names -> llama.cpp's."""
  out = {'model.embed_tokens.weight': 'token_embd.weight',
         'model.norm.weight': 'output_norm.weight',
         'lm_head.weight': 'output.weight'}
  ours = {'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
          'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output',
          'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up',
          'mlp.down_proj': 'ffn_down', 'input_layernorm': 'attn_norm',
          'post_attention_layernorm': 'ffn_norm'}
  for i in range(num_layers):
    for theirs, name in ours.items():
      out[f'model.layers.{i}.{theirs}.weight'] = f'blk.{i}.{name}.weight'
  return out


def _unpermute(w: np.ndarray, heads: int) -> np.ndarray:
  """Undoes llama.cpp's q/k row order: in each head, rows (D/2, 2) -> (2, D/2).

  w: [heads * D, E] as stored in the GGUF file.
  """
  half = w.shape[0] // heads // 2
  return (w.reshape(heads, half, 2, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


def _permute(w: np.ndarray, heads: int) -> np.ndarray:
  """Hugging Face's q/k row order -> llama.cpp's (the converter's direction)."""
  half = w.shape[0] // heads // 2
  return (w.reshape(heads, 2, half, *w.shape[1:]).swapaxes(1, 2)
          .reshape(w.shape))


class GGUFFile:
  """One opened GGUF file: its metadata, tensors and tokenizer.

  Opening it reads the header and the metadata (the tensors stay
  memory-mapped) and checks, before any tensor is dequantized, that the
  architecture and every tensor's type are supported.
  """

  def __init__(self, path: str | os.PathLike[str]):
    self.path = os.fspath(path)
    if not os.path.isfile(self.path):
      raise FileNotFoundError(f'GGUF file {self.path} does not exist.')
    gguf = _gguf()
    try:
      self.reader = gguf.GGUFReader(self.path)
    except (ValueError, IndexError, OSError) as e:
      raise ValueError(f'{self.path} is not a readable GGUF file: {e}') from e
    self.tensors = {t.name: t for t in self.reader.tensors}
    self.arch = self.get('general.architecture')
    if self.arch not in ARCHITECTURES:
      raise ValueError(
          f'{self.path}: unsupported GGUF architecture {self.arch!r} '
          f'(general.architecture); supported: {sorted(ARCHITECTURES)}.')
    for tensor in self.reader.tensors:
      kind = tensor.tensor_type.name
      if kind not in SUPPORTED_TYPES:
        raise ValueError(
            f'{self.path}: tensor {tensor.name!r} has quantization type '
            f'{kind}, which this loader cannot dequantize; supported: '
            f'{", ".join(SUPPORTED_TYPES)}. Re-quantize the model to one '
            'of them (llama.cpp: llama-quantize).')
    known = set(_hf_tensor_names(self._int('block_count')).values())
    unknown = sorted(set(self.tensors) - known)
    if unknown:
      raise ValueError(
          f'{self.path}: tensors {unknown[:5]} are not part of a plain '
          f'{self.arch} model (e.g. rope_freqs.weight: Llama 3.1+ rope '
          'scaling stored as a tensor; attention biases), which this loader '
          'does not support.')

  def get(self, key: str, default: Any = None) -> Any:
    """The metadata value of `key` (a Python scalar, str or list)."""
    field = self.reader.fields.get(key)
    return default if field is None else field.contents()

  def _int(self, key: str) -> int:
    value = self.get(f'{self.arch}.{key}')
    if value is None:
      raise ValueError(f'{self.path}: metadata {self.arch}.{key} is missing.')
    return int(value)

  @functools.cached_property
  def _num_tokens(self) -> int | None:
    field = self.reader.fields.get('tokenizer.ggml.tokens')
    return None if field is None else len(field.data)

  def hf_config(self) -> dict:
    """The config.json of the same model in Hugging Face's format."""
    a = self.arch
    hidden, heads = self._int('embedding_length'), self._int(
        'attention.head_count')
    kv_heads = int(self.get(f'{a}.attention.head_count_kv', heads))
    head_dim = int(self.get(f'{a}.attention.key_length', hidden // heads))
    rotary = int(self.get(f'{a}.rope.dimension_count', head_dim))
    if rotary != head_dim:
      raise ValueError(f'{self.path}: {a}.rope.dimension_count={rotary} is '
                       f'not the head size {head_dim}; partial rotary '
                       'embeddings are not supported.')
    scaling = self.get(f'{a}.rope.scaling.type', 'none')
    if scaling != 'none':
      raise ValueError(f'{self.path}: {a}.rope.scaling.type={scaling!r}; '
                       "only unscaled rotary embeddings ('none') are "
                       'supported.')
    embed = self.tensors['token_embd.weight']
    vocab = int(self.get(f'{a}.vocab_size', self._num_tokens
                         or int(embed.shape[-1])))
    theta = float(self.get(f'{a}.rope.freq_base', 10_000.0))
    ids = {f'{name}_token_id': self.get(f'tokenizer.ggml.{key}_token_id')
           for name, key in (('bos', 'bos'), ('eos', 'eos'),
                             ('pad', 'padding'))}
    return {
        'architectures': [ARCHITECTURES[a]], 'model_type': a,
        'vocab_size': vocab, 'hidden_size': hidden,
        'intermediate_size': self._int('feed_forward_length'),
        'num_hidden_layers': self._int('block_count'),
        'num_attention_heads': heads, 'num_key_value_heads': kv_heads,
        'head_dim': head_dim,
        'rms_norm_eps': float(self.get(
            f'{a}.attention.layer_norm_rms_epsilon', 1e-5)),
        'max_position_embeddings': int(self.get(f'{a}.context_length',
                                                2048)),
        'rope_theta': theta,
        'rope_parameters': {'rope_type': 'default', 'rope_theta': theta},
        'tie_word_embeddings': 'output.weight' not in self.tensors,
        'attention_bias': False, 'mlp_bias': False,
        'hidden_act': 'silu',
        **{k: int(v) for k, v in ids.items() if v is not None},
    }

  def tensor(self, name: str) -> np.ndarray:
    """Tensor `name` dequantized to float32, in numpy order ([out, in])."""
    tensor = self.tensors[name]
    array = _gguf().quants.dequantize(tensor.data, tensor.tensor_type)
    # GGUF lists dimensions fastest-first.
    shape = tuple(int(n) for n in reversed(tensor.shape.tolist()))
    return np.asarray(array, np.float32).reshape(shape)

  def load(self, *, param_dtype: str = 'float32', dtype: str | None = None,
           max_seq_len: int | None = None,
           shardings: PyTree | Callable[[PyTree], PyTree] | None = None,
           **overrides) -> tuple[tfm.TransformerConfig, PyTree]:
    """(config, params); the arguments are `hf.load`'s."""
    hf_config = self.hf_config()
    arch = hf.architecture(hf_config)
    config = hf.model_config(hf_config, **hf.config_fields(
        param_dtype, dtype, max_seq_len, overrides))
    names = _hf_tensor_names(config.num_layers)
    heads = {'attn_q': config.num_heads, 'attn_k': config.num_kv_heads}
    # Every tensor the table reads must be there, before any is dequantized.
    for tensor in hf.ARCHITECTURES[arch].tensors(config):
      for name in tensor.hf:
        if names.get(name) not in self.tensors:
          raise KeyError(
              f'{self.path} has no tensor {names.get(name, name)!r} (needed '
              f'for parameter {"/".join(tensor.ours[0])}).')

    def read(name: str, path: hf.Path) -> np.ndarray:
      del path  # Checked above.
      ours = names[name]
      array = self.tensor(ours)
      kind = ours.split('.')[-2]
      if kind in heads:
        array = _unpermute(array, heads[kind])
      return array

    params = hf.load_tensors(arch, config, read, param_dtype=param_dtype,
                             shardings=shardings, source=self.path)
    return config, params

  # -------------------------------------------------------------------------
  # Tokenizer

  @functools.cached_property
  def _tokens(self) -> list[str]:
    return self.get('tokenizer.ggml.tokens') or []

  def tokenizer_info(self) -> dict:
    """Special tokens, chat template and BOS/EOS flags of the tokenizer."""
    tokens = self._tokens
    out: dict[str, Any] = {}
    for name, key in (('bos', 'bos'), ('eos', 'eos'), ('pad', 'padding'),
                      ('unk', 'unknown')):
      i = self.get(f'tokenizer.ggml.{key}_token_id')
      out[f'{name}_id'] = None if i is None else int(i)
      out[f'{name}_token'] = None if i is None else tokens[int(i)]
    out['chat_template'] = self.get('tokenizer.chat_template')
    out['add_bos_token'] = bool(self.get('tokenizer.ggml.add_bos_token',
                                         False))
    out['add_eos_token'] = bool(self.get('tokenizer.ggml.add_eos_token',
                                         False))
    return out

  def tokenizer(self):
    """The file's vocabulary as a `tokenizers.Tokenizer` (byte-level BPE).

    Control tokens (token_type 3, like <|im_start|>) are special added
    tokens, user-defined ones (4) plain added tokens, so that both are
    matched whole in text. Nothing is added around the text (no BOS); see
    `tokenizer_info()['add_bos_token']`.
    """
    import tokenizers  # pylint: disable=g-import-not-at-top
    from tokenizers import decoders, models, pre_tokenizers  # pylint: disable=g-import-not-at-top
    kind = self.get('tokenizer.ggml.model')
    if kind != 'gpt2':
      raise ValueError(
          f'{self.path}: tokenizer.ggml.model={kind!r}; only byte-level BPE '
          "('gpt2') vocabularies are supported.")
    split = self.get('tokenizer.ggml.pre', 'default')
    if split not in GPT2_SPLITS + DIGIT_SPLITS:
      raise ValueError(
          f'{self.path}: tokenizer.ggml.pre={split!r} (how text is split '
          f'before BPE) is not supported; supported: '
          f'{list(GPT2_SPLITS + DIGIT_SPLITS)}.')
    tokens = self._tokens
    types = self.get('tokenizer.ggml.token_type') or [1] * len(tokens)
    merges = self.get('tokenizer.ggml.merges') or []
    alphabet = _byte_alphabet()
    spelled = set(alphabet)
    # A byte-level vocabulary writes each token in the 256-character byte
    # alphabet; a token outside it (a mislabelled special token) is respelled
    # from its UTF-8 bytes so BPE can still reach it.
    vocab = {t if set(t) <= spelled else ''.join(alphabet[b] for b in
                                                 t.encode('utf-8')): i
             for i, t in enumerate(tokens)}
    pairs = []
    for merge in merges:
      parts = merge.split(' ')
      if len(parts) != 2:
        raise ValueError(f'{self.path}: merge {merge!r} is not two tokens.')
      pairs.append((parts[0], parts[1]))
    tok = tokenizers.Tokenizer(models.BPE(vocab, pairs, fuse_unk=False,
                                          byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False,
                                          use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                 byte_level])
        if split in DIGIT_SPLITS else byte_level)
    tok.decoder = decoders.ByteLevel()
    special = [tokenizers.AddedToken(t, special=True, normalized=False)
               for t, k in zip(tokens, types)
               if k == _CONTROL and set(t) <= spelled]
    plain = [tokenizers.AddedToken(t, special=False, normalized=False)
             for t, k in zip(tokens, types) if k == _USER_DEFINED]
    tok.add_special_tokens(special)
    tok.add_tokens(plain)
    info = self.tokenizer_info()
    if info['add_bos_token'] and info['bos_token'] is not None:
      from tokenizers import processors  # pylint: disable=g-import-not-at-top
      bos = info['bos_token']
      tok.post_processor = processors.TemplateProcessing(
          single=f'{bos} $A', pair=f'{bos} $A {bos} $B',
          special_tokens=[(bos, info['bos_id'])])
    return tok

  def save_tokenizer(self, out: str | os.PathLike[str]) -> None:
    """Writes tokenizer.json, tokenizer_config.json, special_tokens_map.json
    and generation_config.json for transformers' AutoTokenizer."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    self.tokenizer().save(os.path.join(out, 'tokenizer.json'))
    info = self.tokenizer_info()
    special = {f'{n}_token': info[f'{n}_token']
               for n in ('bos', 'eos', 'pad', 'unk')
               if info[f'{n}_token'] is not None}
    config = {'tokenizer_class': 'PreTrainedTokenizerFast',
              'add_bos_token': info['add_bos_token'],
              'add_eos_token': info['add_eos_token'],
              'clean_up_tokenization_spaces': False,
              'model_max_length': int(self.get(f'{self.arch}.context_length',
                                               2048)),
              **special}
    if info['chat_template']:
      config['chat_template'] = info['chat_template']
    generation = {f'{n}_token_id': info[f'{n}_id']
                  for n in ('bos', 'eos', 'pad') if info[f'{n}_id'] is not None}
    for name, content in (('tokenizer_config.json', config),
                          ('special_tokens_map.json', special),
                          ('generation_config.json', generation)):
      with open(os.path.join(out, name), 'w') as f:
        json.dump(content, f, indent=2, ensure_ascii=False)


@functools.cache
def _byte_alphabet() -> tuple[str, ...]:
  """Byte -> the printable character byte-level BPE writes it as (GPT-2's).

  Printable Latin-1 bytes stand for themselves; the others (controls,
  space, ...) take the characters from U+0100 on, in byte order.
  """
  printable = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
               *range(ord('®'), ord('ÿ') + 1)]
  out, extra = {}, 0
  for b in range(256):
    if b in printable:
      out[b] = chr(b)
    else:
      out[b] = chr(256 + extra)
      extra += 1
  return tuple(out[b] for b in range(256))


def open_file(path: str | os.PathLike[str]) -> GGUFFile:
  """The GGUFFile of `path`, shared by calls while the file is unchanged.

  Parsing the metadata of a file with a large vocabulary takes seconds
  (`gguf.GGUFReader` reads every token string), so loading the model and
  then its tokenizer parses it once.
  """
  path = os.path.realpath(os.fspath(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f'GGUF file {path} does not exist.')
  stat = os.stat(path)
  return _open_cached(path, stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=2)
def _open_cached(path: str, mtime_ns: int, size: int) -> GGUFFile:
  del mtime_ns, size  # Part of the key only.
  return GGUFFile(path)


def load(path: str | os.PathLike[str], *, param_dtype: str = 'float32',
         dtype: str | None = None, max_seq_len: int | None = None,
         shardings: PyTree | Callable[[PyTree], PyTree] | None = None,
         **overrides) -> tuple[tfm.TransformerConfig, PyTree]:
  """Loads a GGUF file; the contract is `hf.load`'s.

  Args:
    path: the .gguf file.
    param_dtype: dtype the dequantized parameters are cast to.
    dtype: compute dtype (default: param_dtype).
    max_seq_len: KV-cache length (default: the context length, at most 2048).
    shardings: the parameters' shardings, or a function of the abstract
      parameters that gives them; each tensor is placed as it is read.
    **overrides: other TransformerConfig fields (value_head, remat, ...).
  Returns:
    (config, params) in jaxrlgen's layout.
  Raises:
    FileNotFoundError: no such file.
    ValueError: an architecture, tensor type or tokenizer this loader does
      not support (named, with what is), raised before any dequantization.
    KeyError: a tensor the model needs is missing (named).
  """
  return open_file(path).load(param_dtype=param_dtype, dtype=dtype,
                             max_seq_len=max_seq_len, shardings=shardings,
                             **overrides)


def hf_config(path: str | os.PathLike[str]) -> dict:
  """The Hugging Face config.json of the model in a GGUF file."""
  return open_file(path).hf_config()
