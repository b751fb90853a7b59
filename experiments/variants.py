"""Named variants of an experiment's config (`--config=...config.py:a,b`)."""

from typing import Callable, Mapping

import ml_collections

Variant = Callable[[ml_collections.ConfigDict], None]


def apply(config: ml_collections.ConfigDict, arg: str,
          variants: Mapping[str, Variant],
          experiment: str) -> ml_collections.ConfigDict:
  """`config` with the variants named in `arg` (comma-separated) applied in
  order; an unknown name fails, listing the known ones."""
  for name in filter(None, (a.strip() for a in (arg or '').split(','))):
    if name not in variants:
      raise ValueError(f'Unknown variant {name!r} of the {experiment} config; '
                       f'known: {sorted(variants)}.')
    variants[name](config)
  return config
