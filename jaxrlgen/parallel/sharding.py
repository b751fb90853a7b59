"""From logical axis names to shardings: one rules table for everything.

Every parameter of the models carries logical axis names (`embed`, `heads`,
...; see `jaxrlgen/models/transformer.py`) and the main activations are
constrained with names of their own (`batch`, `act_heads`, ...). `RULES` maps
both to the mesh axes of `jaxrlgen/parallel/mesh.py`:

  parameters   embed -> fsdp; heads, kv_heads, mlp, vocab -> tensor
  activations  batch -> (data, fsdp); act_heads, act_kv_heads, act_mlp,
               act_vocab -> tensor; everything else replicated

A dimension that its mesh axes do not divide (two KV heads on four tensor
shards, a 2-wide bias on `fsdp`) is replicated rather than rejected, so any
model runs on any mesh; the memory report shows what that costs.

Any pytree that holds a model's parameters somewhere inside it -- the train
state with its optimizer moments, a reference copy, PPO's critic -- gets its
shardings from the parameters' logical names, matched by the path of each
leaf: the leaf `opt_state[1][0].mu['block_0']['attn']['q']['kernel']` ends with
the parameter path `block_0/attn/q/kernel`, so it is sharded like that
kernel. Leaves that match no parameter (step counters, scalars, algorithm
statistics) are replicated. That is what lets every algorithm run unchanged
on any mesh.
"""

import contextlib
from typing import Any, Callable, Iterator, Mapping, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np

from jaxrlgen.parallel import mesh as mesh_lib

PyTree = Any
Rules = Sequence[tuple[str, str | tuple[str, ...] | None]]

RULES: Rules = (
    # Parameters.
    ('embed', 'fsdp'),
    ('vocab', 'tensor'),
    ('heads', 'tensor'),
    ('kv_heads', 'tensor'),
    ('mlp', 'tensor'),
    ('head_dim', None),
    # Activations.
    ('batch', mesh_lib.BATCH_AXES),
    ('length', None),
    ('act_embed', None),
    ('act_heads', 'tensor'),
    ('act_kv_heads', 'tensor'),
    ('act_mlp', 'tensor'),
    ('act_vocab', 'tensor'),
)


def _mesh_axes(name: str | None, rules: Rules) -> tuple[str, ...]:
  if name is None:
    return ()
  for logical, axes in rules:
    if logical == name:
      if axes is None:
        return ()
      return (axes,) if isinstance(axes, str) else tuple(axes)
  raise ValueError(f'The logical axis {name!r} has no entry in the sharding '
                   f'rules; known: {[logical for logical, _ in rules]}.')


def spec_for(logical: Sequence[str | None], shape: Sequence[int],
             axis_sizes: Mapping[str, int], rules: Rules = RULES) -> P:
  """The mesh PartitionSpec of an array with these logical axis names.

  Args:
    logical: one logical name (or None) per dimension.
    shape: the array's shape.
    axis_sizes: mesh axis name -> size (`dict(mesh.shape)`).
    rules: logical name -> mesh axis, tuple of mesh axes, or None.
  Returns:
    A PartitionSpec without trailing Nones; a dimension its mesh axes do not
    divide, or a mesh axis already used by an earlier dimension, is left
    unsharded.
  """
  if len(logical) != len(shape):
    raise ValueError(f'{len(logical)} logical axis names {tuple(logical)} for '
                     f'an array of shape {tuple(shape)}.')
  used, out = set(), []
  for name, dim in zip(logical, shape):
    axes = tuple(a for a in _mesh_axes(name, rules)
                 if a not in used and axis_sizes.get(a, 1) > 1)
    size = 1
    for a in axes:
      size *= axis_sizes[a]
    if not axes or dim % size:
      out.append(None)
      continue
    used.update(axes)
    out.append(axes[0] if len(axes) == 1 else axes)
  while out and out[-1] is None:  # Canonical: P('fsdp'), not P('fsdp', None).
    out.pop()
  return P(*out)


def _path_names(path) -> tuple[str, ...]:
  names = []
  for k in path:
    for attr in ('key', 'name', 'idx'):
      if hasattr(k, attr):
        names.append(str(getattr(k, attr)))
        break
    else:
      names.append(str(k))
  return tuple(names)


def logical_table(logical_specs: PyTree) -> dict[tuple[str, ...], tuple]:
  """Parameter path -> logical names, from a pytree of PartitionSpecs."""
  flat, _ = jax.tree_util.tree_flatten_with_path(
      logical_specs, is_leaf=lambda x: isinstance(x, P))
  return {_path_names(path): tuple(spec) for path, spec in flat}


