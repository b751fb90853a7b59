"""The generic text-RL recipe end to end on the arithmetic experiment's smoke
config: outputs, resume, and the errors bad input gets before any compute."""

import json

import jax
import pytest

from experiments.arithmetic import config as arithmetic
from jaxrlgen import parallel
from jaxrlgen import algos
from jaxrlgen import recipes
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.models import transformer as tfm
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import writers

TIMING_KEYS = ('step_time', 'steps_per_second')


def tiny_config(data_dir, variant='grpo'):
  config = arithmetic.get_config(f'{variant},smoke')
  config.data.data_dir = str(data_dir)
  return config


def strip_timing(records):
  return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in records]


def interrupt_at_step(monkeypatch, step: int):
  """Makes the next runs stop (a simulated preemption) when they fetch the
  training batch of `step`; returns the real `Task.batch` to put back."""
  real_batch = text_rl.Task.batch

  def failing_batch(self, at, batch_size, stream=0):
    if stream == 0 and at == step:
      raise KeyboardInterrupt('simulated preemption')
    return real_batch(self, at, batch_size, stream)

  monkeypatch.setattr(text_rl.Task, 'batch', failing_batch)
  return real_batch


@pytest.mark.slow
def test_run_writes_outputs_and_resumes_like_uninterrupted(tmp_path, monkeypatch):
  data_dir = tmp_path / 'data'
  full_dir, cut_dir = tmp_path / 'full', tmp_path / 'cut'
  summary = recipes.run(tiny_config(data_dir), str(full_dir))

  for name in ('metrics.jsonl', 'summary.json', 'training.png',
               'sft/metrics.jsonl', 'sft/sft.png'):
    assert (full_dir / name).exists(), name
  assert list((full_dir / 'tensorboard').iterdir())
  assert 0.0 <= summary['eval/accuracy_before'] <= 1.0
  assert 0.0 <= summary['eval/accuracy_after'] <= 1.0
  assert json.loads((full_dir / 'summary.json').read_text())[
      'eval/accuracy_after'] == summary['eval/accuracy_after']
  records = writers.read_metrics(str(full_dir))
  logged = [r['step'] for r in records if 'reward/mean' in r]
  assert logged == [1, 2, 3, 4, 5, 6]
  for key in ('reward/mean', 'reward/std', 'policy_loss', 'entropy',
              'clip_ratio', 'advantages/mean', 'completions/mean_length',
              'completions/clipped_ratio', 'grad_norm', 'step_time'):
    assert key in records[-2], key  # The last line is the final evaluation.

  # Interrupt the second run while it fetches the batch of step 3 (0-based),
  # after three completed steps; the newest scheduled checkpoint is step 2.
  real_batch = interrupt_at_step(monkeypatch, 3)
  with pytest.raises(KeyboardInterrupt):
    recipes.run(tiny_config(data_dir), str(cut_dir))
  # Nothing completed was lost: the interrupted step-3 state was saved.
  assert (cut_dir / 'checkpoints' / '3').exists()
  assert [r['step'] for r in writers.read_metrics(str(cut_dir))
          if 'reward/mean' in r] == [1, 2, 3]

  monkeypatch.setattr(text_rl.Task, 'batch', real_batch)
  resumed = recipes.run(tiny_config(data_dir), str(cut_dir))
  assert strip_timing(writers.read_metrics(str(cut_dir))) == \
      strip_timing(records)
  for key in ('eval/accuracy_before', 'eval/accuracy_after'):
    assert resumed[key] == summary[key]


@pytest.mark.parametrize('overrides, message', [
    ({'rl.batch_size': 10, 'rl.group_size': 4}, r'config\.rl\.batch_size'),
    ({'rl.max_new_tokens': 30}, r'model\.max_seq_len'),
    ({'model.vocab_size': 100}, r'config\.model\.vocab_size'),
    ({'algo.aggregation': 'mean'}, r'config\.algo\.aggregation'),
    ({'reward.terms': (('exactmatch', 1.0),)}, r'config\.reward\.terms'),
    ({'reward.terms': (('nowhere.py:make', 1.0),)}, "no file 'nowhere.py'"),
    ({'mesh.tensor': 2}, r'config\.mesh'),
    ({'mesh.data': -1, 'mesh.fsdp': -1}, r'config\.mesh'),
    ({'rl.reference_dtype': 'float16'}, r'config\.rl\.reference_dtype'),
    ({'rl.pack_rows': -2}, r'config\.rl\.pack_rows=-2 must be >= 0'),
    ({'distributed.mode': 'always'}, r'config\.distributed\.mode'),
    ({'distributed.heartbeat_timeout_s': 0},
     r'config\.distributed\.heartbeat_timeout_s'),
])
def test_bad_config_fails_before_compute(tmp_path, monkeypatch, overrides,
                                         message):
  def no_data(*args, **kwargs):
    raise AssertionError('data was loaded before the config was checked')

  monkeypatch.setattr(text_rl, 'load_task', no_data)
  config = tiny_config(tmp_path / 'data')
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))


