"""Environments: generation as an MDP."""

from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
