"""experiments/tool_use: the committed data is the generator's, and every
demonstration is an episode the calculator plays out exactly."""

import json
import os
import random

from experiments.tool_use import make_data
from experiments.tool_use import responders
from jaxrlgen import tools
from jaxrlgen.envs import multiturn


def _read(name):
  with open(os.path.join(make_data.DATA, name)) as f:
    return [json.loads(line) for line in f]


def test_data_is_the_generators_and_splits_are_disjoint():
  train, test = _read('train.jsonl'), _read('test.jsonl')
  rng, seen = random.Random(make_data.SEED), set()
  want_test = make_data.problems(rng, make_data.NUM_TEST, seen)
  want_train = make_data.problems(rng, make_data.NUM_TRAIN, seen)
  assert test == [make_data.record(a, b) for a, b in want_test]
  assert train == [make_data.record(a, b) for a, b in want_train]
  pair = lambda r: frozenset(r['prompt'][:-1].split('*'))
  assert not {pair(r) for r in train} & {pair(r) for r in test}


def test_demonstrations_are_what_the_calculator_answers():
  toolset = tools.make(tools.ToolsConfig(names=('calculator',)))
  replies = multiturn.tool_replies(toolset, last_turn=1)
  records = _read('test.jsonl')[:50] + _read('train.jsonl')[:50]
  for r in records:
    a, b = (int(x) for x in r['prompt'][:-1].split('*'))
    turn_1 = r['completion'][:r['completion'].index('</tool>') + 7]
    reply, = replies(0, [turn_1])
    assert not reply.done and not reply.failed
    assert r['completion'] == turn_1 + reply.observation + r['direct']
    assert r['answer'] == int(r['direct']) == a * b
    # The answer turn ends the episode; without the tool, calls are refused.
    assert replies(0, [r['direct']])[0].done
    refused, answered = responders._replies(1)(0, [turn_1, r['direct']])
    assert refused.observation == responders.OBSERVATION and not refused.done
    assert answered.done
