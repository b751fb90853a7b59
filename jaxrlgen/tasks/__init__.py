"""Tasks: prompts with their fields in train and held-out splits, and a
default reward; `TASKS` is their registry (`config.task.name`).

A task of your own is one file: a config dataclass, a `load` function and a
`TaskSpec`, named in a config by import path
(`config.task.name='my_tasks.reverse:SPEC'`); see docs/extending.md.
"""

from jaxrlgen.registry import Registry
from jaxrlgen.tasks import arithmetic
from jaxrlgen.tasks.base import collate
from jaxrlgen.tasks.base import Splits
from jaxrlgen.tasks.base import TaskSpec

TASKS: Registry[TaskSpec] = Registry('task', 'config.task.name')
TASKS.register('arithmetic', arithmetic.SPEC)


def get(name: str) -> TaskSpec:
  """The registered task `name`, or the TaskSpec an import path names."""
  spec = TASKS.get(name)
  if not isinstance(spec, TaskSpec):
    raise ValueError(f'config.task.name={name!r} is a {type(spec).__name__}, '
                     'not a jaxrlgen.tasks.TaskSpec.')
  return spec


__all__ = ['TASKS', 'Splits', 'TaskSpec', 'collate', 'get']
