"""Tests for jaxrlgen.train.plots."""

import math

from jaxrlgen.train import plots

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'


def _assert_png(path):
  data = path.read_bytes()
  assert data[:8] == _PNG_SIGNATURE
  assert len(data) > 1000


def test_writes_png_with_sparse_and_missing_keys(tmp_path):
  records = [
      {'step': 0, 'loss': 1.0},
      {'step': 1, 'loss': 0.5, 'reward/mean': 0.1},
      {'step': 2, 'loss': math.nan, 'reward/mean': 0.3},
      {'step': 3, 'loss': 0.2},
  ]
  path = tmp_path / 'sub' / 'curves.png'
  out = plots.plot_metrics(records, ['loss', 'reward/mean', 'absent'], path,
                           title='run')
  assert out == path
  _assert_png(path)


def test_no_data_still_writes_png(tmp_path):
  path = tmp_path / 'empty.png'
  plots.plot_metrics([{'step': 0, 'other': 1.0}], ['loss'], path)
  _assert_png(path)
  plots.plot_metrics([], [], tmp_path / 'none.png')
  _assert_png(tmp_path / 'none.png')


def test_custom_x_key(tmp_path):
  records = [{'epoch': e, 'acc': e / 10} for e in range(5)]
  path = plots.plot_metrics(records, ['acc'], tmp_path / 'acc.png',
                            x_key='epoch')
  _assert_png(path)
