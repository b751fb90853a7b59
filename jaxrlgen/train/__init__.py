"""Training: the jitted steps, the loop, and the experiment recipes.

`RECIPES` maps `config.recipe` to the function that runs such a config.
"""

import ml_collections

from jaxrlgen import parallel
from jaxrlgen.train import ddpo
from jaxrlgen.train import rlhf_gold
from jaxrlgen.train import seqgan
from jaxrlgen.train import text_rl

RECIPES = {
    'text_rl': text_rl.run,
    'rlhf_gold': rlhf_gold.run,
    'ddpo': ddpo.run,
    'seqgan': seqgan.run,
}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment that `config` describes.

  A multi-host run's processes find each other first (`config.distributed`,
  or the environment), before anything touches a device.
  """
  parallel.initialize(config.get('distributed'))
  if config.recipe not in RECIPES:
    raise ValueError(f'Unknown config.recipe={config.recipe!r}; known: '
                     f'{sorted(RECIPES)}.')
  return RECIPES[config.recipe](config, workdir)
