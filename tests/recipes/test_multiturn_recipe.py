"""Multi-turn episodes in the generic recipe (`config.multiturn`,
`config.tools`): a run with a responder given by import path, the tool
responder's replies, and the errors of bad settings before any compute."""

import json
import os

import pytest

from experiments.arithmetic import config as arithmetic
from jaxrlgen import algos
from jaxrlgen import recipes
from jaxrlgen import tools
from jaxrlgen.envs import multiturn
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import writers


def echo_responder(turns, tokenizer, pad_id):
  """A scripted user who answers every turn with 'ok?' and ends the
  episode after the last turn."""
  last = turns.max_turns - 1
  return multiturn.HostResponder(
      lambda turn, texts: [multiturn.Reply(observation='ok?',
                                           done=turn >= last, reward=0.5)
                           for _ in texts],
      tokenizer, turns.observation_tokens, pad_id)


def _config(data_dir, **multiturn_fields):
  config = arithmetic.get_config('grpo,smoke')
  config.data.data_dir = str(data_dir)
  config.multiturn.update(max_turns=2, turn_tokens=4, observation_tokens=4,
                          **multiturn_fields)
  config.rl.max_new_tokens = 12
  config.model.max_seq_len = 32
  config.update(total_steps=2, checkpoint_every=2)
  return config


def test_tool_replies_answer_calls_and_end_on_answers():
  toolset = tools.make(tools.ToolsConfig(names=('calculator',)))
  replies = multiturn.tool_replies(toolset, last_turn=2)
  got = replies(0, ['<tool>6*7</tool>', '42', '', '<tool>1/0</tool>'])
  assert got[0] == multiturn.Reply(observation='<result>42</result>')
  assert got[1].done and got[2].done  # An answer, and a finished row.
  assert got[3].failed and 'error' in got[3].observation
  # The last turn runs nothing: every episode ends there.
  assert all(r.done for r in replies(2, ['<tool>6*7</tool>']))


@pytest.mark.slow
@pytest.mark.parametrize('placed', [False, True])
def test_multiturn_run_logs_turns_and_writes_whole_episodes(tmp_path, placed):
  config = _config(tmp_path / 'data',
                   responder=f'{os.path.abspath(__file__)}:echo_responder')
  # The turn rewards through the term, or placed in the stream.
  config.reward.terms = (('exact_match', 1.0),) + (
      () if placed else (('turn_rewards', 1.0),))
  config.multiturn.place_turn_rewards = placed
  recipes.run(config, str(tmp_path / 'run'))
  records = writers.read_metrics(str(tmp_path / 'run'))
  train = [r for r in records if 'env/turns' in r]
  assert train and all(1.0 <= r['env/turns'] <= 2.0 for r in train)
  evals = [r for r in records if 'eval/env/turns' in r]
  assert [r['step'] for r in evals] == [0, 2]
  # The turn rewards (0.5 for each turn played) reach the reward.
  assert all(r['reward/mean'] >= 0.5 for r in train)
  # Samples read as the whole stream, observations included.
  with open(tmp_path / 'run' / 'samples' / '2.jsonl') as f:
    samples = [json.loads(line) for line in f]
  assert any('ok?' in s['completion'] for s in samples)


@pytest.mark.parametrize('overrides,message', [
    ({'rl.max_new_tokens': 10}, r'config\.rl\.max_new_tokens=12'),
    ({'rl.sampler': 'mcts'}, r'config\.rl\.sampler'),
    ({'multiturn.turn_tokens': 0}, r'config\.multiturn\.turn_tokens'),
    ({'multiturn.responder': 'nowhere.py:make'}, "no file 'nowhere.py'"),
    ({'tools.names': ('abacus',)}, r'config\.tools\.names'),
    ({'multiturn.place_turn_rewards': True,
      'reward.terms': (('exact_match', 1.0), ('turn_rewards', 1.0))},
     r'place_turn_rewards=True already adds'),
])
def test_bad_multiturn_settings_fail_before_compute(tmp_path, monkeypatch,
                                                    overrides, message):
  def no_data(*args, **kwargs):
    raise AssertionError('data was loaded before the config was checked')

  monkeypatch.setattr(text_rl, 'load_task', no_data)
  config = _config(tmp_path / 'data')
  config.update_from_flattened_dict(overrides)
  with pytest.raises(ValueError, match=message):
    recipes.run(config, str(tmp_path / 'run'))


def test_algorithms_that_decode_again_are_refused(tmp_path, monkeypatch):
  monkeypatch.setattr(text_rl, 'load_task', None)  # Never reached.
  config = _config(tmp_path / 'data')
  config.algo = algos.default_config('scst')
  config.rl.group_size = 1
  with pytest.raises(ValueError, match=r"config\.algo\.name='scst'"):
    recipes.run(config, str(tmp_path / 'run'))
