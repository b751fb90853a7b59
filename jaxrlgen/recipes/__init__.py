"""Recipes: whole runs (data, warm start, training, evaluation, outputs).

`config.recipe` names a registered recipe (`'text_rl'`, the generic one that
trains any task, model and algorithm) or an experiment's own by import path
(`'experiments.seqgan.recipe:run'`). A recipe is `run(config, workdir) ->
summary dict`.
"""

from typing import Callable

import ml_collections

from jaxrlgen import parallel
from jaxrlgen.recipes import text_rl
from jaxrlgen.registry import Registry

Recipe = Callable[[ml_collections.ConfigDict, str], dict]

RECIPES: Registry[Recipe] = Registry('recipe', 'config.recipe')
RECIPES.register('text_rl', text_rl.run)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the experiment that `config` describes.

  A multi-host run's processes find each other first (`config.distributed`,
  or the environment), before anything touches a device.
  """
  recipe = RECIPES.get(config.recipe)  # An unknown name fails before start-up.
  parallel.initialize(config.get('distributed'))
  return recipe(config, workdir)
