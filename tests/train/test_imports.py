"""The training machinery stays light: importing the step functions loads no
experiment's dependencies, and the library never imports an experiment."""

import ast
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))


def test_train_step_loads_no_experiment_dependencies():
  heavy = ('mctx', 'tensorflow_datasets', 'matplotlib', 'torch')
  code = ('import sys, jaxrlgen.train.step; '
          f'print(sorted(m for m in {heavy!r} if m in sys.modules))')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, check=True,
                       capture_output=True, text=True).stdout
  assert out.strip() == '[]', out


def test_library_never_imports_experiments():
  for root, _, files in os.walk(os.path.join(REPO, 'jaxrlgen')):
    for name in files:
      if not name.endswith('.py'):
        continue
      path = os.path.join(root, name)
      with open(path) as f:
        tree = ast.parse(f.read())
      for node in ast.walk(tree):
        modules = ([a.name for a in node.names] if isinstance(node, ast.Import)
                   else [node.module or ''] if isinstance(node, ast.ImportFrom)
                   else [])
        for module in modules:
          assert not module.startswith('experiments'), (path, module)
