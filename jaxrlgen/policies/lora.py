"""Low-rank adapters (LoRA) and a quantized frozen base (QLoRA), via qwix.

A policy with adapters keeps two parameter trees apart:
- the frozen base: the released model's weights, stored once, never
  differentiated, never in the optimizer state or a checkpoint, and
  optionally quantized (int8 or int4 weights, with absmax scales per output
  channel or per block of inputs);
- the trainable tree: the adapter factors (`<kernel>_lora_a` [K, r] and
  `<kernel>_lora_b` [r, N], qwix's names, next to the kernel they adapt)
  and any head an algorithm adds (a critic's value head, Q heads).

The policy's methods take the trainable tree as their `params`, as every
algorithm already passes them. The base is bound to the policy inside a
step (`policy.bind(base)`, done by `jaxrlgen.train.step.bind` from
`TrainState.frozen`), so a loss's gradient reaches the adapters only, and
two users of the base (the policy and PPO's separate critic, or the policy
and its reference) read the same arrays. The reference policy is the bound
base with the adapters switched off: trainable params without adapter
factors (`adapters_off`, an empty tree for the LM) run the plain model.

qwix intercepts the products (`lax.dot_general`, `einsum`, convolutions) of
the modules whose path matches `LoraConfig.targets` and adds
`x @ A @ B * alpha / rank` to each; its initialisers draw A (He uniform) and
set B to zero, so an adapted model starts equal to its base.
"""

import dataclasses
import re
from typing import Any, Callable, ClassVar

import flax
import jax
import jax.numpy as jnp
import qwix

from jaxrlgen import schema

Params = Any

# Regexes over module paths ('block_3/attn/q'), by name.
TARGETS = {
    'attention': r'.*/attn/(q|k|v|o)$',
    'mlp': r'.*/mlp/(gate|up|down)$',
    'all_linear': r'.*/(attn/(q|k|v|o)|mlp/(gate|up|down))$',
}
QUANTIZE = ('none', 'int8', 'int4')
_SUFFIXES = ('_lora_a', '_lora_b')


@dataclasses.dataclass(frozen=True)
class LoraConfig:
  """`config.lora`: low-rank adapters on a frozen (optionally quantized) base.

  rank 0 trains every parameter (no adapters).
  """

  SPECIAL: ClassVar[schema.Special] = {
      'rank': schema.Means(zero='no adapters: full fine-tuning'),
      'dropout': schema.Means(zero='no dropout'),
      'quantize_block': schema.Means(zero='one scale per output channel')}

  rank: int = 0  # r: adapters [K, r] and [r, N]; 0: full fine-tuning.
  alpha: float = 16.0  # The update is scaled by alpha / rank.
  dropout: float = 0.0  # Dropout on the adapters' input (needs rngs).
  # Which products get adapters: a name of TARGETS (attention, mlp,
  # all_linear) or a regex over module paths such as 'block_0/attn/q'.
  targets: str = 'all_linear'
  # Storage of the frozen base's adapted kernels: none (its dtype), int8,
  # int4 (QLoRA; absmax scales, see quantize_block).
  quantize: str = 'none'
  # Quantization blocks along the innermost input axis (QLoRA's block-wise
  # scales, e.g. 64; it must divide that axis); 0: one scale per output
  # channel. int4 needs blocks to stay close to its base.
  quantize_block: int = 0

  def __post_init__(self):
    schema.non_negative(self, 'rank', 'quantize_block')
    schema.positive(self, 'alpha')
    schema.in_range(self, 'dropout', 0.0, 1.0)
    schema.one_of(self, 'quantize', QUANTIZE)
    if self.dropout:
      raise schema.FieldError(
          'dropout', f'={self.dropout}: adapter dropout is not supported: '
          'the log-probs of a rollout and of the loss must come from the '
          'same function (importance ratios, KL), and dropout would make '
          'every loss pass stochastic. Set config.lora.dropout=0.')
    if self.quantize_block and self.quantize == 'none':
      raise schema.FieldError(
          'quantize_block', f'={self.quantize_block} sets the blocks of a '
          "quantized base: set config.lora.quantize to 'int8' or 'int4', or "
          'quantize_block to 0.')
    if self.quantize != 'none' and not self.rank:
      raise schema.FieldError(
          'quantize', f'={self.quantize!r} quantizes the frozen base of an '
          'adapted model: set config.lora.rank > 0 as well, or '
          "config.lora.quantize='none'.")
    try:
      re.compile(self.pattern)
    except re.error as e:
      raise schema.FieldError(
          'targets', f'={self.targets!r} is not a regex ({e}); or use one '
          f'of {sorted(TARGETS)}.') from e

  @property
  def enabled(self) -> bool:
    return self.rank > 0

  @property
  def pattern(self) -> str:
    return TARGETS.get(self.targets, self.targets)

  def provider(self, *, lora: bool = True):
    """The qwix provider: adapters (and the base's quantization), or with
    lora=False only the base's quantization (the adapters-off model)."""
    quantized = dict(
        weight_qtype=None if self.quantize == 'none' else self.quantize,
        tile_size=self.quantize_block or None)
    if lora:
      return qwix.LoraProvider(module_path=self.pattern, rank=self.rank,
                               alpha=self.alpha, **quantized)
    return qwix.PtqProvider([qwix.QuantizationRule(
        module_path=self.pattern, **quantized)])


