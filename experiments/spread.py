"""Figures across seeds: their mean and spread, for the experiments' tables.

Every experiment that reports results over several seeds (`rlhf_gold/seeds.py`,
`ddpo_digits/compare.py`) keeps each seed's `summary.json` and reduces them
here, so that the READMEs' "mean ± std" mean the same thing everywhere: the
mean and the sample standard deviation (ddof 1) over seeds.
"""

from typing import Mapping

import numpy as np

Stats = dict[str, float]  # mean, std, min, max, n.


def aggregate(summaries: Mapping[str, Mapping]) -> dict[str, Stats]:
  """Mean, sample std, min and max over seeds of every numeric figure that
  all the summaries hold.

  Args:
    summaries: seed -> summary (figure name -> value).
  Returns:
    figure -> {'mean', 'std' (0 for a single seed), 'min', 'max', 'n'}.
  """
  if not summaries:
    return {}
  out = {}
  first = next(iter(summaries.values()))
  for key in first:
    values = [s.get(key) for s in summaries.values()]
    if not all(isinstance(v, (int, float)) for v in values):  # Bools too.
      continue
    values = np.asarray([float(v) for v in values])
    out[key] = {'mean': float(np.mean(values)),
                'std': float(np.std(values, ddof=1)) if len(values) > 1
                       else 0.0,
                'min': float(np.min(values)), 'max': float(np.max(values)),
                'n': len(values)}
  return out


def mean_std(stats: Mapping[str, Stats], key: str, digits: int = 3, *,
             signed: bool = False) -> str:
  """'mean ± std' of figure `key` (from `aggregate`), or 'n/a'."""
  if key not in stats:
    return 'n/a'
  sign = '+' if signed else ''
  return (f'{stats[key]["mean"]:{sign}.{digits}f} ± '
          f'{stats[key]["std"]:.{digits}f}')
