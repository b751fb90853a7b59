"""Tasks: prompts with their fields in train and held-out splits, and a
default reward; `TASKS` is their registry (`config.task.name`): `arithmetic`,
and `files` (prompts and reward fields from JSONL / JSON / Parquet /
datasets / TFDS files, `tasks/files.py`).

A task of your own is one file: a config dataclass, a `load` function and a
`TaskSpec`, named in a config by import path
(`config.task.name='my_tasks.reverse:SPEC'`); see docs/extending.md.
"""

from typing import Any

from jaxrlgen import schema
from jaxrlgen.registry import Registry
from jaxrlgen.tasks import arithmetic
from jaxrlgen.tasks import files
from jaxrlgen.tasks.base import collate
from jaxrlgen.tasks.base import open_splits
from jaxrlgen.tasks.base import Splits
from jaxrlgen.tasks.base import TaskSpec

TASKS: Registry[TaskSpec] = Registry('task', 'config.task.name', TaskSpec)
TASKS.register('arithmetic', arithmetic.SPEC)
TASKS.register('files', files.SPEC)


def get(name: str) -> TaskSpec:
  """The registered task `name`, or the TaskSpec an import path names."""
  return TASKS.get(name)


def parse(section, path: str = 'config.task') -> tuple[str, Any]:
  """(name, the task's config dataclass) of a `config.task` section: its
  `name` picks the task, its other fields go to the task's schema."""
  fields = dict(section or {})
  name = fields.pop('name', '')
  if not name:
    raise ValueError(f'{path}.name is missing; known tasks: {TASKS.names()}, '
                     'or an import path.')
  return name, schema.parse(get(name).config_cls, fields, path)


__all__ = ['TASKS', 'Splits', 'TaskSpec', 'collate', 'get', 'open_splits',
           'parse']