def is_adapter(path) -> bool:
  """Whether a key path (of `jax.tree_util` or a tuple of names) names an
  adapter factor."""
  last = path[-1]
  name = getattr(last, 'key', last)
  return isinstance(name, str) and name.endswith(_SUFFIXES)


def has_adapters(params: Params) -> bool:
  return any(is_adapter(p) for p, _ in
             jax.tree_util.tree_flatten_with_path(params)[0])


def adapters_off(params: Params) -> Params:
  """`params` without the adapter factors: with the bound base, the base
  model (plus whatever heads `params` has)."""
  flat = flax.traverse_util.flatten_dict(params)
  return flax.traverse_util.unflatten_dict(
      {k: v for k, v in flat.items() if not is_adapter(k)})


def merge_trees(base: Params, params: Params) -> Params:
  """The nested dicts `base` and `params` as one (`params` wins)."""
  flat = dict(flax.traverse_util.flatten_dict(base))
  flat.update(flax.traverse_util.flatten_dict(params))
  return flax.traverse_util.unflatten_dict(flat)


@dataclasses.dataclass(frozen=True)
class Adapters:
  """How a policy's model is adapted, and (inside a step) its frozen base.

  Hashable by its config alone: the bound base (arrays, tracers inside a
  step) is not part of equality, so a bound policy still keys jit caches
  by what it computes.
  """

  config: LoraConfig
  base: Params = dataclasses.field(default=None, compare=False, repr=False)

  def bind(self, base: Params) -> 'Adapters':
    return dataclasses.replace(self, base=base)

  def apply(self, model: flax.linen.Module, params: Params, *args,
            **kwargs):
    """`model.apply` on the bound base merged with `params`: adapted when
    `params` holds adapter factors, the (quantized) base otherwise."""
    if self.base is None:
      raise ValueError(
          'A policy with adapters was called without its frozen base. Steps '
          'bind it from TrainState.frozen (jaxrlgen.train.step.bind); '
          'elsewhere call policy.bind(base) first.')
    module = self.module(model, lora=has_adapters(params))
    return module.apply({'params': merge_trees(self.base, params)}, *args,
                        **kwargs)

  def module(self, model: flax.linen.Module, *, lora: bool = True):
    """`model` intercepted by qwix: adapters (lora=True) and/or the base's
    quantization; the plain model when neither applies."""
    if not lora and self.config.quantize == 'none':
      return model
    return qwix.quantize_model(model, self.config.provider(lora=lora))

  def init(self, model: flax.linen.Module, base: Params, key: jax.Array,
           *example) -> Params:
    """Fresh adapter factors for `model` on `base` (A drawn, B zero): one
    apply of the adapted model on `example` inputs creates them."""
    def create(base, key):
      module = qwix.apply_lora_to_model(model, self.config.provider())
      # As in `parallel.sharded_init`: flax would constrain the new boxed
      # parameters under the active rules; the caller places them.
      with flax.linen.logical_axis_rules(()):
        _, variables = module.apply({'params': base}, *example,
                                    rngs={'params': key}, mutable=['params'])
      flat = flax.traverse_util.flatten_dict(variables['params'])
      return flax.traverse_util.unflatten_dict(
          {k: v for k, v in flat.items() if is_adapter(k)})
    adapters = jax.jit(create)(base, key)
    if not adapters:
      raise schema.FieldError(
          'config.lora.targets', f'={self.config.targets!r} matches no '
          'product of the model: module paths look like block_0/attn/q, '
          'block_0/mlp/up.')
    return adapters

  def logical_axes(self, model: flax.linen.Module, *example) -> Params:
    """PartitionSpecs of logical names of the adapted model's parameters:
    the adapter factors carry their kernel's names (A: the input axes', B:
    the output axes'), quantized kernels their values' and scales'."""
    module = qwix.apply_lora_to_model(model, self.config.provider())

    def init():
      with flax.linen.logical_axis_rules(()):
        params = module.init(jax.random.key(0), *example)['params']
        _, variables = module.apply({'params': params}, *example,
                                    rngs={'params': jax.random.key(1)},
                                    mutable=['params'])
      return variables['params']
    return flax.linen.get_partition_spec(jax.eval_shape(init))

  def quantize(self, model: flax.linen.Module, base: Params,
               *example) -> Params:
    """`base` with its adapted kernels stored quantized (QLoRA), or as it
    is without config.quantize."""
    if self.config.quantize == 'none':
      return base
    module = self.module(model, lora=False)
    def init():
      with flax.linen.logical_axis_rules(()):
        return module.init(jax.random.key(0), *example)['params']
    try:
      abstract = jax.eval_shape(init)
    except ValueError as e:
      if 'cannot be tiled' not in str(e):
        raise
      raise schema.FieldError(
          'config.lora.quantize_block', f'={self.config.quantize_block} '
          'must divide the innermost input axis of every adapted kernel '
          f'(the head size for the attention output): {e}') from None
    return qwix.quantize_params(base, abstract)


