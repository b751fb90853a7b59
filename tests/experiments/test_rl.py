"""The generic experiment end to end: a GGUF model, prompts from files, a
reward by import path, an algorithm picked by flag; its samples, metrics and
export."""

import json
import os
import sys
from unittest import mock

from absl import flags
from ml_collections import config_flags
import numpy as np
import pytest

from jaxrlgen import algos
from jaxrlgen import recipes
from jaxrlgen.data.hf_tokenizer import HFTokenizer
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import writers

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))

# Fails on some items (their penalty is counted, the run goes on).
SCORE = '''
def score(completion, answer):
  if len(completion) % 3 == 0:
    raise ValueError('a verifier bug')
  return float(str(answer) in completion) + 0.01 * len(completion)
'''


def _score(completion, answer):  # SCORE, with its failures as None.
  if len(completion) % 3 == 0:
    return None
  return float(str(answer) in completion) + 0.01 * len(completion)


def _flags_config(*overrides):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config',
                                  flag_values=flag_values, lock_config=True)
  argv = ['main', '--config=' + os.path.join(REPO, 'experiments', 'rl',
                                             'config.py:smoke'), *overrides]
  with mock.patch.object(sys, 'argv', argv):
    flag_values(argv)
  return flag_values.config


@pytest.mark.slow
def test_gguf_ppo_lora_with_a_reward_from_a_file(tmp_path):
  pytest.importorskip('gguf')
  from tests.models import test_gguf  # pylint: disable=g-import-not-at-top
  model = str(tmp_path / 'tiny.gguf')
  test_gguf.write_tiny(model)
  (tmp_path / 'score.py').write_text(SCORE)
  # Everything from the command line, as a researcher would give it.
  config = _flags_config(
      f'--config.model.path={model}', '--config.model.max_seq_len=96',
      '--config.data.max_prompt_len=48', '--config.algo.name=ppo',
      '--config.model.value_head=True', '--config.algo.num_epochs=2',
      f'--config.reward.fn={tmp_path / "score.py"}:score',
      '--config.reward.penalty=-1', '--config.reward.backend=process',
      # Adapters on the GGUF's weights, the critic's value head trained.
      '--config.lora.rank=4')
  workdir = tmp_path / 'run'
  summary = recipes.run(config, str(workdir))

  rows = writers.read_metrics(str(workdir))
  train = [r for r in rows if 'reward/mean' in r]
  assert [r['step'] for r in train] == [1, 2, 3]
  assert all('value_loss' in r and 'reward/host_failures' in r for r in train)
  # Every evaluation wrote its completions; their rewards are the function's
  # (recomputed here), its failures the penalty.
  assert sorted(os.listdir(workdir / 'samples')) == ['0.jsonl', '2.jsonl',
                                                      '3.jsonl']
  records = [json.loads(line) for line in open(
      os.path.join(REPO, 'experiments', 'rl', 'data', 'sums_test.jsonl'))]
  lines = [json.loads(line) for line in open(workdir / 'samples' / '3.jsonl')]
  assert len(lines) == config.eval.num_examples
  tokenizer = HFTokenizer.from_gguf(model)
  for line, record in zip(lines, records):
    assert record['prompt'] in line['prompt']  # Inside the chat template.
    assert tokenizer.chat_template and line['prompt'] != record['prompt']
    want = _score(line['completion'], record['answer'])
    assert line['failed'] == (want is None)
    np.testing.assert_allclose(line['reward'], -1.0 if want is None else want,
                               rtol=1e-6)
  np.testing.assert_allclose(
      summary['eval/accuracy_after'],
      np.mean([line['reward'] for line in lines]), rtol=1e-6)
  # A run from a released model ends with the policy as a HF directory
  # (adapters merged), and with adapters, with them alone in PEFT's layout.
  assert (workdir / 'hf_model' / 'model.safetensors').exists()
  assert (workdir / 'hf_model' / 'tokenizer.json').exists()
  adapter_config = json.loads(
      (workdir / 'adapters' / 'adapter_config.json').read_text())
  assert adapter_config['r'] == 4
  assert adapter_config['target_modules'] == [
      'down_proj', 'gate_proj', 'k_proj', 'o_proj', 'q_proj', 'up_proj',
      'v_proj']


def test_reward_terms_and_algorithm_fields_from_flags():
  config = _flags_config(
      "--config.reward.terms={'my.mod:score': 1.0, 'regex_format': 0.1}",
      '--config.algo.name=rloo')
  settings = text_rl.parse(config)
  assert settings.reward.terms == (('my.mod:score', 1.0),
                                   ('regex_format', 0.1))
  for terms, error in (("{'a': 1.0", 'literal'), ("{'a': 'heavy'}", 'weight')):
    config = _flags_config(f'--config.reward.terms={terms}')
    with pytest.raises(ValueError, match=f'config.reward.terms.*{error}'):
      text_rl.parse(config)
  config = _flags_config('--config.algo.name=rloo',
                         '--config.algo.epsilon_low=0.1')
  with pytest.raises(ValueError, match='config.algo.epsilon_low'):
    algos.make(config.algo)


def test_package_paths_resolve_to_shipped_files():
  from jaxrlgen.models import hf  # pylint: disable=g-import-not-at-top
  # The smollm2 variant loads without the model installed; the run finds it.
  from experiments.rl import config as rl_config  # pylint: disable=g-import-not-at-top
  assert rl_config.get_config('smollm2').model.path.startswith(
      hf.PACKAGE_SCHEME)
  shipped = hf.resolve('package://json/__init__.py')
  assert os.path.isfile(shipped) and shipped.endswith('json/__init__.py')
  assert hf.resolve('/models/x.gguf') == '/models/x.gguf'
  with pytest.raises(ValueError, match='pip install no-such-pkg'):
    hf.resolve('package://no_such_pkg/model.gguf')
  with pytest.raises(ValueError, match='no file'):
    hf.resolve('package://json/model.gguf')