def test_batch_not_divisible_by_batch_shards(tmp_path):
  mesh = jax.sharding.AbstractMesh((3, 1, 1), parallel.AXES)
  config = tiny_config(tmp_path / 'data')
  with pytest.raises(ValueError, match='divisible by the 3 batch shards'):
    text_rl.validate(text_rl.parse(config), algos.make(config.algo),
                     ByteTokenizer(), tfm.TransformerConfig(**config.model),
                     mesh)


def test_unwritable_workdir(tmp_path):
  blocker = tmp_path / 'file'
  blocker.write_text('not a directory')
  with pytest.raises(ValueError, match='--workdir'):
    recipes.run(tiny_config(tmp_path / 'data'), str(blocker / 'run'))


def test_reward_of_wrong_shape_fails_before_compute(tmp_path, monkeypatch):
  def per_token_reward(rollout, batch):
    del batch
    return rollout.logp  # [B, T], not [B].

  monkeypatch.setattr(text_rl.rewards, 'make',
                      lambda *args, **kwargs: per_token_reward)
  # The data is read first (a task's fields come from it); no model is.
  monkeypatch.setattr(text_rl.tfm, 'init_params',
                      lambda *a: pytest.fail('initialised a model'))
  with pytest.raises(ValueError, match='per_token_reward.*f32\\[16\\]'):
    recipes.run(tiny_config(tmp_path / 'data'), str(tmp_path / 'run'))


def test_unknown_recipe(tmp_path):
  config = tiny_config(tmp_path / 'data')
  config.recipe = 'nope'
  with pytest.raises(ValueError, match='text_rl'):
    recipes.run(config, str(tmp_path / 'run'))


@pytest.mark.slow
def test_bfloat16_reference_and_memory_report(tmp_path, capsys):
  config = tiny_config(tmp_path / 'data')
  config.algo.beta = 0.04  # GRPO with a KL term: the reference is used.
  config.rl.reference_dtype = 'bfloat16'
  config.sft.steps = 0
  config.update(total_steps=2, checkpoint_every=0)
  summary = recipes.run(config, str(tmp_path / 'run'))
  assert summary['final/kl'] >= 0.0
  report = capsys.readouterr().out
  for part in ('parameters', 'optimizer state', 'reference model',
               'KV cache (rollout)', 'total'):
    assert part in report, report
  # The reference model takes half the bytes of the float32 parameters.
  sizes = {line.split('  ')[1].strip(): line.split()[-2:]
           for line in report.splitlines() if line.startswith('  ')
           and 'mesh' not in line}
  to_bytes = lambda v: float(v[0]) * {'B': 1, 'KiB': 1024, 'MiB': 2**20}[v[1]]
  assert to_bytes(sizes['reference model']) == pytest.approx(
      to_bytes(sizes['parameters']) / 2, rel=0.02)


@pytest.mark.slow
def test_mcts_sampler_run_trains_and_reports_search_accuracy(tmp_path):
  config = tiny_config(tmp_path / 'data', 'mcts')
  config.rl.batch_size = 8
  config.update(total_steps=2, checkpoint_every=2)
  summary = recipes.run(config, str(tmp_path / 'run'))
  evals = [r for r in writers.read_metrics(str(tmp_path / 'run'))
           if 'eval/mcts_accuracy' in r]
  assert [r['step'] for r in evals] == [0, 2]
  for r in evals:
    assert 0.0 <= r['eval/mcts_accuracy'] <= 1.0
    assert 0.0 < r['eval/mcts_mean_length'] <= config.rl.max_new_tokens
  # The actor was the search: its statistics reach the training metrics.
  assert summary['final/search/entropy'] >= 0.0


@pytest.mark.slow
def test_offline_run_reads_its_stored_dataset(tmp_path):
  config = tiny_config(tmp_path / 'data', 'sql_offline')
  config.update(total_steps=2, checkpoint_every=2)
  summary = recipes.run(config, str(tmp_path / 'run'))
  assert (tmp_path / 'run' / 'offline_dataset.npz').exists()
  assert summary['offline/num_sequences'] == 32 * 4
  assert 0.0 <= summary['offline/positive_ratio'] <= 1.0
  records = [r for r in writers.read_metrics(str(tmp_path / 'run'))
             if 'td_loss' in r]
  assert [r['step'] for r in records] == [1, 2]
  # Offline batches are the dataset's: their rewards are stored ones.
  assert all(0.0 <= r['reward/mean'] <= 1.0 for r in records)


