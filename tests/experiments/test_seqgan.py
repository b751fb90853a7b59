"""The SeqGAN experiment end to end on its smoke config: outputs, learning,
resume from a mid-phase checkpoint, and config errors before any compute."""

import re
import shutil

import numpy as np
import pytest

from experiments.seqgan import config as seqgan_config
from experiments.seqgan import recipe as seqgan
from jaxrlgen import recipes
from jaxrlgen import schema
from jaxrlgen.models import lstm
from jaxrlgen.train import writers

TIMING_KEYS = ('step_time', 'steps_per_second')


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('seqgan') / 'run'
  return workdir, recipes.run(seqgan_config.get_config('smoke'), str(workdir))


def strip_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS}
          for r in records]


@pytest.mark.slow  # The whole study, every phase (~70 s on 2 cores).
def test_run_writes_outputs_and_learns(finished):
  workdir, summary = finished
  for name in ('summary.json', 'nll_oracle.png'):
    assert (workdir / name).exists(), name
  for phase in seqgan.PHASES:
    for name in ('metrics.jsonl', 'training.png', 'checkpoints'):
      assert (workdir / phase / name).exists(), (phase, name)
    assert list((workdir / phase / 'tensorboard').iterdir())
  assert writers.read_summary(str(workdir))['nll_oracle/seqgan'] == \
      pytest.approx(summary['nll_oracle/seqgan'])
  for method in ('random_init', 'pretrained', 'oracle_data', *seqgan.METHODS):
    assert np.isfinite(summary[f'nll_oracle/{method}']), method
  # MLE pretraining moves the generator well towards the oracle.
  assert summary['nll_oracle/pretrained'] < \
      summary['nll_oracle/random_init'] - 0.3
  assert summary['nll_oracle/oracle_data'] < summary['nll_oracle/pretrained']
  nll = [summary[f'nll_oracle/{m}'] for m in ('seqgan', 'pg_bleu', 'mle')]
  assert summary['ordering_reproduced'] == (nll[0] < nll[1] < nll[2])
  records = writers.read_metrics(str(workdir / 'seqgan'))
  assert [r['step'] for r in records if 'reward/mean' in r] == [1, 2, 3, 4]
  assert [r['step'] for r in records if 'nll_oracle' in r] == [0, 2, 4]
  last = [r for r in records if 'reward/mean' in r][-1]
  for key in ('policy_loss', 'entropy', 'grad_norm', 'reward/final',
              'discriminator/loss', 'discriminator/accuracy'):
    assert key in last, key
  assert 0.0 < last['reward/mean'] < 1.0
  # The branches start where pretraining ended (same evaluation samples).
  pretrain = writers.read_metrics(str(workdir / 'pretrain'))
  for method in seqgan.METHODS:
    first = writers.read_metrics(str(workdir / method))[0]
    assert first['step'] == 0
    assert first['nll_oracle'] == pytest.approx(pretrain[-1]['nll_oracle'])


@pytest.mark.slow  # The whole study, every phase (~70 s on 2 cores).
def test_resumed_run_equals_uninterrupted(finished, tmp_path):
  workdir, summary = finished
  cut = tmp_path / 'cut'
  shutil.copytree(workdir, cut)
  # As if the run had died after SeqGAN's epoch 2: its last checkpoint is 2.
  shutil.rmtree(cut / 'seqgan' / 'checkpoints' / '4')
  (cut / 'summary.json').unlink()
  resumed = recipes.run(seqgan_config.get_config('smoke'), str(cut))
  for phase in seqgan.PHASES:
    assert strip_timing(writers.read_metrics(str(cut / phase))) == \
        strip_timing(writers.read_metrics(str(workdir / phase))), phase
  for key, value in summary.items():
    if key.startswith('nll_oracle'):
      assert resumed[key] == pytest.approx(value, rel=1e-6), key


@pytest.mark.parametrize('field, value', [
    # A field of one section, checked by its schema.
    ('adversarial.batch_size', 0),
    ('adversarial.num_rollouts', 3),  # Not a multiple of rollouts_per_scan.
    ('discriminator.score_dtype', 'half'),
    ('eval.every', -1),
    ('length', 1),
    # Across sections.
    ('adversarial.num_negatives', 10_000),  # More than the real sequences.
    ('pg_bleu.max_order', 7),  # Longer than a sequence.
    ('pretrain.batch_size', 512),  # More than the real sequences.
])
def test_bad_config_fails_before_compute(tmp_path, monkeypatch, field, value):
  monkeypatch.setattr(lstm, 'init_params',
                      lambda *a: pytest.fail('computed before validating'))
  config = seqgan_config.get_config('smoke')
  config.adversarial.rollouts_per_scan = 2
  config.update_from_flattened_dict({field: value})
  with pytest.raises(ValueError, match=rf'^config\.{re.escape(field)}\b'):
    recipes.run(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_unknown_field_lists_the_known_ones():
  config = seqgan_config.get_config('smoke')
  config.adversarial.batch_sise = 16
  with pytest.raises(ValueError, match=r'config\.adversarial\.batch_sise.*'
                     r'batch_size'):
    seqgan.parse_config(config)


def test_config_file_is_the_schema_defaults():
  assert seqgan.parse_config(seqgan_config.get_config()) == \
      seqgan.SeqGANConfig()
  assert schema.to_config(seqgan.parse_config(
      seqgan_config.get_config('smoke'))) == seqgan_config.get_config('smoke')


def test_unknown_variant_lists_the_known_ones():
  with pytest.raises(ValueError, match=r"'tiny'.*\['smoke'\]"):
    seqgan_config.get_config('smoke,tiny')


def test_discriminator_filters_must_fit(tmp_path, monkeypatch):
  monkeypatch.setattr(lstm, 'init_params',
                      lambda *a: pytest.fail('computed before validating'))
  config = seqgan_config.get_config('smoke')
  config.discriminator.filter_widths = (1, 3, 20)
  with pytest.raises(ValueError, match='filter_widths'):
    recipes.run(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'run').exists()


def test_training_seconds_counts_every_step_of_a_log_interval():
  # Logged every 5 steps (mean step time of the interval), an evaluation
  # record in between, and a last, shorter interval of 2 steps.
  records = [{'step': 0, 'nll': 9.0}, {'step': 5, 'step_time': 0.1},
             {'step': 5, 'nll': 8.0}, {'step': 10, 'step_time': 0.2},
             {'step': 12, 'step_time': 0.5}]
  assert seqgan.training_seconds(records) == pytest.approx(
      5 * 0.1 + 5 * 0.2 + 2 * 0.5)
