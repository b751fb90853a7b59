"""Every experiment config loads through absl flags and rejects a field it
does not have (a typo in `--config.section.field=` fails at launch)."""

import glob
import os

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
CONFIGS = sorted(
    os.path.basename(p) for p in glob.glob(
        os.path.join(REPO, 'experiments', 'configs', '*.py'))
    if not p.endswith('__init__.py'))


def _load(name, *overrides):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True)
  path = os.path.join(REPO, 'experiments', 'configs', name)
  flag_values(['main', f'--config={path}', *overrides])
  return flag_values.config


@pytest.mark.parametrize('name', CONFIGS)
def test_unknown_config_field_is_rejected(name):
  config = _load(name)
  sections = [k for k, v in config.items()
              if isinstance(v, ml_collections.ConfigDict)]
  assert sections, f'{name} has no sections'
  with pytest.raises(Exception, match='no_such_field'):
    _load(name, f'--config.{sections[0]}.no_such_field=3')
