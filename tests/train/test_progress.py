"""Tests for jaxrlgen.train.progress."""

import io

from jaxrlgen.train import progress as progress_lib


class _Clock:
  """A settable stand-in for time.monotonic."""

  def __init__(self):
    self.now = 100.0

  def __call__(self):
    return self.now


class _Tty(io.StringIO):

  def isatty(self):
    return True


def test_steps_per_second_excludes_first_update(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_lib.time, 'monotonic', clock)
  p = progress_lib.Progress(100, enabled=False)
  assert p.steps_per_second is None
  clock.now += 50.0  # compilation: must not count.
  p.update(1, {})
  assert p.steps_per_second is None
  clock.now += 2.0
  p.update(11, {})
  assert p.steps_per_second == 5.0
  clock.now += 2.0
  p.update(31, {})
  assert p.steps_per_second == 30 / 4
  p.close()


def test_non_tty_prints_lines_at_interval(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(progress_lib.time, 'monotonic', clock)
  out = io.StringIO()
  p = progress_lib.Progress(100, initial_step=10, enabled=True, file=out,
                            mininterval=30.0, desc='ppo')
  clock.now += 1.0
  p.update(11, {'reward/mean': 0.25, 'loss': 3.0})
  for step in range(12, 20):
    clock.now += 1.0
    p.update(step, {'reward/mean': 0.5})
  clock.now += 30.0
  p.update(50, {'reward/mean': 0.75})
  clock.now += 1.0
  p.update(51, {'reward/mean': 0.875})
  p.close()
  p.close()
  lines = out.getvalue().splitlines()
  # First update, the one 30 s later, and the final state at close.
  assert len(lines) == 3, lines
  assert lines[0].startswith('ppo:') and '11/100' in lines[0]
  assert 'reward/mean=0.25' in lines[0] and 'loss' not in lines[0]
  assert '50/100' in lines[1] and 'steps/s=' in lines[1]
  assert '51/100' in lines[2] and 'reward/mean=0.875' in lines[2]
  assert '\r' not in out.getvalue()


def test_tty_uses_tqdm_bar():
  out = _Tty()
  p = progress_lib.Progress(10, enabled=True, file=out, mininterval=0.0)
  p.update(1, {'reward/mean': 1.0})
  p.update(5, {'reward/mean': 2.0})
  assert p._bar.n == 5  # pylint: disable=protected-access
  p.close()
  text = out.getvalue()
  assert '\r' in text and '5/10' in text and 'reward/mean=2' in text


def test_disabled_writes_nothing():
  out = io.StringIO()
  p = progress_lib.Progress(10, enabled=False, file=out)
  p.update(1, {'reward/mean': 1.0})
  p.update(2, {'reward/mean': 1.0})
  p.close()
  assert not out.getvalue()
