"""Rewards by import path: per-item functions, JAX rewards and factories
told apart by signature; wrong signatures and missing fields fail before
compute; a raising item costs a penalty and is counted."""

import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import rewards
from jaxrlgen.core.types import Rollout
from jaxrlgen.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
SCORING = '''
import jax.numpy as jnp


def score(completion, answer, prompt, bonus=0.0):
  if completion == 'boom':
    raise RuntimeError('checker crashed')
  return float(completion.strip() == answer) + bonus + 0.5 * (prompt == 'p1')


def everything(completion, **fields):
  return float(sorted(fields) == ['answer', 'n']) + fields['n']


def length(rollout, batch):
  return jnp.sum(rollout.mask, axis=1) * 1.0


def make_scaled(*, tokenizer, target_length=0, **unused):
  return lambda rollout, batch: jnp.full((rollout.batch_size,), 2.0)


def text_first(text, answer):
  return 1.0


def wants_date(completion, date):
  return 1.0
'''


def text_rollout(completions, prompts):
  """Byte-token completions (EOS-terminated) with their prompts."""
  def pad(texts, eos):
    ids = [TOK.encode(t, add_eos=eos) for t in texts]
    return TOK.pad_batch(ids, max(map(len, ids)), 'right')
  actions, mask = pad(completions, True)
  tokens, prompt_mask = pad(prompts, False)
  return Rollout(context={'tokens': jnp.asarray(tokens),
                          'mask': jnp.asarray(prompt_mask)},
                 actions=jnp.asarray(actions), logp=jnp.zeros(actions.shape),
                 mask=jnp.asarray(mask))


def _batch(answers, ns):
  width = max(len(a.encode()) for a in answers)
  return {'answer': jnp.asarray(rewards.fields.encode_texts(answers, width)),
          'n': jnp.asarray(ns, jnp.int32)}


@pytest.fixture()
def module(tmp_path, monkeypatch):
  (tmp_path / 'scoring.py').write_text(SCORING)
  (tmp_path / 'mypkg').mkdir()
  (tmp_path / 'mypkg' / '__init__.py').write_text('')
  (tmp_path / 'mypkg' / 'scoring.py').write_text(SCORING)
  monkeypatch.syspath_prepend(str(tmp_path))
  yield tmp_path
  for name in [m for m in sys.modules if m.startswith('mypkg')]:
    monkeypatch.delitem(sys.modules, name)


def test_item_function_from_file_and_module_with_penalty(module):
  rollout = text_rollout(['4', ' 5 ', 'boom', 'x'], ['p0', 'p1', 'p2', 'p3'])
  batch = _batch(['4', '5', '6', 'y'], [0, 1, 2, 3])
  context = dict(tokenizer=TOK, fields=('answer', 'n'), penalty=-1.0)
  for path in (f'{module}/scoring.py:score', 'mypkg.scoring:score'):
    reward = rewards.make(((path, 1.0), ('length_penalty', 0.0)), **context)
    value, failed = jax.jit(reward.with_failures)(rollout, batch)
    np.testing.assert_allclose(value, [1.0, 1.5, -1.0, 0.0])
    np.testing.assert_array_equal(failed, [False, False, True, False])
  # **fields gets every field of the task; numbers arrive as numbers.
  reward = rewards.make({'mypkg.scoring:everything': 1.0}, **context)
  np.testing.assert_allclose(reward(rollout, batch), [1, 2, 3, 4])


def test_jax_reward_and_factory_by_path(module):
  rollout = text_rollout(['ab', 'c'], ['p', 'q'])
  reward = rewards.make({'mypkg.scoring:length': 1.0,
                         f'{module}/scoring.py:make_scaled': 0.5},
                        tokenizer=TOK, fields=('answer',), target_length=3)
  np.testing.assert_allclose(jax.jit(reward)(rollout, {}), [3 + 1, 2 + 1])


def test_wrong_signature_and_missing_field_fail_before_compute(module):
  context = dict(tokenizer=TOK, fields=('answer', 'n'))
  with pytest.raises(ValueError) as e:
    rewards.make({'mypkg.scoring:text_first': 1.0}, **context)
  msg = str(e.value)
  assert 'config.reward.fn / config.reward.terms' in msg
  assert "'completion'" in msg and 'text_first(text, answer)' in msg
  with pytest.raises(ValueError, match=r"\['date'\], which are not fields"):
    rewards.make({'mypkg.scoring:wants_date': 1.0}, **context)
  with pytest.raises(ValueError, match="module 'mypkg.nope' does not import"):
    rewards.make({'mypkg.nope:score': 1.0}, **context)
  with pytest.raises(ValueError, match="has no attribute 'missing'"):
    rewards.make({'mypkg.scoring:missing': 1.0}, **context)
  # check_terms alone (no context) already rejects the signature.
  with pytest.raises(ValueError, match='none of the accepted forms'):
    rewards.check_terms({'mypkg.scoring:text_first': 1.0})
