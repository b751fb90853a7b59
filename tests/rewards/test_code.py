"""The unit-test reward: hand-counted passes, through the registry in jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import rewards
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.rewards import code
from tests.rewards import texts as texts_lib

TOK = ByteTokenizer()
TESTS = 'from math import pi\nassert add(1, 2) == 3\nx = 10\n' \
        'assert add(x, -x) == 0\nassert add(2, 2) == 5\nassert add(0, 0) == 0\n'


def test_extract_code():
  assert code.extract_code('plain') == 'plain'
  text = 'Try:\n```\nx = 1\n```\nthen\n```python\ny = 2\n```\n```py\nz = 3\n```'
  assert code.extract_code(text) == 'z = 3\n'
  assert code.extract_code('```js\nvar a;\n```') == 'var a;\n'


def test_counts_each_assert():
  assert code.split_tests(TESTS)[1] == (True, 'assert add(1, 2) == 3')
  good = '```python\ndef add(a, b):\n  print("noise")\n  return a + b\n```'
  # Three of the four asserts hold for a correct add (one expects 5).
  assert code.unit_tests(good, tests=TESTS, timeout_s=5) == 0.75
  assert code.unit_tests('def add(a, b): return 3', tests=TESTS,
                         timeout_s=5) == 0.25
  assert code.unit_tests('raise ValueError', tests=TESTS, timeout_s=5) == 0.0
  assert code.unit_tests('def add(', tests=TESTS, timeout_s=5) == 0.0


def test_hang_keeps_earlier_passes_and_forged_output_does_not_count():
  hangs = ('def add(a, b):\n  if a == 2:\n    while True: pass\n'
           '  return a + b\n')
  assert code.unit_tests(hangs, tests=TESTS, timeout_s=1) == 0.5
  forger = ('import os, sys\ndef add(a, b): return -1\n'
            "for i in range(9):\n  os.write(1, b'%d\\n' % i)\n"
            "  sys.__stdout__.write('tag %d\\n' % i)\n")
  assert code.unit_tests(forger, tests=TESTS, timeout_s=5) == 0.0
  with pytest.raises(ValueError, match='no top-level assert'):
    code.unit_tests('pass', tests='x = 1')


def test_registered_reward_in_jit():
  texts = ['def add(a, b): return a + b', 'def add(a, b): return a - b']
  rollout = texts_lib.rollout(TOK, texts)
  tests = ['assert add(1, 2) == 3\nassert add(0, 0) == 0', 'nonsense(']
  batch = {'tests': jnp.asarray(rewards.fields.encode_texts(tests, 64))}
  reward = rewards.make({'unit_tests': 1.0}, tokenizer=TOK, fields=('tests',))
  value, failed = jax.jit(reward.with_failures)(rollout, batch)
  # Item 1's tests do not parse: a failed item, penalty 0.
  np.testing.assert_allclose(value, [1.0, 0.0])
  np.testing.assert_array_equal(failed, [False, True])
  with pytest.raises(ValueError, match=r"'tests' \(config.reward.tests_field"):
    rewards.make({'unit_tests': 1.0}, tokenizer=TOK, fields=('answer',))
