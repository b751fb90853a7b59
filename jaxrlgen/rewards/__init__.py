"""Rewards: pure functions `(rollout, batch) -> f32[B]`, and their registry.

`REGISTRY` maps a reward name to a factory `(tokenizer, **options) -> fn`;
`make(terms, tokenizer, options)` builds the weighted sum that
`config.reward.terms` (name -> weight) describes.
"""

import functools
from typing import Callable, Mapping

from jaxrlgen.rewards import text
from jaxrlgen.rewards.text import exact_match
from jaxrlgen.rewards.text import integer_format
from jaxrlgen.rewards.text import length_penalty
from jaxrlgen.rewards.text import parse_integer
from jaxrlgen.rewards.text import weighted

REGISTRY: dict[str, Callable[..., Callable]] = {
    'exact_match': lambda tok, **_: functools.partial(
        text.exact_match, eos_id=tok.eos_id),
    'format': lambda tok, **_: functools.partial(
        text.integer_format, eos_id=tok.eos_id),
    'length_penalty': lambda tok, target_length=0, **_: functools.partial(
        text.length_penalty, target_length=target_length),
}


def make(terms: Mapping[str, float], tokenizer, **options) -> Callable:
  """The weighted sum of the named rewards.

  Args:
    terms: reward name -> weight (`config.reward.terms`).
    tokenizer: gives the special tokens rewards need.
    **options: keyword options some rewards read (e.g. target_length).
  """
  unknown = sorted(set(terms) - set(REGISTRY))
  if unknown:
    raise ValueError(f'Unknown reward(s) {unknown} in config.reward.terms; '
                     f'known: {sorted(REGISTRY)}.')
  if not terms:
    raise ValueError('config.reward.terms is empty; name at least one reward '
                     f'from {sorted(REGISTRY)}.')
  return weighted((weight, REGISTRY[name](tokenizer, **options))
                  for name, weight in terms.items())
