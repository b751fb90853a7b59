"""RL algorithms over core's Rollout, and their registry.

`REGISTRY` is the single source of truth of algorithm names: each maps to its
hyperparameter dataclass (the schema of `config.algo`) and a constructor.
"""

from typing import Callable, NamedTuple

import ml_collections

from jaxrlgen.algos import a2c
from jaxrlgen.algos import base
from jaxrlgen.algos import ddpo
from jaxrlgen.algos import dqn
from jaxrlgen.algos import grpo
from jaxrlgen.algos import ilql
from jaxrlgen.algos import impala
from jaxrlgen.algos import mcts
from jaxrlgen.algos import ppo
from jaxrlgen.algos import preference
from jaxrlgen.algos import reinforce
from jaxrlgen.algos import rloo
from jaxrlgen.algos import sac
from jaxrlgen.algos import sql
from jaxrlgen.algos.base import Algorithm
from jaxrlgen.algos.base import init_algo_state
from jaxrlgen.algos.base import minibatch_update


class Entry(NamedTuple):
  config_cls: type
  make: Callable[..., Algorithm]


REGISTRY: dict[str, Entry] = {
    'impala': Entry(impala.IMPALAConfig, impala.make),
    'grpo': Entry(grpo.GRPOConfig, grpo.make),
    'dr_grpo': Entry(grpo.DrGRPOConfig, grpo.make),
    'dapo': Entry(grpo.DAPOConfig, grpo.make),
    'gspo': Entry(grpo.GSPOConfig, grpo.make),
    'ppo': Entry(ppo.PPOConfig, ppo.make),
    'a2c': Entry(a2c.A2CConfig, a2c.make),
    'reinforce': Entry(reinforce.ReinforceConfig, reinforce.make),
    'scst': Entry(reinforce.SCSTConfig, reinforce.make_scst),
    'remax': Entry(reinforce.ReMaxConfig, reinforce.make_remax),
    'rloo': Entry(rloo.RLOOConfig, rloo.make),
    'ddpo_sf': Entry(ddpo.DDPOSFConfig, ddpo.make),
    'ddpo_is': Entry(ddpo.DDPOISConfig, ddpo.make),
    'dpok': Entry(ddpo.DPOKConfig, ddpo.make),
    'online_dpo': Entry(preference.PreferenceConfig, preference.make_online_dpo),
    'mcts_expert_iteration': Entry(mcts.ExpertIterationConfig, mcts.make),
    'sql': Entry(sql.SQLConfig, sql.make),
    'dqn': Entry(dqn.DQNConfig, dqn.make),
    'sac': Entry(sac.SACConfig, sac.make),
    'ilql': Entry(ilql.ILQLConfig, ilql.make),
}


def _entry(name: str) -> Entry:
  if name not in REGISTRY:
    raise ValueError(f'Unknown algorithm config.algo.name={name!r}; known: '
                     f'{sorted(REGISTRY)}.')
  return REGISTRY[name]


def default_config(name: str) -> ml_collections.ConfigDict:
  """`config.algo` for algorithm `name` with every field at its default."""
  return base.config_dict(_entry(name).config_cls, name)


def make(algo_config: ml_collections.ConfigDict) -> Algorithm:
  """Builds the algorithm that `config.algo` describes."""
  entry = _entry(algo_config.name)
  return entry.make(base.make_config(entry.config_cls, algo_config))
