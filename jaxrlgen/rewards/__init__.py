"""Rewards: pure functions `(rollout, batch) -> f32[B]`, and their registry.

`REWARDS` maps a reward name to a factory `(tokenizer, **options) -> fn`;
`make(terms, tokenizer, options)` builds the weighted sum that
`config.reward.terms` (name -> weight) describes. A name may also be an
import path ('my_package.rewards:make_score' or 'file.py:make_score') of such
a factory. With the byte tokenizer the rewards run inside jit; with a
released model's tokenizer (`byte_level` False), `exact_match` and `format`
parse the decoded text on the host.
"""

import functools
from typing import Callable, Mapping

import jax.numpy as jnp

from jaxrlgen.registry import Registry
from jaxrlgen.rewards import host
from jaxrlgen.rewards import text
from jaxrlgen.rewards.text import exact_match
from jaxrlgen.rewards.text import integer_format
from jaxrlgen.rewards.text import length_penalty
from jaxrlgen.rewards.text import parse_integer
from jaxrlgen.rewards.text import target_match
from jaxrlgen.rewards.text import weighted


def _exact_match(tok, **_):
  if getattr(tok, 'byte_level', False):
    return functools.partial(text.exact_match, eos_id=tok.eos_id)
  return host.text_reward(text.exact_match_text, tok, fields=('answer',))


def _format(tok, **_):
  if getattr(tok, 'byte_level', False):
    return functools.partial(text.integer_format, eos_id=tok.eos_id)
  is_integer = host.text_reward(text.is_integer_text, tok)

  def decoded_integer_format(rollout, batch):
    ended = text.ended_with_eos(rollout, tok.eos_id)
    return ended.astype(jnp.float32) * is_integer(rollout, batch)

  return decoded_integer_format


RewardFactory = Callable[..., Callable]
REWARDS: Registry[RewardFactory] = Registry('reward', 'config.reward.terms')
REWARDS.register('exact_match', _exact_match)
REWARDS.register('target_match', lambda tok, **_: text.target_match)
REWARDS.register('format', _format)
REWARDS.register('length_penalty', lambda tok, target_length=0, **_: (
    functools.partial(text.length_penalty, target_length=target_length)))


def make(terms: Mapping[str, float], tokenizer, **options) -> Callable:
  """The weighted sum of the named rewards.

  Args:
    terms: reward name (or factory import path) -> weight
      (`config.reward.terms`).
    tokenizer: gives the special tokens rewards need.
    **options: keyword options some rewards read (e.g. target_length).
  """
  if not terms:
    raise ValueError('config.reward.terms is empty; name at least one reward '
                     f'from {REWARDS.names()}.')
  factories = [(weight, REWARDS.get(name)) for name, weight in terms.items()]
  return weighted((weight, factory(tokenizer, **options))
                  for weight, factory in factories)
