"""jaxrlgen/envs/multiturn.py: the stream's layout and budgets, cached
against teacher-forced log-probs, token-exactness against a single-turn
pass over the same tokens without padding, a host responder against the
same game in JAX, and GRPO, PPO and REINFORCE learning a game that needs
the observation (envs/games.CopyGame, optimal return 1)."""

import functools
import sys
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen import rewards
from jaxrlgen.core.types import Rollout
from jaxrlgen.envs import games
from jaxrlgen.envs import multiturn
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.train import step as step_lib

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(__file__)),
                                'algos'))
import toy  # pylint: disable=g-import-not-at-top,wrong-import-position

STOP = 3  # A one-token stop sequence: the toy's "tool call" close tag.
SAY = 4  # The game's control token before the secret.
SECRETS = (8, 9, 10, 11, 12, 13, 14, 15)


def _env(num_samples=4, turns=None, value_head=False):
  env, params, batch = toy.setup(num_samples=num_samples, num_prompts=4,
                                 max_seq_len=24, value_head=value_head)
  turns = turns or multiturn.Turns(max_turns=2, turn_tokens=3,
                                   observation_tokens=3,
                                   stop_sequences=((STOP,), (6, 7)))
  game = games.CopyGame(turns.observation_tokens, toy.PAD, prefix=(SAY,))
  batch = {**batch, 'secret': jnp.array([8, 9, 10, 11])}
  return multiturn.MultiTurnEnv.wrap(env, turns, game), params, batch


def _rollout(env, params, batch, seed=0):
  return jax.jit(env.rollout)(params, batch, jax.random.key(seed))