@dataclasses.dataclass(frozen=True)
class AdaptedModel:
  """A Flax module with adapters, called as the module is:
  `apply({'params': trainable}, ...)` runs it on the bound base merged with
  the trainable tree. For code that takes a module rather than a policy
  (a reward model's `score`).
  """

  module: flax.linen.Module
  adapters: Adapters

  @property
  def config(self):
    return self.module.config

  def bind(self, base: Params) -> 'AdaptedModel':
    return dataclasses.replace(self, adapters=self.adapters.bind(base))

  def apply(self, variables, *args, **kwargs):
    return self.adapters.apply(self.module, variables['params'], *args,
                               **kwargs)


def dequantize(base: Params) -> Params:
  """A base tree with any quantized kernel (qwix's WithAux) dequantized."""
  is_quantized = lambda x: type(x).__name__ == 'WithAux'
  return jax.tree.map(
      lambda x: qwix.dequantize(x.array) if is_quantized(x) else x, base,
      is_leaf=is_quantized)


def merge(base: Params, adapters: Params, config: LoraConfig) -> Params:
  """Plain parameters with each adapter folded into its kernel:
  W + (A @ B) * alpha / rank, reshaped to W's shape and dtype. The heads in
  `adapters` that are not adapter factors are kept."""
  full = flax.traverse_util.flatten_dict(dequantize(base))
  flat = flax.traverse_util.flatten_dict(adapters)
  scale = config.alpha / config.rank
  for path, value in flat.items():
    if not is_adapter(path):
      full[path] = value
    elif path[-1].endswith('_lora_a'):
      name = path[-1][:-len('_lora_a')]
      kernel_path = path[:-1] + (name,)
      b = flat[path[:-1] + (name + '_lora_b',)]
      kernel = full[kernel_path]
      delta = jnp.matmul(value.astype(jnp.float32), b.astype(jnp.float32))
      full[kernel_path] = (kernel.astype(jnp.float32) + scale * delta.reshape(
          kernel.shape)).astype(kernel.dtype)
  return flax.traverse_util.unflatten_dict(full)


def count(params: Params, keep: Callable[[Any], bool] = is_adapter) -> int:
  """Number of elements in the leaves of `params` whose path `keep`s."""
  return sum(x.size for p, x in jax.tree_util.tree_flatten_with_path(params)[0]
             if keep(p))


class AdaptablePolicy:
  """What a policy class needs to carry adapters: its dataclass fields
  `model` (a Flax module) and `adapters` (`Adapters` or None, last, default
  None), its `_example()` inputs for one apply, and `_apply` in place of
  `model.apply` wherever it runs the model."""

  model: flax.linen.Module
  adapters: Adapters | None
  # Top-level parameter subtrees that train with the adapters: heads an RL
  # algorithm adds, which no released base has trained.
  trainable_heads: tuple[str, ...] = ()

  def split_base(self, params: Params) -> tuple[Params, Params]:
    """(the frozen base, the trainable heads) of whole-model `params`."""
    frozen = {k: v for k, v in params.items()
              if k not in self.trainable_heads}
    return frozen, {k: v for k, v in params.items()
                    if k in self.trainable_heads}

  def _apply(self, params: Params, *args, **kwargs):
    if self.adapters is None:
      return self.model.apply({'params': params}, *args, **kwargs)
    return self.adapters.apply(self.model, params, *args, **kwargs)

  def _full(self, params: Params) -> Params:
    """The model's whole parameter tree (the bound base merged in)."""
    if self.adapters is None:
      return params
    return merge_trees(self.adapters.base, params)

  def with_adapters(self, config: LoraConfig):
    """This policy with adapters on the products `config.targets` names."""
    return dataclasses.replace(self, adapters=Adapters(config))

  def bind(self, base: Params):
    """This policy reading `base` as its frozen weights (inside a step)."""
    return dataclasses.replace(self, adapters=self.adapters.bind(base))

  def init_adapters(self, base: Params, key: jax.Array) -> Params:
    """Fresh adapter factors on `base` (the model then equals the base)."""
    return self.adapters.init(self.model, base, key, *self._example())

  def adapter_logical_axes(self) -> Params:
    """Logical-name PartitionSpecs of the adapted model's parameters."""
    return self.adapters.logical_axes(self.model, *self._example())

  def quantize_base(self, base: Params) -> Params:
    """`base` as the frozen weights are stored (quantized for QLoRA)."""
    return self.adapters.quantize(self.model, base, *self._example())
