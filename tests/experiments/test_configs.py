"""Every experiment config loads through absl flags, has a smoke variant,
and rejects a field it does not have (a typo in `--config.section.field=`
fails at launch) and a variant it does not know."""

import glob
import os
import sys
from unittest import mock

from absl import flags
import ml_collections
from ml_collections import config_flags
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXPERIMENTS = sorted(
    os.path.basename(os.path.dirname(p))
    for p in glob.glob(os.path.join(REPO, 'experiments', '*', 'config.py')))


def _load(name, variant='', *overrides):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True)
  path = os.path.join(REPO, 'experiments', name, 'config.py')
  argv = ['main', f'--config={path}' + (f':{variant}' if variant else ''),
          *overrides]
  # The config flag reads its overrides from sys.argv, as under app.run.
  with mock.patch.object(sys, 'argv', argv):
    flag_values(argv)
  return flag_values.config


def test_every_experiment_is_found():
  assert {'arithmetic', 'seqgan', 'ddpo_digits', 'rlhf_gold'} <= set(
      EXPERIMENTS)


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_default_and_smoke_load(name):
  assert _load(name).recipe
  assert _load(name, 'smoke').recipe


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_unknown_config_field_is_rejected(name):
  config = _load(name)
  sections = [k for k, v in config.items()
              if isinstance(v, ml_collections.ConfigDict)]
  assert sections, f'{name} has no sections'
  # Overrides reach the config (so the failure below is the field's)...
  assert _load(name, '', '--config.seed=7').seed == 7
  # ... and a field the config does not have fails at launch.
  with pytest.raises(Exception, match='no_such_field'):
    _load(name, '', f'--config.{sections[0]}.no_such_field=3')


@pytest.mark.parametrize('name', EXPERIMENTS)
def test_unknown_variant_is_rejected(name):
  with pytest.raises(Exception, match='no_such_variant'):
    _load(name, 'no_such_variant')
