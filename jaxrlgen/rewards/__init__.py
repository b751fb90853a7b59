"""Rewards: functions `(rollout, batch) -> f32[B]` for text and images, and
their one registry (`jaxrlgen.rewards.base`).

Text rewards (`text`) run inside jit with the byte tokenizer; with a released
model's tokenizer (`byte_level` False), `exact_match` and `format` parse the
decoded text on the host (`host`). Image rewards (`image`) read the final
image of a denoising rollout. `make(terms, **context)` builds the weighted
sum that `config.reward.terms` ((name, weight) pairs) describes.

Verifiers (`verifiers`: `exact_string`, `numeric_answer`, `math_answer`,
`regex_format`) check the decoded completion against a field of its record
on the host; `unit_tests` (`code`) runs the completion's program against
the record's tests in the sandbox (`sandbox`). A term may also be the import
path of a per-item Python function `fn(completion, **fields) -> float`, a
JAX reward or a factory (`functions`); text fields reach host rewards as
strings (`fields`).
"""

import functools

import jax.numpy as jnp

from jaxrlgen.rewards import code
from jaxrlgen.rewards import fields
from jaxrlgen.rewards import functions
from jaxrlgen.rewards import host
from jaxrlgen.rewards import image
from jaxrlgen.envs import multiturn
from jaxrlgen.rewards import text
from jaxrlgen.rewards import verifiers
from jaxrlgen.rewards.base import check_terms
from jaxrlgen.rewards.base import make
from jaxrlgen.rewards.base import parse_terms
from jaxrlgen.rewards.base import REWARDS
from jaxrlgen.rewards.base import Terms
from jaxrlgen.rewards.base import Weighted


def _exact_match(*, tokenizer, **unused):
  if getattr(tokenizer, 'byte_level', False):
    return functools.partial(text.exact_match, eos_id=tokenizer.eos_id)
  return host.text_reward(text.exact_match_text, tokenizer, fields=('answer',))


def _format(*, tokenizer, **unused):
  if getattr(tokenizer, 'byte_level', False):
    return functools.partial(text.integer_format, eos_id=tokenizer.eos_id)
  is_integer = host.text_reward(text.is_integer_text, tokenizer)

  def decoded_integer_format(rollout, batch):
    ended = text.ended_with_eos(rollout, tokenizer.eos_id)
    return ended.astype(jnp.float32) * is_integer(rollout, batch)

  return decoded_integer_format


def _length_penalty(*, target_length: int = 0, **unused):
  return functools.partial(text.length_penalty, target_length=target_length)


REWARDS.register('exact_match', _exact_match)
REWARDS.register('target_match', lambda **unused: text.target_match)
REWARDS.register('format', _format)
REWARDS.register('length_penalty', _length_penalty)
for _name, _factory in verifiers.FACTORIES.items():
  REWARDS.register(_name, _factory)
REWARDS.register('unit_tests', code.make_unit_tests)


def _turn_rewards(*, turn_discount: float = 1.0, **unused):
  # Multi-turn episodes' per-turn rewards (`envs.multiturn`), discounted
  # over turns.
  def turn_rewards(rollout, batch):
    del batch
    return multiturn.turn_return(rollout, turn_discount)
  return turn_rewards


REWARDS.register('turn_rewards', _turn_rewards)

__all__ = ['REWARDS', 'Terms', 'Weighted', 'check_terms', 'code', 'fields',
           'functions', 'host', 'image', 'make', 'parse_terms', 'text', 'verifiers']
