"""Text rewards against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import rewards
from jaxrlgen.core.types import Rollout
from jaxrlgen.data.tokenizer import ByteTokenizer

TOK = ByteTokenizer()
T = 6


def make_rollout(texts, eos=True):
  """Completions as byte tokens, EOS-terminated, padded to T."""
  rows, masks = [], []
  for text in texts:
    ids = TOK.encode(text) + ([TOK.eos_id] if eos else [])
    ids = ids[:T]
    rows.append(ids + [TOK.pad_id] * (T - len(ids)))
    masks.append([True] * len(ids) + [False] * (T - len(ids)))
  actions = jnp.asarray(rows, jnp.int32)
  return Rollout(context={}, actions=actions,
                 logp=jnp.zeros(actions.shape), mask=jnp.asarray(masks))


def test_parse_integer():
  texts = ['42', '-7', '007', '', '4a', '-', '12-', '1 2']
  rollout = make_rollout(texts)
  value, ok = jax.jit(rewards.text.parse_integer, static_argnums=2)(
      rollout.actions, rollout.mask, TOK.eos_id)
  np.testing.assert_array_equal(ok, [1, 1, 1, 0, 0, 0, 0, 0])
  np.testing.assert_array_equal(value, [42, -7, 7, 0, 0, 0, 0, 0])


def test_parse_integer_without_eos_uses_the_whole_budget():
  rollout = make_rollout(['123456'], eos=False)
  value, ok = rewards.text.parse_integer(rollout.actions, rollout.mask, TOK.eos_id)
  assert bool(ok[0]) and int(value[0]) == 123456


def test_exact_match_format_and_length():
  rollout = make_rollout(['42', '41', 'x', '42'])
  rollout = rollout.replace(mask=rollout.mask.at[3, 2].set(True)
                            .at[3, 3].set(True))  # Padding after EOS is junk.
  batch = {'answer': jnp.array([42, 42, 42, 42])}
  reward_fn = rewards.make({'exact_match': 1.0}, tokenizer=TOK)
  np.testing.assert_array_equal(jax.jit(reward_fn)(rollout, batch),
                                [1, 0, 0, 0])
  fmt = rewards.make({'format': 1.0}, tokenizer=TOK)(rollout, batch)
  np.testing.assert_array_equal(fmt, [1, 1, 0, 0])
  pen = rewards.make({'length_penalty': 1.0}, tokenizer=TOK, target_length=2)(
      rollout, batch)
  # Lengths incl. EOS: 3, 3, 2, 4 -> excess 1, 1, 0, 2 over T=6.
  np.testing.assert_allclose(pen, [-1 / 6, -1 / 6, 0, -2 / 6], rtol=1e-6)


def test_weighted_sum():
  rollout = make_rollout(['42', '5'])
  batch = {'answer': jnp.array([42, 42])}
  reward_fn = rewards.make({'exact_match': 2.0, 'format': 0.5}, tokenizer=TOK)
  np.testing.assert_allclose(reward_fn(rollout, batch), [2.5, 0.5])


def test_unknown_reward_lists_known_ones():
  with pytest.raises(ValueError, match='known'):
    rewards.make({'exactmatch': 1.0}, tokenizer=TOK)


def test_target_match_compares_tokens_up_to_eos():
  rollout = make_rollout(['ab', 'abc', 'a', 'ba'])
  target = jnp.array([[ord('a'), ord('b'), TOK.eos_id, TOK.pad_id]] * 4)
  mask = jnp.array([[True, True, True, False]] * 4)
  reward = rewards.make({'target_match': 1.0}, tokenizer=TOK)
  np.testing.assert_array_equal(
      reward(rollout, {'target': target, 'target_mask': mask}), [1, 0, 0, 0])


def test_one_registry_for_text_and_image_rewards(tmp_path):
  assert {'exact_match', 'brightness', 'png_compressibility'} <= set(
      rewards.REWARDS.names())
  # A denoising run accepts only the rewards that read images.
  with pytest.raises(ValueError, match="'exact_match', which does not apply"):
    rewards.image.check_terms({'exact_match': 1.0})
  # A factory of one's own, by import path, beside a registered reward.
  (tmp_path / 'mine.py').write_text(
      'def make_length(**context):\n'
      '  return lambda rollout, batch: rollout.mask.sum(axis=1) * 1.0\n')
  reward = rewards.make({f'{tmp_path}/mine.py:make_length': 0.5,
                         'format': 1.0}, tokenizer=TOK)
  rollout = make_rollout(['42', 'x'])
  np.testing.assert_allclose(reward(rollout, {}), [1 + 1.5, 1.0])
