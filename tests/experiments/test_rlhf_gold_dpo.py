"""The DPO study of rlhf_gold (issue 22): its accuracy of pair margins
against a hand count, and (slow) the driver at smoke sizes: it reproduces
the study's own DPO run, writes its files, and the accuracies it reports
are those of the margins it saved."""

import json

import numpy as np
import pytest

from experiments.rlhf_gold import config as rlhf_gold_config
from experiments.rlhf_gold import dpo_study
from experiments.rlhf_gold import recipe


def test_implicit_accuracy_by_hand():
  margin = [0.3, -0.1, 0.0, 2.0, -1.0, 0.5]
  gold_chosen = [0.9, 0.2, 0.5, 0.1, 0.4, 0.3]
  gold_rejected = [0.1, 0.5, 0.5, 0.6, 0.4, 0.2]
  got = dpo_study.implicit_accuracy(margin, gold_chosen, gold_rejected)
  # Labels: right, wrong, tie (half), right, wrong, right.
  assert got['accuracy'] == pytest.approx(3.5 / 6)
  # Gold order, pairs 0, 1, 3, 5 (2 and 4 tie in gold): pair 0 right, 1
  # right (gold prefers the rejected one and so does the margin), 3 wrong,
  # 5 right.
  assert got['gold_accuracy'] == pytest.approx(3 / 4)
  assert got['margin'] == pytest.approx(np.mean(margin))
  # No pair whose gold differs: no gold-order accuracy.
  assert np.isnan(dpo_study.implicit_accuracy([1.0], [0.2], [0.2])[
      'gold_accuracy'])


def test_unknown_variant_fails_before_compute(tmp_path):
  with pytest.raises(ValueError, match='--variants: unknown'):
    dpo_study.run_study(rlhf_gold_config.get_config('smoke'), str(tmp_path),
                        [0], ['default', 'dpo_but_better'])


def _accuracy(margin):
  return np.mean((margin > 0) + 0.5 * (margin == 0))


@pytest.mark.slow
def test_driver_reproduces_the_study_and_its_reported_accuracies(tmp_path):
  config = rlhf_gold_config.get_config('smoke')
  config.data.data_dir = str(tmp_path / 'data')
  # The study itself (every stage), then the driver on its stages.
  study = recipe.run(config, str(tmp_path / 'study' / 'seed0'))
  out = tmp_path / 'dpo'
  results = dpo_study.run_study(config, str(out), [0], ['default', 'online'],
                                source=str(tmp_path / 'study'))
  for name in ('dpo_study.json', 'dpo_study.md', 'dpo_study.png'):
    assert (out / name).exists(), name
  seed = json.loads((out / 'dpo_study.json').read_text())['seeds']['0']
  assert set(seed['variants']) == set(results['0']['variants']) == {
      'default', 'online'}
  # The default variant is the study's DPO run: same training, same samples.
  final = seed['variants']['default']['final']
  for key in ('gold_reward', 'proxy_reward', 'kl'):
    assert final[f'eval/{key}'] == pytest.approx(
        study[f'run/dpo_beta0.1/{key}'], abs=1e-5), key
  # The reference's log-prob sums, scored as DPO scores pairs, are those of
  # the sampler.
  assert seed['check/max_abs_sampled_minus_teacher_forced_logp'] < 1e-4
  with (tmp_path / 'study' / 'seed0' / 'pairs' / 'pairs.npz').open('rb') as f:
    pairs = dict(np.load(f))
  for name in ('default', 'online'):
    with (out / 'seed0' / 'dpo_study' / name / 'margins.npz').open('rb') as f:
      margins = dict(np.load(f))
    final = seed['variants'][name]['final']
    heldout = margins['heldout']
    assert heldout.shape == pairs['heldout/chosen'].shape[:1]
    assert np.any(heldout != 0), 'the run changed no log-ratio'
    assert final['implicit/heldout_accuracy'] == pytest.approx(
        _accuracy(heldout))
    assert final['implicit/train_accuracy'] == pytest.approx(
        _accuracy(margins['train']))
    assert final['implicit/heldout_margin'] == pytest.approx(
        np.mean(heldout), rel=1e-5)
    differ = pairs['heldout/gold_chosen'] != pairs['heldout/gold_rejected']
    if differ.any():
      sign = np.sign(pairs['heldout/gold_chosen']
                     - pairs['heldout/gold_rejected'])
      assert final['implicit/heldout_gold_accuracy'] == pytest.approx(
          _accuracy((heldout * sign)[differ]))
    else:
      assert final['implicit/heldout_gold_accuracy'] is None or np.isnan(
          final['implicit/heldout_gold_accuracy'])
