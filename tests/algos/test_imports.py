"""The layers see each other only through narrow interfaces: algos/ sees
models and environments only through the env it is given, and envs/ sees a
model only through the policy it holds."""

import ast
import pathlib

import pytest

import jaxrlgen

# package -> packages it must not import.
FORBIDDEN = {
    'algos': ('jaxrlgen.models', 'jaxrlgen.envs', 'jaxrlgen.policies'),
    'envs': ('jaxrlgen.models',),
}


def _imported_modules(tree: ast.AST):
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module
      # `from jaxrlgen import models` names the package as an attribute.
      yield from (f'{node.module}.{alias.name}' for alias in node.names)


@pytest.mark.parametrize('package', sorted(FORBIDDEN))
def test_layer_imports(package):
  root = pathlib.Path(jaxrlgen.__file__).parent / package
  files = sorted(root.rglob('*.py'))
  assert len(files) >= 5, files
  forbidden = FORBIDDEN[package]
  offending = sorted(
      f'{path.name}: {name}' for path in files
      for name in _imported_modules(ast.parse(path.read_text()))
      if any(name == f or name.startswith(f + '.') for f in forbidden))
  assert not offending, offending