def test_stream_layout_budgets_and_loss_mask():
  env, params, batch = _env(num_samples=8)
  r = jax.device_get(_rollout(env, params, batch))
  m, o = 3, 3
  assert r.actions.shape == (32, env.turns.length) == (32, 2 * m + o)
  attend = r.context['attend']
  for i in range(32):
    turn1, obs, turn2 = (slice(0, m), slice(m, m + o),
                         slice(m + o, 2 * m + o))
    # The loss mask covers model tokens only; they are attended to.
    assert not r.mask[i, obs].any()
    assert (attend[i][r.mask[i]]).all()
    spoken = r.actions[i, turn1][r.mask[i, turn1]]
    ended = toy.EOS in spoken
    # A turn is a prefix of its block, ending at EOS or a stop sequence.
    n = int(r.mask[i, turn1].sum())
    assert r.mask[i, turn1][:n].all() and not r.mask[i, turn1][n:].any()
    cut = [j for j in range(n) if spoken[j] in (STOP, toy.EOS)
           or tuple(spoken[max(j - 1, 0):j + 1]) == (6, 7)]
    assert n == (cut[0] + 1 if cut else m), (spoken, cut)
    if ended:  # EOS ends the episode: nothing after it is attended.
      assert not attend[i, m:].any()
      continue
    # The observation: right-aligned, the control token then the secret.
    np.testing.assert_array_equal(r.actions[i, obs][attend[i, obs]],
                                  [SAY, batch['secret'][i // 8]])
    assert attend[i, obs][-2:].all() and not attend[i, obs][:-2].any()
    assert r.mask[i, turn2][0]
  # Turn rewards: only the last turn pays, 1 for copying the secret.
  first = r.actions[:, m + o]
  played = r.mask[:, m + o]
  want = (played & (first == np.repeat(batch['secret'], 8))).astype(float)
  np.testing.assert_array_equal(r.context['turn_rewards'][:, 1], want)
  np.testing.assert_array_equal(r.context['turn_rewards'][:, 0], 0)


@pytest.mark.parametrize('turns', [
    multiturn.Turns(2, 3, 3, ((STOP,),)),
    multiturn.Turns(3, 4, 2),  # No stops: every turn runs its budget.
])
def test_cached_logprobs_equal_teacher_forced(turns):
  env, params, batch = _env(num_samples=4, turns=turns)
  r = _rollout(env, params, batch, seed=3)
  out = jax.jit(env.evaluate)(params, r)
  np.testing.assert_allclose(np.where(r.mask, out.logp, 0.0),
                             np.where(r.mask, r.logp, 0.0), atol=2e-5)


def test_stream_is_token_exact():
  """Each episode, with its padding slots removed, is one plain sequence:
  a single-turn pass over prompt + those tokens gives the model tokens the
  same log-probs."""
  env, params, batch = _env(num_samples=4)
  r = jax.device_get(_rollout(env, params, batch, seed=5))
  plain = TextEnv(env.policy, max_new_tokens=env.turns.length,
                  eos_id=toy.EOS, pad_id=toy.PAD)
  got = np.asarray(jax.jit(env.evaluate)(params, r).logp)
  for i in range(r.actions.shape[0]):
    keep = r.context['attend'][i]
    tokens = r.actions[i][keep]
    actions = np.full((1, env.turns.length), toy.PAD, np.int32)
    actions[0, :len(tokens)] = tokens
    single = Rollout(
        context={'tokens': r.context['tokens'][i:i + 1],
                 'mask': r.context['mask'][i:i + 1]},
        actions=jnp.asarray(actions), logp=jnp.zeros((1, actions.shape[1])),
        mask=jnp.ones((1, actions.shape[1]), bool))
    want = np.asarray(plain.evaluate(params, single).logp)[0, :len(tokens)]
    model = r.mask[i][keep]  # The model's tokens among the kept ones.
    np.testing.assert_allclose(got[i][r.mask[i]], want[model], atol=2e-5)


def _copy_game_on_host(turn, texts, *, tokenizer_secret):
  """CopyGame in Python: the same answers through the host callback."""
  del tokenizer_secret
  return [multiturn.Reply(observation=f'{SAY} {9}', done=turn >= 1)
          for _ in texts]


class _IdsTokenizer:
  """Token ids written as space-separated numbers."""

  def decode(self, ids, stop_at_eos=False):
    del stop_at_eos
    return ' '.join(str(int(i)) for i in ids)

  def encode(self, text, add_eos=False):
    del add_eos
    return [int(t) for t in text.split()]


def test_host_responder_equals_the_game_in_jax():
  env, params, batch = _env(num_samples=4)
  batch = {**batch, 'secret': jnp.full((4,), 9)}
  calls = []

  def host_game(turn, texts):
    calls.append((turn, list(texts)))
    return [multiturn.Reply(observation=f'{SAY} 9', done=turn >= 1,
                            reward=float(turn >= 1 and t.split()[:1] == ['9']))
            for t in texts]

  host = dataclasses_replace_responder(env, multiturn.HostResponder(
      host_game, _IdsTokenizer(), env.turns.observation_tokens, toy.PAD))
  want = _rollout(env, params, batch, seed=7)
  got = _rollout(host, params, batch, seed=7)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got),
               jax.device_get(want))
  assert [turn for turn, _ in calls] == [0, 1]
  # The host saw each row's turn as text.
  r = jax.device_get(want)
  row0 = ' '.join(str(t) for t in r.actions[0, :3][r.mask[0, :3]])
  assert calls[0][1][0] == row0


def dataclasses_replace_responder(env, responder):
  import dataclasses  # pylint: disable=g-import-not-at-top
  return dataclasses.replace(env, responder=responder)


def test_bad_turns_and_envs_are_refused():
  with pytest.raises(ValueError, match='turns.turn_tokens=0'):
    multiturn.Turns(2, 0, 3)
  with pytest.raises(ValueError, match='stop_sequences'):
    multiturn.Turns(2, 3, 3, ((),))
  env, _, _ = _env()
  with pytest.raises(ValueError, match='stream length'):
    multiturn.MultiTurnEnv(**{**{f: getattr(env, f) for f in (
        'policy', 'eos_id', 'pad_id')}, 'max_new_tokens': 5,
        'turns': env.turns, 'responder': env.responder})
  with pytest.raises(ValueError, match='observation_tokens=1 must hold'):
    games.CopyGame(1, toy.PAD, prefix=(SAY,))


def _learn(name, overrides, num_steps, seed=0, lr=1e-2):
  env, params, _ = _env(num_samples=8, value_head=name == 'ppo')
  config = algos.default_config(name)
  for key, value in overrides.items():
    setattr(config, key, value)
  algo = algos.make(config)
  tx = optax.adam(lr)
  reward_fn = rewards.REWARDS.get('turn_rewards')()
  state = toy.train_state(algo, env, params, _batch(jax.random.key(0)), tx)
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=reward_fn, algo=algo, tx=tx),
                 donate_argnums=0)
  history = []
  for i in range(num_steps):
    key = jax.random.key(seed * 1000 + i)
    state, metrics = step(state, _batch(key), key)
    history.append(float(metrics['reward/mean']))
  return history, metrics


def _batch(key):
  """4 prompts, each its own secret (drawn anew every step)."""
  secret = jax.random.choice(key, jnp.asarray(SECRETS), (4,))
  return {'prompt': jnp.full((4, 3), 7, jnp.int32),
          'prompt_mask': jnp.ones((4, 3), bool), 'secret': secret}


@pytest.mark.slow
@pytest.mark.parametrize('name,overrides,lr', [
    ('grpo', {'beta': 0.0}, 1e-2),
    ('ppo', {'kl_coef': 0.0}, 3e-3),
    ('reinforce', {}, 1e-2),
])
def test_algorithms_learn_to_read_the_observation(name, overrides, lr):
  """From about 1/16 (ignoring the observation) to most of the optimal 1.
  Each step draws new secrets, so a policy that copies some of the 8 and
  not others scores unevenly from step to step: the margin is on the mean
  of the last 10 steps."""
  history, metrics = _learn(name, overrides, num_steps=80, lr=lr)
  assert np.mean(history[:5]) < 0.25, history
  assert np.mean(history[-10:]) > 0.6, history
  assert float(metrics['env/turns']) > 1.5
