"""docs/extending.md runs as written: its `# File:` blocks are written out
and its other Python blocks run in order, in a fresh directory."""

import pytest
import os
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GUIDE = os.path.join(REPO, 'docs', 'extending.md')


def blocks() -> list[str]:
  with open(GUIDE) as f:
    return re.findall(r'```python\n(.*?)```', f.read(), re.S)


@pytest.mark.slow
def test_guide_runs(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  monkeypatch.syspath_prepend(str(tmp_path))
  namespace = {}
  ran = 0
  for block in blocks():
    first = block.splitlines()[0]
    match = re.fullmatch(r'# File: (\S+)', first)
    if match:
      path = tmp_path / match.group(1)
      path.parent.mkdir(parents=True, exist_ok=True)
      (path.parent / '__init__.py').touch()
      path.write_text(block)
      continue
    exec(compile(block, GUIDE, 'exec'), namespace)  # pylint: disable=exec-used
    ran += 1
  assert ran >= 5
  # What the guide promised it made.
  for run in ('reverse', 'reverse_partial'):
    for name in ('metrics.jsonl', 'summary.json', 'training.png'):
      assert (tmp_path / 'runs' / run / name).exists(), (run, name)
  for module in [m for m in sys.modules if m.startswith('my_ext')]:
    monkeypatch.delitem(sys.modules, module)