def tree_shardings(tree: PyTree, mesh: Mesh, logical_specs: PyTree,
                   rules: Rules = RULES) -> PyTree:
  """NamedShardings for every array leaf of `tree` (arrays or
  ShapeDtypeStructs), taken from the parameter whose path ends the leaf's.

  Args:
    tree: any pytree holding parameters somewhere (a TrainState, params).
    mesh: the device mesh.
    logical_specs: the parameters' logical names, a pytree of PartitionSpecs
      (e.g. `transformer.logical_axes(config)`); several models' tables may
      be merged in a dict.
    rules: logical -> mesh axes.
  """
  table = logical_table(logical_specs)
  sizes = dict(mesh.shape)
  longest = max((len(k) for k in table), default=0)

  def sharding(path, leaf):
    names = _path_names(path)
    shape = getattr(leaf, 'shape', ())
    for start in range(max(0, len(names) - longest), len(names)):
      logical = table.get(names[start:])
      if logical is not None and len(logical) == len(shape):
        return NamedSharding(mesh, spec_for(logical, shape, sizes, rules))
    return NamedSharding(mesh, P())

  return jax.tree_util.tree_map_with_path(sharding, tree)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over data x fsdp, the rest replicated."""
  return NamedSharding(mesh, P(mesh_lib.BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


@contextlib.contextmanager
def activate(mesh: Mesh, rules: Rules = RULES) -> Iterator[Mesh]:
  """Makes `mesh` and `rules` the context of tracing, so the models'
  `nn.with_logical_constraint` calls shard the activations. Outside this
  context those calls do nothing (one device)."""
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    yield mesh


def sharded_init(init_fn: Callable[..., PyTree], *args,
                 shardings: PyTree | Callable[[PyTree], PyTree]) -> PyTree:
  """Runs `init_fn(*args)` straight into its shardings.

  The output is never materialised whole on one device: its shapes come from
  `jax.eval_shape`, and the jitted init writes each shard where it lives.

  Args:
    init_fn: builds a pytree of arrays (parameters, a train state).
    *args: its arguments (keys, parameters it derives from).
    shardings: the output's shardings, or a function from the abstract
      output (ShapeDtypeStructs) to them, e.g.
      `lambda tree: tree_shardings(tree, mesh, specs)`.
  """
  def init(*args):
    # Flax constrains boxed parameters as it creates them when rules are
    # active, which breaks on kernels it reshapes after creating; the output
    # shardings place the result anyway.
    with nn.logical_axis_rules(()):
      return init_fn(*args)

  if callable(shardings):
    shardings = shardings(jax.eval_shape(init, *args))
  return jax.jit(init, out_shardings=shardings)(*args)


def jit_step(step_fn: Callable[..., tuple[PyTree, PyTree]], mesh: Mesh,
             state_shardings: PyTree, *, donate: bool = True):
  """`step_fn(state, batch, key) -> (state, metrics)` jitted with explicit
  shardings: the state keeps `state_shardings`, the batch is split over
  data x fsdp, the key and the metrics are replicated."""
  return jax.jit(
      step_fn,
      in_shardings=(state_shardings, batch_sharding(mesh), replicated(mesh)),
      out_shardings=(state_shardings, replicated(mesh)),
      donate_argnums=(0,) if donate else ())


class Layout:
  """Where a run's arrays live: a mesh and the models' logical names.

  The handful of calls a recipe needs, so it never spells a sharding:

    layout = Layout(mesh, transformer.logical_axes(model_config))
    params = layout.init(init_fn, key)           # born sharded
    step = layout.jit_step(step_fn, state)       # state keeps its shardings
    state, metrics = step(state, layout.batch(host_batch), key)
  """

  def __init__(self, mesh: Mesh, logical_specs: PyTree, rules: Rules = RULES):
    self.mesh = mesh
    self.logical_specs = logical_specs
    self.rules = rules

  def shardings(self, tree: PyTree) -> PyTree:
    """`tree_shardings` of any pytree holding the models' parameters."""
    return tree_shardings(tree, self.mesh, self.logical_specs, self.rules)

  def init(self, init_fn: Callable[..., PyTree], *args) -> PyTree:
    """`init_fn(*args)`, each output array created in its shards."""
    return sharded_init(init_fn, *args, shardings=self.shardings)

  def jit_step(self, step_fn, state: PyTree, *, donate: bool = True):
    """`jit_step` with the shardings of `state`'s arrays."""
    return jit_step(step_fn, self.mesh, self.shardings(state), donate=donate)

  def batch(self, local_batch: PyTree) -> PyTree:
    """This process's rows -> global arrays split over data x fsdp."""
    sharding = batch_sharding(self.mesh)
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(sharding,
                                                         np.asarray(x)),
        local_batch)
