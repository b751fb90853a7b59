"""Tests for jaxrlgen.train.writers."""

import json
import math

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.train import writers


def _lines(workdir):
  return [json.loads(l)
          for l in (workdir / writers.METRICS_FILE).read_text().splitlines()]


def test_jsonl_has_step_and_python_floats(tmp_path):
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    w.write(1, {'loss': 0.5, 'reward/mean': np.float32(0.25),
                'kl': jnp.array(0.125), 'count': np.int32(3),
                'frac': jnp.ones((1,)) * 0.75})
    w.write(2, {'loss': 0.25})
  assert _lines(tmp_path) == [
      {'step': 1, 'loss': 0.5, 'reward/mean': 0.25, 'kl': 0.125,
       'count': 3.0, 'frac': 0.75},
      {'step': 2, 'loss': 0.25},
  ]
  assert writers.read_metrics(tmp_path) == _lines(tmp_path)


def test_tensorboard_event_file_written(tmp_path):
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    w.write(0, {'loss': 1.0})
  tb_dir = tmp_path / writers.TENSORBOARD_DIR
  events = list(tb_dir.glob('events.out.tfevents.*'))
  assert len(events) == 1
  assert events[0].stat().st_size > 0


def test_nan_and_inf_written_as_null(tmp_path):
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    w.write(3, {'a': float('nan'), 'b': np.float32(np.inf),
                'c': jnp.array(-jnp.inf), 'd': 1.0})
  text = (tmp_path / writers.METRICS_FILE).read_text()
  assert 'NaN' not in text and 'Infinity' not in text
  assert json.loads(text) == {'step': 3, 'a': None, 'b': None, 'c': None,
                              'd': 1.0}
  [record] = writers.read_metrics(tmp_path)
  assert record['step'] == 3 and record['d'] == 1.0
  assert all(math.isnan(record[k]) for k in 'abc')


def test_resume_truncates_later_steps(tmp_path):
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    for step in range(1, 6):
      w.write(step, {'loss': float(step)})
  # A line cut short by a crash must not break the resume.
  with (tmp_path / writers.METRICS_FILE).open('a') as f:
    f.write('{"step": 6, "lo')
  with writers.MetricWriter(tmp_path, resume_step=3, enabled=True) as w:
    assert [r['step'] for r in writers.read_metrics(tmp_path)] == [1, 2, 3]
    w.write(4, {'loss': 40.0})
  records = writers.read_metrics(tmp_path)
  assert [r['step'] for r in records] == [1, 2, 3, 4]
  assert records[-1]['loss'] == 40.0
  assert not [p for p in tmp_path.iterdir() if '.tmp.' in p.name]


def test_resume_without_file_and_no_resume_appends(tmp_path):
  with writers.MetricWriter(tmp_path, resume_step=10, enabled=True) as w:
    w.write(11, {'x': 1.0})
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    w.write(12, {'x': 2.0})
  assert [r['step'] for r in writers.read_metrics(tmp_path)] == [11, 12]


def test_disabled_writer_writes_nothing(tmp_path):
  workdir = tmp_path / 'run'
  w = writers.MetricWriter(workdir, resume_step=0, enabled=False)
  w.write(1, {'loss': 1.0})
  w.flush()
  w.close()
  assert not workdir.exists()
  assert writers.read_metrics(workdir) == []


def test_rejects_non_scalar_and_step_key(tmp_path):
  with writers.MetricWriter(tmp_path, enabled=True) as w:
    with pytest.raises(ValueError, match='scalar'):
      w.write(1, {'v': np.zeros(3)})
    with pytest.raises(ValueError, match='step'):
      w.write(1, {'step': 1.0})


def test_summary_roundtrip(tmp_path):
  summary = {
      'final': {'reward/mean': np.float32(0.5), 'steps': np.int64(100)},
      'before': {'reward/mean': jnp.array(0.25)},
      'curve': np.array([1.0, np.nan]),
      'name': 'ppo',
      'ok': np.bool_(True),
      'diverged': float('inf'),
  }
  writers.write_summary(tmp_path, summary)
  text = (tmp_path / writers.SUMMARY_FILE).read_text()
  assert text.index('"before"') < text.index('"curve"') < text.index('"final"')
  assert '\n  "' in text  # Pretty-printed.
  loaded = writers.read_summary(tmp_path)
  assert loaded == {
      'final': {'reward/mean': 0.5, 'steps': 100},
      'before': {'reward/mean': 0.25},
      'curve': [1.0, None],
      'name': 'ppo',
      'ok': True,
      'diverged': None,
  }
  assert isinstance(loaded['final']['steps'], int)
  writers.write_summary(tmp_path, {'a': 1})
  assert writers.read_summary(tmp_path) == {'a': 1}
  assert [p.name for p in tmp_path.iterdir()] == [writers.SUMMARY_FILE]


def test_summarize_before_after_and_final_metrics():
  records = [{'step': 0, 'eval/accuracy': 0.2},
             {'step': 5, 'reward/mean': 0.1, 'loss': 2.0},
             {'step': 10, 'reward/mean': 0.4, 'loss': 1.0},
             {'step': 10, 'eval/accuracy': 0.5}]
  summary = writers.summarize(records, 12.5, ('accuracy', 'missing'))
  assert summary == {
      'wall_time_s': 12.5, 'eval/accuracy_before': 0.2,
      'eval/accuracy_after': 0.5, 'eval/accuracy_gain': pytest.approx(0.3),
      'final_step': 10, 'final/reward/mean': 0.4, 'final/loss': 1.0}
