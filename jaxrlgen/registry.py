"""One registry helper for every kind of named thing: algorithms, rewards,
tasks, recipes.

A config names a thing either by its registered name (`'grpo'`) or by an
import path, so a user's own code plugs in without editing the library:

  'my_package.my_module:my_function'   a module on the Python path
  'path/to/file.py:my_function'        a file, loaded by its path

An unknown name fails loudly, naming the config field and the known names.
"""

import importlib
import importlib.util
import os
import sys
from typing import Any, Generic, Iterator, TypeVar

T = TypeVar('T')


def is_import_path(name: str) -> bool:
  """Whether `name` is `module:attr` or `file.py:attr` rather than a name."""
  return ':' in name


def load(path: str, field: str = 'name') -> Any:
  """The object an import path names (`module:attr` or `file.py:attr`).

  Args:
    path: the import path.
    field: the config field that holds it, for error messages.
  Raises:
    ValueError: malformed path, missing file or module, or missing attribute.
  """
  target, sep, attr = path.rpartition(':')
  if not sep or not target or not attr.isidentifier():
    raise ValueError(f'{field}={path!r} is not an import path; write '
                     "'package.module:attr' or 'path/to/file.py:attr'.")
  if target.endswith('.py'):
    if not os.path.isfile(target):
      raise ValueError(f'{field}={path!r}: no file {target!r} (relative paths '
                       f'start at {os.getcwd()!r}).')
    name = '_jaxrlgen_user_' + os.path.splitext(
        os.path.basename(target))[0] + f'_{abs(hash(os.path.abspath(target)))}'
    module = sys.modules.get(name)
    if module is None:
      spec = importlib.util.spec_from_file_location(name, target)
      module = importlib.util.module_from_spec(spec)
      sys.modules[name] = module
      try:
        spec.loader.exec_module(module)
      except Exception as e:
        del sys.modules[name]
        raise ValueError(f'{field}={path!r}: importing {target!r} raised '
                         f'{type(e).__name__}: {e}') from e
  else:
    try:
      module = importlib.import_module(target)
    except Exception as e:  # ImportError, or an error inside the module.
      raise ValueError(f'{field}={path!r}: module {target!r} does not import '
                       f'({type(e).__name__}: {e}).') from e
  if not hasattr(module, attr):
    raise ValueError(f'{field}={path!r}: {target!r} has no attribute '
                     f'{attr!r}.')
  return getattr(module, attr)


class Registry(Generic[T]):
  """Names of one kind of thing, and what each stands for.

  Attributes:
    kind: what is registered ('algorithm', 'reward', ...), for messages.
    field: the config field that names one ('config.algo.name'), for messages.
    cls: what an entry must be (checked for what an import path names);
      None: anything.
  """

  def __init__(self, kind: str, field: str, cls: type | None = None):
    self.kind = kind
    self.field = field
    self.cls = cls
    self._entries: dict[str, T] = {}

  def register(self, name: str, value: T) -> T:
    """Adds `name`; a name registered twice is an error."""
    if is_import_path(name):
      raise ValueError(f'A {self.kind} name may not contain ":": {name!r}.')
    if name in self._entries:
      raise ValueError(f'The {self.kind} {name!r} is registered already.')
    self._entries[name] = value
    return value

  def get(self, name: str) -> T:
    """The entry of a registered name, or the object an import path names."""
    if is_import_path(name):
      value = load(name, self.field)
      if self.cls is not None and not isinstance(value, self.cls):
        raise ValueError(f'{self.field}={name!r} is a {type(value).__name__}, '
                         f'not a {self.cls.__module__}.{self.cls.__name__}.')
      return value
    if name not in self._entries:
      raise ValueError(f'Unknown {self.kind} {self.field}={name!r}; known: '
                       f'{sorted(self._entries)}, or an import path '
                       "'module:attr' / 'file.py:attr'.")
    return self._entries[name]

  def names(self) -> list[str]:
    return sorted(self._entries)

  def __contains__(self, name: str) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(self.names())

  def __len__(self) -> int:
    return len(self._entries)
