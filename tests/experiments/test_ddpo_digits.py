"""The digits DDPO experiment end to end on a shrunk config: outputs, resume,
the host (compressibility) reward in the step, and the errors bad input gets
before any compute."""


import numpy as np
import pytest

from experiments.ddpo_digits import config as ddpo_digits
from jaxrlgen import algos
from jaxrlgen import recipes
from experiments.ddpo_digits import recipe as ddpo
from jaxrlgen.train import writers



def tiny_config(data_dir, variant='png_compressibility,dpok'):
  config = ddpo_digits.get_config(variant)
  config.data.data_dir = str(data_dir)
  config.classifier.update(features=(8,), steps=4, batch_size=16, log_every=2)
  # Native convolutions compile faster; at this size they also run fast.
  config.model.update(features=(8,), embed_dim=16, num_groups=4, im2col=False)
  config.pretrain.update(steps=4, batch_size=16, log_every=2)
  config.env.update(num_timesteps=100, num_steps=4)
  config.rl.update(batch_size=8, group_size=2)
  config.algo.update(num_minibatches=2, min_count=2, buffer_size=4)
  config.eval.update(every=2, samples_per_class=2, batch_size=20,
                     grid_columns=2)
  config.update(total_steps=3, log_every=1, checkpoint_every=2)
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


def test_run_writes_outputs_and_resumes(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  summary = recipes.run(tiny_config(data_dir), str(workdir))

  for name in ('metrics.jsonl', 'summary.json', 'training.png',
               'samples_before.png', 'samples_after.png',
               'classifier/classifier.png', 'pretrain/pretrain.png',
               'pretrain/metrics.jsonl', 'checkpoints/3'):
    assert (workdir / name).exists(), name
  assert list((workdir / 'tensorboard').iterdir())
  for key in ('eval/reward_before', 'eval/reward_after',
              'eval/class_accuracy_before', 'eval/class_accuracy_after',
              'classifier/accuracy', 'time/pretrain_s', 'time/rl_s'):
    assert key in summary, key
  assert writers.read_summary(str(workdir))['eval/reward_after'] == \
      summary['eval/reward_after']
  # PNG sizes of 8x8 images: negative byte counts, tens to hundreds.
  assert -400 < summary['eval/reward_before'] < -30
  assert 0 <= summary['eval/class_accuracy_after'] <= 1
  records = writers.read_metrics(str(workdir))
  train_lines = [r for r in records if 'reward/mean' in r]
  assert [r['step'] for r in train_lines] == [1, 2, 3]
  for key in ('policy_loss', 'kl', 'clip_ratio', 'approx_kl', 'grad_norm',
              'advantages/mean', 'reward/host_failures', 'steps_per_second'):
    assert key in train_lines[-1], key
  assert train_lines[-1]['reward/host_failures'] == 0
  assert [r['step'] for r in records if 'eval/reward' in r] == [0, 2, 3]

  # A second run finds every stage done and changes nothing.
  pretrain_lines = (workdir / 'pretrain' / 'metrics.jsonl').read_text()
  again = recipes.run(tiny_config(data_dir), str(workdir))
  assert (workdir / 'pretrain' / 'metrics.jsonl').read_text() == \
      pretrain_lines
  for key in ('eval/reward_after', 'eval/class_accuracy_after',
              'classifier/accuracy'):
    assert again[key] == summary[key], key


def test_eval_labels_and_grid(tmp_path):
  labels = ddpo.eval_labels(3)
  np.testing.assert_array_equal(labels[:7], [0, 0, 0, 1, 1, 1, 2])
  images = np.linspace(-1, 1, 30 * 64).reshape(30, 8, 8, 1)
  ddpo.save_grid(images, tmp_path / 'grid.png', columns=2, title='t')
  assert (tmp_path / 'grid.png').stat().st_size > 0


def test_variant_parsing():
  reward, algo = ddpo_digits.parse_variant('dpok, jpeg_compressibility')
  assert (reward, algo) == ('jpeg_compressibility', 'dpok')
  assert ddpo_digits.parse_variant('') == ('classifier', 'ddpo_is')
  with pytest.raises(ValueError, match='known|give a reward'):
    ddpo_digits.parse_variant('sharpness')


@pytest.mark.parametrize('overrides, message', [
    ({'rl.batch_size': 7}, r'config\.rl\.batch_size'),
    ({'env.eta': 0.0}, r'env\.eta'),
    ({'env.num_steps': 100}, r'env\.num_steps'),
    ({'env.guidance_scale': 2.0, 'pretrain.label_dropout': 0.0},
     r'config\.pretrain\.label_dropout'),
    ({'model.features': (8, 10)}, r'model\.num_groups'),
    ({'algo.timestep_fraction': 0.0}, r'config\.algo\.timestep_fraction'),
    ({'reward.terms': {'sharpness': 1.0}}, r'config\.reward\.terms'),
    ({'eval.batch_size': 3}, r'config\.eval\.batch_size'),
    ({'reward.levels': 1}, r'config\.reward\.levels'),
])
def test_bad_config_fails_before_compute(tmp_path, monkeypatch, overrides,
                                         message):
  def no_data(*args, **kwargs):
    raise AssertionError('data was loaded before the config was checked')

  monkeypatch.setattr(ddpo.digits, 'load_digits', no_data)
  config = tiny_config(tmp_path / 'data')
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('name, missing', [
    ('ppo', 'hidden_states'), ('scst', 'greedy'), ('sql', 'action_logits'),
    ('ilql', 'hidden_states'), ('mcts_expert_iteration', 'hidden_states')])
def test_algorithms_needing_a_text_env_fail_before_compute(
    tmp_path, monkeypatch, name, missing):
  monkeypatch.setattr(ddpo.digits, 'load_digits', lambda *a, **k: pytest.fail(
      'data was loaded before the config was checked'))
  config = tiny_config(tmp_path / 'data')
  config.algo = algos.default_config(name)
  with pytest.raises(ValueError,
                     match=f"config.algo.name='{name}' uses env.{missing}"):
    recipes.run(config, str(tmp_path / 'run'))
