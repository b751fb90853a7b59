"""Built-in verifiers against hand-written cases, and through the registry
with a text answer field inside jit."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import rewards
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.rewards import verifiers
from tests.rewards import texts as texts_lib

TOK = ByteTokenizer()


@pytest.mark.parametrize('completion,answer,want', [
    ('  Paris \n', 'Paris', 1.0), ('New   York', 'New York', 1.0),
    ('paris', 'Paris', 0.0), ('12', 12, 1.0), ('', '', 1.0)])
def test_exact_string(completion, answer, want):
  assert verifiers.exact_string(completion, answer) == want


@pytest.mark.parametrize('completion,answer,want', [
    ('so the total is 1,234.5 dollars', 1234.5, 1.0),
    ('3 apples then 7', 7, 1.0), ('7 then 3', 7, 0.0),
    ('-0.25', '#### -.25', 1.0), ('no number', 3, 0.0),
    ('1e3', 1000, 1.0), ('1000.0000001', 1000, 1.0), ('1000.01', 1000, 0.0)])
def test_numeric_answer(completion, answer, want):
  assert verifiers.numeric_answer(completion, answer) == want
  with pytest.raises(ValueError, match='holds no number'):
    verifiers.numeric_answer('1', 'none')


@pytest.mark.parametrize('completion,answer,want', [
    (r'The answer is $\boxed{\frac{1}{2}}$.', '0.5', 1.0),
    ('0.5', r'\frac12', 1.0), ('0.5', r'\boxed{1/2}', 1.0),
    (r'so $x = \boxed{3}$', '3', 1.0), (r'\boxed{4}', '3', 0.0),
    ('I do not know', '3', 0.0), (r'$\sqrt{2}/2$', r'\frac{\sqrt2}{2}', 1.0)])
def test_math_answer(completion, answer, want):
  pytest.importorskip('math_verify')
  assert verifiers.math_answer(completion, answer) == want


def test_registry_fields_pattern_and_errors_in_jit():
  texts = ['<a>\n1</a>', 'no', '<a>2</a>']
  rollout = texts_lib.rollout(TOK, texts)
  gold = ['<a>\n1</a>', 'yes', '2']
  batch = {'solution': jnp.asarray(rewards.fields.encode_texts(gold, 12))}
  reward = rewards.make(
      {'exact_string': 1.0, 'numeric_answer': 10.0, 'regex_format': 100.0},
      tokenizer=TOK, fields=('solution',), answer_field='solution',
      format_pattern=r'^<a>.*</a>$')
  value, failed = jax.jit(reward.with_failures)(rollout, batch)
  # numeric_answer fails on 'yes' (no number): penalty 0, counted.
  np.testing.assert_allclose(value, [111, 0, 110])
  np.testing.assert_array_equal(failed, [False, True, False])
  with pytest.raises(ValueError, match=r"'answer' \(config.reward.answer_"
                     r"field\), which the task's records lack"):
    rewards.make({'exact_string': 1.0}, tokenizer=TOK, fields=('solution',))
  with pytest.raises(ValueError, match='config.reward.format_pattern'):
    rewards.make({'regex_format': 1.0}, tokenizer=TOK)
  with pytest.raises(ValueError, match=r"format_pattern='\(' is not"):
    rewards.make({'regex_format': 1.0}, tokenizer=TOK, format_pattern='(')
