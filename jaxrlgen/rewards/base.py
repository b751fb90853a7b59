"""What every reward is, and the one registry of rewards.

A reward is a function `(rollout, batch) -> f32[B]`, for text and images
alike: `rollout` is what the environment generated (core's `Rollout`) and
`batch` each sequence's data (its prompt's fields, repeated over the group).
A reward that runs Python on the host (decoded text, image encoders) also has
`with_failures(rollout, batch) -> (f32[B], bool[B])`: which items raised or
timed out and got their penalty.

`REWARDS` maps a name to a factory `(**context) -> reward`; the context is
what the run has (`tokenizer=` for text, `fields=` the task's reward fields,
`classifier_model=` / `classifier_params=` for images, and options such as
`target_length=`, `answer_field=`, `penalty=`), and a factory takes the
keywords it needs. A config names a reward by its name or by an import path
of a factory, a JAX reward or a per-item Python function
`fn(completion, **fields) -> float` (`jaxrlgen.rewards.functions`).
"""

import ast
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp

from jaxrlgen.core.types import Rollout
from jaxrlgen.registry import Registry
from jaxrlgen.rewards import functions

RewardFn = Callable[[Rollout, Any], jax.Array]
RewardFactory = Callable[..., RewardFn]
# `config.reward.terms`: (name or factory import path, weight) pairs. Pairs,
# not a mapping: an import path has dots, which a ConfigDict key may not.
Terms = tuple[tuple[str, float], ...]

REWARDS: Registry[RewardFactory] = Registry('reward', 'config.reward.terms')


class Weighted:
  """A weighted sum of rewards: itself a reward, with `with_failures`.

  Attributes:
    terms: (weight, name, reward) triples.
    uses_host: whether some term runs on the host (has `with_failures`).
  """

  def __init__(self, terms: Sequence[tuple[float, str, RewardFn]]):
    self.terms = tuple(terms)
    self.__name__ = '+'.join(name for _, name, _ in self.terms)

  @property
  def uses_host(self) -> bool:
    return any(hasattr(fn, 'with_failures') for _, _, fn in self.terms)

  def with_failures(self, rollout: Rollout, batch
                    ) -> tuple[jax.Array, jax.Array]:
    """(rewards f32[B], failed bool[B]); failed is true where a host term
    gave its penalty."""
    b = rollout.batch_size
    total = jnp.zeros((b,), jnp.float32)
    failed = jnp.zeros((b,), jnp.bool_)
    for weight, _, fn in self.terms:
      if hasattr(fn, 'with_failures'):
        value, term_failed = fn.with_failures(rollout, batch)
        failed = failed | term_failed
      else:
        value = fn(rollout, batch)
      total = total + weight * value
    return total, failed

  def __call__(self, rollout: Rollout, batch) -> jax.Array:
    return self.with_failures(rollout, batch)[0]


def parse_terms(text: str, flag: str = 'config.reward.terms') -> Terms:
  """Terms written on the command line: a dict literal
  `"{'my.mod:score': 1.0, 'format': 0.1}"` or a literal of (name, weight)
  pairs; '' or '{}': none."""
  if not text.strip():
    return ()
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError) as e:
    raise ValueError(
        f'{flag}={text!r} is not a Python literal ({e}); write '
        "\"{'name': weight, ...}\" or \"(('name', weight), ...)\".") from None
  items = value.items() if isinstance(value, dict) else value
  try:
    pairs = tuple((name, float(weight)) for name, weight in items)
  except (TypeError, ValueError):
    raise ValueError(f'{flag}={text!r}: each term is a reward name (or '
                     'import path) and a numeric weight.') from None
  if not all(isinstance(name, str) for name, _ in pairs):
    raise ValueError(f'{flag}={text!r}: reward names must be strings.')
  return pairs


def check_terms(terms: Terms | Mapping[str, float],
                names: Sequence[str] | None = None,
                context_keys: Sequence[str] | None = None) -> None:
  """Fails, naming config.reward.terms, on no terms, an unknown name, an
  import path that does not import or names a function of none of the
  accepted signatures (`functions.kind`).

  Args:
    terms: (reward name or import path, weight) pairs, or a mapping.
    names: the registered names allowed here (e.g. the image rewards for a
      denoising environment); None: every registered name.
    context_keys: the keys of the run's context, when known.
  """
  allowed = sorted(REWARDS.names() if names is None else names)
  if not terms:
    raise ValueError('config.reward.terms is empty; name at least one reward '
                     f'from {allowed}.')
  for name in dict(terms):
    if name in REWARDS and name not in allowed:
      raise ValueError(f'config.reward.terms names {name!r}, which does not '
                       f'apply here; known: {allowed}.')
    value = REWARDS.get(name)  # An unknown name or a bad path fails here.
    if name not in REWARDS:
      functions.kind(value, name, context_keys)


def build(name: str, context: Mapping[str, Any]) -> RewardFn:
  """The reward a registered name or an import path gives in `context`."""
  if name in REWARDS:
    return REWARDS.get(name)(**context)
  return functions.from_object(REWARDS.get(name), name, context)


def make(terms: Terms | Mapping[str, float],
         names: Sequence[str] | None = None, **context: Any) -> Weighted:
  """The weighted sum `config.reward.terms` describes.

  Args:
    terms: (reward name or import path, weight) pairs, or a mapping.
    names: the registered names allowed here (None: all).
    **context: what factories read (tokenizer, the task's reward `fields`,
      classifier, options); `penalty`, `timeout_s` and `max_workers` set
      the host bridge of per-item functions and verifiers.
  """
  check_terms(terms, names, tuple(context))
  return Weighted([(float(weight), name, build(name, context))
                   for name, weight in dict(terms).items()])
