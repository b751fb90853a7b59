"""RL algorithms over core's Rollout, and their registry.

`ALGORITHMS` is the single source of truth of algorithm names: each maps to
an `Entry`, its hyperparameter dataclass (the schema of `config.algo`) and a
constructor. `config.algo.name` may also be the import path of an `Entry`
of one's own (`'my_package.my_algo:ENTRY'`; see docs/extending.md).
"""

import dataclasses
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
from jaxrlgen.registry import Registry


class Entry(NamedTuple):
  """An algorithm: its hyperparameters' schema and its constructor."""

  config_cls: type  # Frozen dataclass: the schema of `config.algo`.
  make: Callable[..., Algorithm]  # config_cls instance -> Algorithm.


ALGORITHMS: Registry[Entry] = Registry('algorithm', 'config.algo.name', Entry)
ALGORITHMS.register('impala', Entry(impala.IMPALAConfig, impala.make))
ALGORITHMS.register('grpo', Entry(grpo.GRPOConfig, grpo.make))
ALGORITHMS.register('dr_grpo', Entry(grpo.DrGRPOConfig, grpo.make))
ALGORITHMS.register('dapo', Entry(grpo.DAPOConfig, grpo.make))
ALGORITHMS.register('gspo', Entry(grpo.GSPOConfig, grpo.make))
ALGORITHMS.register('ppo', Entry(ppo.PPOConfig, ppo.make))
ALGORITHMS.register('a2c', Entry(a2c.A2CConfig, a2c.make))
ALGORITHMS.register('reinforce', Entry(reinforce.ReinforceConfig,
                                        reinforce.make))
ALGORITHMS.register('scst', Entry(reinforce.SCSTConfig, reinforce.make_scst))
ALGORITHMS.register('remax', Entry(reinforce.ReMaxConfig, reinforce.make_remax))
ALGORITHMS.register('rloo', Entry(rloo.RLOOConfig, rloo.make))
ALGORITHMS.register('ddpo_sf', Entry(ddpo.DDPOSFConfig, ddpo.make))
ALGORITHMS.register('ddpo_is', Entry(ddpo.DDPOISConfig, ddpo.make))
ALGORITHMS.register('dpok', Entry(ddpo.DPOKConfig, ddpo.make))
ALGORITHMS.register('online_dpo', Entry(preference.PreferenceConfig,
                                        preference.make_online_dpo))
ALGORITHMS.register('mcts_expert_iteration', Entry(mcts.ExpertIterationConfig,
                                        mcts.make))
ALGORITHMS.register('sql', Entry(sql.SQLConfig, sql.make))
ALGORITHMS.register('dqn', Entry(dqn.DQNConfig, dqn.make))
ALGORITHMS.register('sac', Entry(sac.SACConfig, sac.make))
ALGORITHMS.register('ilql', Entry(ilql.ILQLConfig, ilql.make))


def default_config(name: str) -> ml_collections.ConfigDict:
  """`config.algo` for algorithm `name` with every field at its default."""
  return base.config_dict(ALGORITHMS.get(name).config_cls, name)


def any_config(name: str = 'grpo') -> ml_collections.ConfigDict:
  """`config.algo` for a config that trains any algorithm: `name`, and every
  hyperparameter of every registered algorithm as an unset placeholder.

  A field left unset (None) takes the named algorithm's default, so
  `--config.algo.name=ppo --config.algo.clip_eps=0.1` works from the command
  line; setting a field that the named algorithm does not have fails in
  `make`, naming it.
  """
  fields: dict[str, type] = {}
  for algo_name in ALGORITHMS.names():
    for field in dataclasses.fields(ALGORITHMS.get(algo_name).config_cls):
      kind = type(field.default)
      if kind not in (bool, int, float, str):
        continue  # Not settable from a flag as a scalar.
      # An int field of one algorithm and a float one of another: float.
      if {kind, fields.get(field.name, kind)} == {int, float}:
        kind = float
      fields[field.name] = kind
  ALGORITHMS.get(name)  # Fails on an unknown name.
  return ml_collections.ConfigDict(
      {'name': name, **{k: ml_collections.config_dict.placeholder(kind)
                        for k, kind in sorted(fields.items())}})


def make(algo_config: ml_collections.ConfigDict) -> Algorithm:
  """Builds the algorithm that `config.algo` describes."""
  entry = ALGORITHMS.get(algo_config.name)
  return entry.make(base.make_config(entry.config_cls, algo_config))
