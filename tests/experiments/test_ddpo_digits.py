"""The digits DDPO experiment end to end at its smoke sizes: outputs, resume,
the host (compressibility) reward in the step, the variants, and the errors
bad input gets before any compute."""

import functools

import jax
import numpy as np
import optax
import pytest
from sklearn import datasets

from experiments.ddpo_digits import config as ddpo_digits
from experiments.ddpo_digits import recipe as ddpo
from jaxrlgen import algos
from jaxrlgen import recipes
from jaxrlgen.core.types import TrainState
from jaxrlgen.models import classifier
from jaxrlgen.train import plots
from jaxrlgen.train import writers


def smoke_config(data_dir, variant='png_compressibility,dpok'):
  config = ddpo_digits.get_config(f'{variant},smoke')
  config.data.data_dir = str(data_dir)  # One dataset for the whole module.
  return config


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp('data')


@pytest.mark.slow  # Every stage, twice (~30 s on 2 cores).
def test_run_writes_outputs_and_resumes(tmp_path, data_dir):
  workdir = tmp_path / 'run'
  summary = recipes.run(smoke_config(data_dir), str(workdir))

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
  again = recipes.run(smoke_config(data_dir), str(workdir))
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
  grid = plots.plt.imread(tmp_path / 'grid.png')
  assert grid.ndim == 3 and len(np.unique(grid)) > 10  # The images, drawn.


def test_classifier_step_learns_the_digits():
  """200 steps on 600 digits classify 1,000 others (about 93%)."""
  data = datasets.load_digits()
  images = (data.images[..., None] / 8.0 - 1.0).astype(np.float32)
  labels = data.target.astype(np.int32)
  cfg = classifier.ClassifierConfig(features=(8, 16), dropout=0.0)
  model = classifier.Classifier(cfg)
  tx = optax.adam(1e-2)
  state = TrainState.create(classifier.init_params(cfg, jax.random.key(0)), tx)
  step = jax.jit(functools.partial(ddpo.classifier_step, model=model, tx=tx,
                                   max_shift=1))
  rng = np.random.default_rng(0)
  for i in range(200):
    idx = rng.integers(0, 600, 64)
    state, _ = step(state, {'image': images[idx], 'label': labels[idx]},
                    jax.random.key(i))
  logits = jax.jit(model.apply)({'params': state.params}, images[600:1600])
  accuracy = np.mean(np.argmax(logits, -1) == labels[600:1600])
  assert accuracy > 0.85, accuracy


def test_shift_augmentation_translates_by_at_most_one_pixel():
  image = -np.ones((1, 5, 5, 1), np.float32)
  image[0, 2, 2, 0] = 1.0
  shifted = ddpo.shift_augment(np.tile(image, (64, 1, 1, 1)),
                               jax.random.key(0), 1)
  where = np.argwhere(np.asarray(shifted)[..., 0] == 1.0)
  assert len(where) == 64  # The bright pixel survives in every copy.
  offsets = {tuple(w) for w in (where[:, 1:] - 2).tolist()}
  assert offsets == {(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}


def test_variants():
  config = ddpo_digits.get_config('dpok, jpeg_compressibility')
  assert config.algo.name == 'dpok'
  assert dict(config.reward.terms) == {'jpeg_compressibility': 1.0}
  assert config.classifier.steps == 1200  # Full size without 'smoke'.
  config = ddpo_digits.get_config('')
  assert (config.algo.name, dict(config.reward.terms)) == (
      'ddpo_is', {'classifier': 1.0})
  with pytest.raises(ValueError, match=r"'sharpness'.*known.*'dpok'.*'smoke'"):
    ddpo_digits.get_config('sharpness')


@pytest.mark.parametrize('algo', ddpo_digits.ALGORITHMS)
def test_smoke_combines_with_every_algorithm(algo):
  """'smoke' shrinks the sizes and keeps the other variants' choices."""
  config = ddpo_digits.get_config(f'smoke,{algo}')
  assert (config.algo.name, config.total_steps) == (algo, 3)
  parsed = ddpo_digits.parse(config)
  assert parsed.rl.batch_size == 8
  algos.make(parsed.algo)  # The algorithm's own checks pass too.


def test_default_config_parses():
  parsed = ddpo_digits.parse(ddpo_digits.get_config())
  assert parsed == ddpo_digits.Config()


@pytest.mark.parametrize('overrides, message', [
    ({'rl.batch_size': 0}, r'config\.rl\.batch_size.*positive'),
    ({'rl.batch_size': 7}, r'config\.rl\.batch_size'),
    ({'rl.optimizer.learning_rate': -1.0},
     r'config\.rl\.optimizer\.learning_rate'),
    ({'classifier.steps': 0}, r'config\.classifier\.steps'),
    ({'pretrain.ema_decay': 1.0}, r'config\.pretrain\.ema_decay'),
    ({'data.image_size': 4}, r'config\.data\.image_size'),
    ({'algo.num_conditions': 10}, r'config\.algo\.num_conditions'),
    ({'total_steps': -1}, r'config\.total_steps'),
    ({'env.eta': 0.0}, r'env\.eta'),
    ({'env.num_steps': 100}, r'env\.num_steps'),
    ({'env.guidance_scale': 2.0, 'pretrain.label_dropout': 0.0},
     r'config\.pretrain\.label_dropout'),
    ({'model.features': (8, 10)}, r'model\.num_groups'),
    ({'algo.timestep_fraction': 0.0}, r'config\.algo\.timestep_fraction'),
    ({'reward.terms': (('sharpness', 1.0),)}, r'config\.reward\.terms'),
    ({'eval.batch_size': 3}, r'config\.eval\.batch_size'),
    ({'reward.levels': 1}, r'config\.reward\.levels'),
])
def test_bad_config_fails_before_compute(tmp_path, monkeypatch, overrides,
                                         message):
  def no_data(*args, **kwargs):
    raise AssertionError('data was loaded before the config was checked')

  monkeypatch.setattr(ddpo.digits, 'load_digits', no_data)
  config = smoke_config(tmp_path / 'data')
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))


def test_unknown_field_fails_listing_the_known_ones(tmp_path):
  config = smoke_config(tmp_path / 'data')
  config.rl.no_such_field = 3
  with pytest.raises(ValueError,
                     match=r'config\.rl\.no_such_field.*group_size'):
    recipes.run(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('name, missing', [
    ('ppo', 'value'), ('scst', 'greedy'), ('sql', 'action_logits'),
    ('ilql', 'hidden_states'), ('mcts_expert_iteration', 'hidden_states')])
def test_algorithms_needing_a_text_env_fail_before_compute(
    tmp_path, monkeypatch, name, missing):
  monkeypatch.setattr(ddpo.digits, 'load_digits', lambda *a, **k: pytest.fail(
      'data was loaded before the config was checked'))
  config = smoke_config(tmp_path / 'data')
  config.algo = algos.default_config(name)
  with pytest.raises(ValueError,
                     match=f"config.algo.name='{name}' uses env.{missing}"):
    recipes.run(config, str(tmp_path / 'run'))
