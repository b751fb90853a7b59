"""The README's commands and library example, and the docs' links and
config paths, stay true."""

import glob
import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARKDOWN = sorted(
    [os.path.join(REPO, 'README.md')]
    + glob.glob(os.path.join(REPO, 'docs', '*.md'))
    + glob.glob(os.path.join(REPO, 'experiments', '*', 'README.md')))


def read(path: str) -> str:
  with open(path) as f:
    return f.read()


def code_blocks(lang: str, path: str = os.path.join(REPO, 'README.md')
                ) -> list[str]:
  return re.findall(rf'```{lang}\n(.*?)```', read(path), re.S)


def relative(path: str) -> str:
  return os.path.relpath(path, REPO)


def test_readme_is_short():
  assert len(read(os.path.join(REPO, 'README.md')).splitlines()) <= 200


def test_readme_starts_with_demo_and_test_commands():
  demo, tests = code_blocks('bash')[:2]
  assert 'pip install -e .' in demo
  assert ('python -m experiments.main '
          '--config=experiments/arithmetic/config.py:grpo ') in demo
  assert 'pip install -e ".[test]"' in tests and 'pytest' in tests
  assert tests.strip() in read(os.path.join(REPO, '.ci', 'run')), (
      '.ci/run must run the README test command')


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


@pytest.mark.parametrize('path', MARKDOWN, ids=relative)
def test_python_blocks_compile(path):
  for block in code_blocks('python', path):
    compile(block, path, 'exec')


def _anchors(path: str) -> set[str]:
  """GitHub's anchors of a Markdown file's headings."""
  anchors = set()
  text = re.sub(r'```.*?```', '', read(path), flags=re.S)
  for title in re.findall(r'^#+ (.*)$', text, re.M):
    slug = re.sub(r'[^\w\- ]', '', title.strip().lower()).replace(' ', '-')
    anchors.add(slug)
  return anchors


@pytest.mark.parametrize('path', MARKDOWN, ids=relative)
def test_links_resolve(path):
  text = re.sub(r'```.*?```', '', read(path), flags=re.S)
  for target in re.findall(r'\]\(([^)\s]+)\)', text):
    if re.match(r'[a-z]+:', target):  # http:, https:, mailto:
      continue
    file, _, anchor = target.partition('#')
    linked = (os.path.normpath(os.path.join(os.path.dirname(path), file))
              if file else path)
    assert os.path.exists(linked), f'{relative(path)}: no {target}'
    if anchor:
      assert anchor in _anchors(linked), f'{relative(path)}: no #{anchor}'


def _configs() -> list[tuple[str, str]]:
  """(config file, variant) of every --config= in the Markdown files."""
  found = set()
  for path in MARKDOWN:
    for file, _, variant in re.findall(
        r'--config=(experiments/[\w/]+\.py)(:([\w,]+))?', read(path)):
      found.add((file, variant))
  return sorted(found)


@pytest.mark.parametrize('file,variant', _configs())
def test_documented_configs_load(file, variant):
  assert os.path.isfile(os.path.join(REPO, file)), file
  spec = importlib.util.spec_from_file_location(
      'documented_config', os.path.join(REPO, file))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config(variant) if variant else module.get_config()
  assert config.recipe