def test_diffusion_algorithm_fails_before_compute(tmp_path, monkeypatch):
  monkeypatch.setattr(text_rl, 'load_task', lambda *a, **k: pytest.fail(
      'data was loaded before the config was checked'))
  config = tiny_config(tmp_path / 'data')
  config.algo = algos.default_config('dpok')
  with pytest.raises(ValueError,
                     match="config.algo.name='dpok' uses env.transitions"):
    recipes.run(config, str(tmp_path / 'run'))


@pytest.mark.parametrize('overrides, message', [
    ({'rl.source': 'replay'}, 'config.rl.source'),
    ({'offline.samples_per_prompt': 3}, 'config.offline.samples_per_prompt'),
    ({'offline.chunk_prompts': 300}, 'config.offline.num_prompts'),
    ({'offline.num_prompts': 8}, 'config.offline.num_prompts'),
    ({'loop': 'async'}, "config.loop='sync'"),
    ({'rl.sampler': 'mcts'}, "config.rl.source='offline' samples nothing"),
])
def test_offline_config_errors_name_the_field(overrides, message):
  config = arithmetic.get_config('sql_offline')
  settings = text_rl.parse(config)
  text_rl.validate_offline(settings, shards=1)  # The shipped config is valid.
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    text_rl.validate_offline(text_rl.parse(config), shards=1)


@pytest.mark.parametrize('variant, overrides, message', [
    ('grpo', {'algo': algos.default_config('mcts_expert_iteration')},
     "config.rl.sampler='mcts'"),
    ('mcts', {'rl.sampler': 'beam'}, 'config.rl.sampler'),
    ('mcts', {'mcts.num_simulations': 0}, 'config.mcts.num_simulations'),
    ('mcts', {'loop': 'async'}, "config.rl.sampler='mcts' needs"),
    ('grpo', {'task.name': 'nope'}, r"config\.task\.name='nope'"),
    ('grpo', {'task.max_operand': 0}, r'config\.task\.max_operand'),
    ('grpo', {'rl.top_p': float('nan')}, r'config\.rl\.top_p'),
    ('grpo', {'sft.optimizer.learning_rate': -1.0},
     r'config\.sft\.optimizer\.learning_rate'),
])
def test_section_errors_fail_before_compute(tmp_path, monkeypatch, variant,
                                            overrides, message):
  monkeypatch.setattr(text_rl, 'load_task', lambda *a, **k: pytest.fail(
      'data was loaded before the config was checked'))
  config = tiny_config(tmp_path / 'data', variant)
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))


@pytest.mark.slow  # Three runs of the recipe: about 50 s.
def test_lora_run_resumes_like_uninterrupted_and_reports_memory(
    tmp_path, monkeypatch, capsys):
  """PPO (a value head that trains) with adapters and a KL term: the memory
  report splits base and adapters, the reference costs no bytes, and a run
  interrupted after a checkpoint resumes to the uninterrupted metrics."""

  def lora_config():
    config = tiny_config(tmp_path / 'data', 'ppo')
    config.lora.update(rank=4, alpha=8.0)
    config.algo.kl_coef = 0.05
    config.update(total_steps=4, checkpoint_every=2)
    return config

  summary = recipes.run(lora_config(), str(tmp_path / 'full'))
  report = capsys.readouterr().out
  sizes = {line.split('  ')[1].strip(): line.split()[-2:]
           for line in report.splitlines() if line.startswith('  ')
           and 'mesh' not in line}
  # The reference is the bound base: only the value head is its own.
  assert sizes['reference model'][1] == 'B', report
  assert 'parameters (frozen base)' in sizes, report
  assert 'parameters (adapters and heads)' in sizes, report
  records = writers.read_metrics(str(tmp_path / 'full'))
  assert summary['final/kl'] > 0.0

  real_batch = interrupt_at_step(monkeypatch, 3)
  with pytest.raises(KeyboardInterrupt):
    recipes.run(lora_config(), str(tmp_path / 'cut'))
  monkeypatch.setattr(text_rl.Task, 'batch', real_batch)
  recipes.run(lora_config(), str(tmp_path / 'cut'))
  assert strip_timing(writers.read_metrics(str(tmp_path / 'cut'))) == \
      strip_timing(records)
  # Checkpoints hold only adapters: resuming them onto another base fails.
  other = lora_config()
  other.lora.rank = 8
  with pytest.raises(ValueError, match='frozen_base.json'):
    recipes.run(other, str(tmp_path / 'cut'))


def test_lora_with_the_async_loop_fails_before_compute(tmp_path):
  config = tiny_config(tmp_path / 'data')
  config.lora.rank = 4
  config.loop = 'async'
  with pytest.raises(ValueError, match=r"config\.lora\.rank.*config\.loop"):
    recipes.run(config, str(tmp_path / 'run'))
