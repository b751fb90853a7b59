"""Tests for jaxrlgen.train.workdir."""

import os

import pytest

from jaxrlgen.train import workdir as workdir_lib


def test_creates_nested_directory_and_leaves_no_probe(tmp_path):
  path = tmp_path / 'a' / 'b'
  result = workdir_lib.prepare_workdir(str(path))
  assert os.fspath(result) == str(path)
  assert path.is_dir()
  assert not list(path.iterdir())


def test_existing_directory_is_fine(tmp_path):
  (tmp_path / 'keep.txt').write_text('x')
  workdir_lib.prepare_workdir(tmp_path)
  assert [p.name for p in tmp_path.iterdir()] == ['keep.txt']


def test_relative_path_is_made_absolute(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  result = workdir_lib.prepare_workdir('run')
  assert os.path.isabs(os.fspath(result))
  assert (tmp_path / 'run').is_dir()


def test_path_under_a_regular_file_raises(tmp_path):
  # chmod does not stop root from writing, so use a path that cannot exist.
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  bad = blocker / 'run'
  with pytest.raises(ValueError) as info:
    workdir_lib.prepare_workdir(str(bad))
  message = str(info.value)
  assert '--workdir' in message
  assert str(bad) in message
  assert 'directory' in message.lower()


def test_empty_path_raises():
  with pytest.raises(ValueError, match='--workdir'):
    workdir_lib.prepare_workdir('')
