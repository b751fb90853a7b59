"""The one registry helper: names, import paths and their errors."""

import pytest

from jaxrlgen import registry


def test_names_and_import_paths(tmp_path, monkeypatch):
  things = registry.Registry('widget', 'config.widget')
  things.register('one', 1)
  assert things.get('one') == 1 and 'one' in things and things.names() == ['one']
  with pytest.raises(ValueError, match='registered already'):
    things.register('one', 2)
  with pytest.raises(ValueError, match=r"config\.widget='two'; known: \['one'\]"):
    things.get('two')
  # A module on the path, and a file by its path.
  assert things.get('jaxrlgen.registry:Registry') is registry.Registry
  (tmp_path / 'mine.py').write_text('VALUE = 42\n')
  monkeypatch.chdir(tmp_path)
  assert things.get('mine.py:VALUE') == 42


@pytest.mark.parametrize('path, message', [
    ('nowhere.py:f', "no file 'nowhere.py'"),
    ('no_such_module_xyz:f', "module 'no_such_module_xyz' does not import"),
    ('jaxrlgen.registry:missing', "has no attribute 'missing'"),
    ('jaxrlgen.registry:', 'is not an import path'),
])
def test_import_path_errors_name_the_field(path, message):
  with pytest.raises(ValueError, match='config.reward.terms') as e:
    registry.load(path, 'config.reward.terms')
  assert message in str(e.value)


def test_file_that_raises_on_import(tmp_path):
  (tmp_path / 'broken.py').write_text('raise RuntimeError("boom")\n')
  with pytest.raises(ValueError, match='RuntimeError: boom'):
    registry.load(f'{tmp_path}/broken.py:f', 'config.reward.fn')
