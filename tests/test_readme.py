"""The README's commands and library example stay true."""

import os
import re

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def readme() -> str:
  with open(os.path.join(REPO, 'README.md')) as f:
    return f.read()


def code_blocks(lang: str) -> list[str]:
  return re.findall(rf'```{lang}\n(.*?)```', readme(), re.S)


def test_readme_starts_with_demo_and_test_commands():
  demo, tests = code_blocks('bash')[:2]
  assert 'experiments.main' in demo and 'arithmetic_grpo.py' in demo
  assert 'pytest' in tests
  with open(os.path.join(REPO, '.ci', 'run')) as f:
    assert tests.strip() in f.read(), '.ci/run must run the README test command'


def test_library_example_runs_one_grpo_step():
  # The first Python block, under "Library use"; later ones are fragments.
  example = code_blocks('python')[0]
  assert 'rl_step' in example
  assert len(example.strip().splitlines()) < 20
  namespace = {}
  exec(compile(example, 'README.md', 'exec'), namespace)  # pylint: disable=exec-used
  metrics = namespace['metrics']
  assert int(namespace['state'].step) == 1
  for key in ('reward/mean', 'policy_loss', 'kl', 'entropy', 'grad_norm'):
    assert key in metrics
