"""The over-optimisation study on a shrunk config: gold reward, config
errors before any compute, outputs, and a restart that redoes nothing."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments.rlhf_gold import config as rlhf_gold_config
from jaxrlgen import recipes
from jaxrlgen.core.types import Rollout
from jaxrlgen.data.tokenizer import ByteTokenizer
from experiments.rlhf_gold import recipe as rlhf_gold
from jaxrlgen.train import writers

TOK = ByteTokenizer()


def tiny_config(data_dir):
  config = rlhf_gold_config.get_config()
  config.model.update(hidden_dim=16, mlp_dim=32, num_layers=1, num_heads=2,
                      num_kv_heads=1)
  config.data.update(data_dir=str(data_dir), max_operand=20, num_train=64,
                     num_test=32)
  config.sft.update(steps=0, batch_size=16)  # Pairs of the initial policy.
  config.pairs.update(num_train=32, num_heldout=16, batch_size=16)
  config.rm.update(steps=2, batch_size=16, log_every=1, eval_every=2)
  config.rl.update(batch_size=8, group_size=2, max_new_tokens=4)
  config.update(total_steps=2, log_every=1, checkpoint_every=2)
  config.ppo.kl_coefs = (0.0,)
  config.ppo.algo.update(num_epochs=1, num_minibatches=1)
  # GRPO runs through the same code as PPO; leaving it out saves a compile.
  config.grpo.betas = ()
  config.dpo.update(betas=(0.1,), steps=2, batch_size=8)
  config.eval.update(every=2, batch_size=16, samples=1)
  return config


def test_gold_reward_against_numpy():
  texts = [[ord('1'), ord('2'), TOK.eos_id], [ord('1'), ord('5'), TOK.eos_id],
           [ord('x'), TOK.eos_id, TOK.pad_id], [ord('9'), ord('9'), ord('9')]]
  actions = jnp.asarray(texts, jnp.int32)
  mask = jnp.asarray([[1, 1, 1], [1, 1, 1], [1, 1, 0], [1, 1, 1]], bool)
  rollout = Rollout(context={}, actions=actions,
                    logp=jnp.zeros(actions.shape), mask=mask)
  gold = jax.jit(functools.partial(rlhf_gold.gold_reward, eos_id=TOK.eos_id,
                                   scale=10.0))
  got = gold(rollout, {'answer': jnp.asarray([12, 12, 1, 999])})
  # Exact, off by 3, malformed, and no EOS within the budget.
  np.testing.assert_allclose(got, [1.0, np.exp(-0.3), 0.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize('updates, message', [
    ({'rm.std_coef': 1.0}, 'config.rm.ensemble_size'),
    ({'rl.group_size': 1}, 'config.rl.group_size'),
    ({'dpo.betas': (0.0,)}, 'config.dpo.betas'),
    ({'ppo.kl_coefs': (-0.1,)}, 'config.ppo.kl_coefs'),
    ({'ppo.kl_coefs': (), 'dpo.betas': ()}, 'all empty'),
    ({'dpo.label_smoothing': 0.7}, 'config.dpo.label_smoothing'),
    ({'pairs.num_heldout': 24}, 'config.pairs.num_heldout'),
    ({'pairs.label': 'coin'}, 'config.pairs.label'),
    ({'model.value_head': False}, 'config.model.value_head'),
])
def test_bad_config_fails_before_compute(tmp_path, updates, message):
  config = tiny_config(tmp_path / 'data')
  config.update_from_flattened_dict(updates)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))
  assert not (tmp_path / 'data').exists()  # Failed before loading any data.


@pytest.mark.slow  # Compiles every stage of the study (~30 s of CPU).
def test_run_writes_outputs_and_restart_redoes_nothing(tmp_path):
  config = tiny_config(tmp_path / 'data')
  workdir = tmp_path / 'run'
  summary = recipes.run(config, str(workdir))
  for method in ('ppo', 'dpo'):
    for key in ('gold_reward', 'proxy_reward', 'kl'):
      assert np.isfinite(summary[f'{key}/{method}']), (key, method)
    assert 0.0 <= summary[f'gold_reward/{method}'] <= 1.0
  assert 'gold_reward/grpo' not in summary
  assert 0.0 <= summary['rm/heldout_accuracy'] <= 1.0
  assert 0.0 <= summary['gold_reward/sft'] <= 1.0
  assert json.loads((workdir / 'summary.json').read_text())[
      'kl/ppo'] == summary['kl/ppo']
  for name in ('gold_vs_kl.png', 'pairs/pairs.npz', 'rm/metrics.jsonl',
               'rm/training.png', 'ppo_kl_coef0/training.png',
               'dpo_beta0.1/metrics.jsonl', 'rm/proxy_stats.json'):
    assert (workdir / name).exists(), name
  records = writers.read_metrics(str(workdir / 'ppo_kl_coef0'))
  evals = [r for r in records if 'eval/gold_reward' in r]
  assert [r['step'] for r in evals] == [0, 2]
  assert evals[0]['eval/kl'] == pytest.approx(0.0, abs=1e-5)
  assert [r['step'] for r in records if 'reward/mean' in r] == [1, 2]
  assert all(k in records[1] for k in ('policy_loss', 'value_loss'))
  rm_records = writers.read_metrics(str(workdir / 'rm'))
  assert any('rm/heldout_accuracy' in r for r in rm_records)

  # A restart finds every stage finished: same figures, no new lines.
  again = recipes.run(config, str(workdir))
  for key, value in summary.items():
    if key != 'wall_time_s':
      assert again[key] == pytest.approx(value, rel=1e-5, abs=1e-6,
                                         nan_ok=True), key
  assert writers.read_metrics(str(workdir / 'ppo_kl_coef0')) == records
