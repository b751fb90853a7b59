"""algos/ sees models and environments only through the env it is given."""

import ast
import pathlib

import jaxrlgen.algos

FORBIDDEN = ('jaxrlgen.models', 'jaxrlgen.envs')


def _imported_modules(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      # `from jaxrlgen import models` names the package as an attribute.
      yield from (f'{node.module}.{alias.name}' for alias in node.names)


def test_algos_import_neither_models_nor_envs():
  root = pathlib.Path(jaxrlgen.algos.__file__).parent
  files = sorted(root.glob('*.py'))
  assert len(files) > 10, files
  offending = sorted(
      f'{path.name}: {name}' for path in files
      for name in _imported_modules(ast.parse(path.read_text()))
      if any(name == f or name.startswith(f + '.') for f in FORBIDDEN))
  assert not offending, offending
