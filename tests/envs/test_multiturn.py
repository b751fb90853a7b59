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
from jaxrlgen.core import returns
from jaxrlgen.core import rollout as rollout_lib
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


@pytest.fixture(scope='module')
def episodes():
  """16 episodes of the CopyGame (every prompt's secret 9, as the host
  responder's test needs), compiled once for the tests that read them."""
  env, params, batch = _env(num_samples=4)
  batch = {**batch, 'secret': jnp.full((4,), 9)}
  rollout = _rollout(env, params, batch, seed=7)
  return env, params, batch, rollout


def test_stream_layout_budgets_and_loss_mask(episodes):
  env, _, batch, r = episodes
  r = jax.device_get(r)
  m, o, g = 3, 3, 4
  assert r.actions.shape == (16, env.turns.length) == (16, 2 * m + o)
  attend = r.context['attend']
  for i in range(16):
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
                                  [SAY, batch['secret'][i // g]])
    assert attend[i, obs][-2:].all() and not attend[i, obs][:-2].any()
    assert r.mask[i, turn2][0]
  # Turn rewards: only the last turn pays, 1 for copying the secret.
  first = r.actions[:, m + o]
  played = r.mask[:, m + o]
  want = (played & (first == np.repeat(batch['secret'], g))).astype(float)
  np.testing.assert_array_equal(r.context['turn_rewards'][:, 1], want)
  np.testing.assert_array_equal(r.context['turn_rewards'][:, 0], 0)


def _assert_cached_equals_teacher_forced(env, params, r):
  out = jax.jit(env.evaluate)(params, r)
  np.testing.assert_allclose(np.where(r.mask, out.logp, 0.0),
                             np.where(r.mask, r.logp, 0.0), atol=2e-5)
  return np.asarray(out.logp)


def test_cached_logprobs_equal_teacher_forced_and_are_token_exact(episodes):
  """The rollout's log-probs are the teacher-forced pass's; and each
  episode, with its padding slots removed, is one plain sequence: a
  single-turn pass over prompt + those tokens gives the model tokens the
  same log-probs."""
  env, params, _, r = episodes
  got = _assert_cached_equals_teacher_forced(env, params, r)
  r = jax.device_get(r)
  b, t = r.actions.shape
  actions = np.full((b, t), toy.PAD, np.int32)
  for i in range(b):  # Each episode's real tokens, packed to the front.
    tokens = r.actions[i][r.context['attend'][i]]
    actions[i, :len(tokens)] = tokens
  plain = TextEnv(env.policy, max_new_tokens=t, eos_id=toy.EOS,
                  pad_id=toy.PAD)
  single = Rollout(context={'tokens': r.context['tokens'],
                            'mask': r.context['mask']},
                   actions=jnp.asarray(actions), logp=jnp.zeros((b, t)),
                   mask=jnp.ones((b, t), bool))
  want = np.asarray(jax.jit(plain.evaluate)(params, single).logp)
  for i in range(b):
    keep = r.context['attend'][i]
    model = r.mask[i][keep]  # The model's tokens among the real ones.
    np.testing.assert_allclose(got[i][r.mask[i]],
                               want[i, :int(keep.sum())][model], atol=2e-5)


@pytest.mark.slow
def test_cached_logprobs_equal_teacher_forced_without_stops():
  env, params, batch = _env(num_samples=4,
                            turns=multiturn.Turns(3, 4, 2))
  _assert_cached_equals_teacher_forced(
      env, params, _rollout(env, params, batch, seed=3))


class _IdsTokenizer:
  """Token ids written as space-separated numbers."""

  def decode(self, ids, stop_at_eos=False):
    del stop_at_eos
    return ' '.join(str(int(i)) for i in ids)

  def encode(self, text, add_eos=False):
    del add_eos
    return [int(t) for t in text.split()]


def test_host_responder_equals_the_game_in_jax(episodes):
  env, params, batch, want = episodes
  calls = []

  def host_game(turn, texts):
    calls.append((turn, list(texts)))
    return [multiturn.Reply(observation=f'{SAY} 9', done=turn >= 1,
                            reward=float(turn >= 1 and t.split()[:1] == ['9']))
            for t in texts]

  host = dataclasses_replace_responder(env, multiturn.HostResponder(
      host_game, _IdsTokenizer(), env.turns.observation_tokens, toy.PAD))
  got = _rollout(host, params, batch, seed=7)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got),
               jax.device_get(want))
  assert [turn for turn, _ in calls] == [0, 1]
  # The host saw each row's turn as text.
  r = jax.device_get(want)
  row0 = ' '.join(str(t) for t in r.actions[0, :3][r.mask[0, :3]])
  assert calls[0][1][0] == row0


def test_host_responder_reads_record_fields():
  # Every prompt its own secret: the host game says the row's secret, read
  # from the batch field, and must equal the game in JAX.
  env, params, batch = _env(num_samples=2)
  want = _rollout(env, params, batch, seed=5)
  seen = []

  def host_game(turn, texts, rows):
    seen.append([int(row['secret']) for row in rows])
    return [multiturn.Reply(
        observation=f'{SAY} {int(row["secret"])}', done=turn >= 1,
        reward=float(turn >= 1 and t.split()[:1] == [str(row['secret'])]))
            for t, row in zip(texts, rows)]

  host = dataclasses_replace_responder(env, multiturn.HostResponder(
      host_game, _IdsTokenizer(), env.turns.observation_tokens, toy.PAD,
      fields=('secret',)))
  got = _rollout(host, params, batch, seed=5)
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(got),
               jax.device_get(want))
  # Rows are the prompts' samples, repeated num_samples times.
  assert seen[0] == [8, 8, 9, 9, 10, 10, 11, 11]
  missing = dataclasses_replace_responder(env, multiturn.HostResponder(
      host_game, _IdsTokenizer(), env.turns.observation_tokens, toy.PAD,
      fields=('user',)))
  with pytest.raises(ValueError, match=r"no field \['user'\]"):
    _rollout(missing, params, batch)


def _np_placed(mask, turn_rewards, turns):
  """Each turn's reward at its last model token, by a loop."""
  out = np.zeros(mask.shape, np.float32)
  span = turns.turn_tokens + turns.observation_tokens
  for row in range(mask.shape[0]):
    for k in range(turns.max_turns):
      slots = [t for t in range(k * span, k * span + turns.turn_tokens)
               if mask[row, t]]
      if slots:
        out[row, slots[-1]] += turn_rewards[row, k]
  return out


def test_placed_turn_rewards_reach_the_return_and_the_critic():
  env, params, batch = _env(num_samples=2, value_head=True)

  def host_game(turn, texts, rows):
    # 0.5 for the first turn, 1 for copying the secret in the second.
    return [multiturn.Reply(
        observation=f'{SAY} {int(row["secret"])}', done=turn >= 1,
        reward=0.5 if turn == 0 else float(
            t.split()[:1] == [str(row['secret'])]))
            for t, row in zip(texts, rows)]

  import dataclasses  # pylint: disable=g-import-not-at-top
  env = dataclasses.replace(env, place_turn_rewards=True, responder=(
      multiturn.HostResponder(host_game, _IdsTokenizer(),
                              env.turns.observation_tokens, toy.PAD,
                              fields=('secret',))))
  r = _rollout(env, params, batch, seed=5)
  mask = np.asarray(r.mask)
  turn_rewards = np.asarray(r.context['turn_rewards'])
  assert turn_rewards[:, 0].min() == 0.5  # Every row spoke twice or once.
  placed = _np_placed(mask, turn_rewards, env.turns)
  np.testing.assert_allclose(r.context['step_rewards'], placed)
  # The return: the task's reward (0.25 here) plus every turn's.
  per_seq = rollout_lib.repeat_batch(batch, 2)
  total, _ = rollout_lib.score(
      lambda ro, b: jnp.full((ro.batch_size,), 0.25), r, per_seq)
  np.testing.assert_allclose(total, 0.25 + turn_rewards.sum(axis=1),
                             rtol=1e-6)
  # PPO's critic targets: GAE over the turn rewards where they were earned,
  # and the task's reward at the episode's last token.
  config = algos.default_config('ppo')
  config.update(kl_coef=0.0, gamma=0.9, lambda_=0.8)
  algo = algos.make(config)
  state = toy.train_state(algo, env, params, batch, optax.adam(1e-3))
  experience, _, _ = algo.prepare(env, state, r, total, jax.random.key(0))
  tokens = placed.copy()
  last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
  tokens[np.arange(len(last)), last] += 0.25
  values = env.evaluate(state.params, r, with_values=True).values
  want = returns.generalized_advantage_estimation(
      jnp.asarray(tokens), values, r.mask, gamma=0.9, lambda_=0.8
  ) + jnp.where(r.mask, values, 0.0)
  np.testing.assert_allclose(np.where(mask, experience.value_targets, 0.0),
                             np.where(mask, want, 0.0), rtol=1e-5, atol=1e-6)


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


def _learn(name, overrides, num_steps, seed=0, lr=1e-2, placed=False):
  env, params, _ = _env(num_samples=8, value_head=name == 'ppo')
  config = algos.default_config(name)
  for key, value in overrides.items():
    setattr(config, key, value)
  algo = algos.make(config)
  tx = optax.adam(lr)
  reward_fn = rewards.REWARDS.get('turn_rewards')()
  if placed:  # The turn rewards come in the stream alone.
    import dataclasses  # pylint: disable=g-import-not-at-top
    env = dataclasses.replace(env, place_turn_rewards=True)
    reward_fn = lambda rollout, batch: jnp.zeros((rollout.batch_size,))
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
@pytest.mark.parametrize('name,overrides,lr,placed', [
    ('grpo', {'beta': 0.0}, 1e-2, False),
    ('ppo', {'kl_coef': 0.0}, 3e-3, False),
    ('ppo', {'kl_coef': 0.0}, 3e-3, True),
    ('reinforce', {}, 1e-2, False),
])
def test_algorithms_learn_to_read_the_observation(name, overrides, lr, placed):
  """From about 1/16 (ignoring the observation) to most of the optimal 1.
  Each step draws new secrets, so a policy that copies some of the 8 and
  not others scores unevenly from step to step: the margin is on the mean
  of the last 10 steps. `placed`: the turn rewards in the stream."""
  history, metrics = _learn(name, overrides, num_steps=80, lr=lr,
                            placed=placed)
  assert np.mean(history[:5]) < 0.25, history
  assert np.mean(history[-10:]) > 0.6, history
  assert float(metrics['env/turns']) > 1.5


# Text algorithms that take a multi-turn rollout as it is: all but those
# that decode the prompts again (SCST and ReMax's greedy baseline cannot
# replay the environment; the recipe refuses them) and MCTS expert
# iteration, which learns from a search's rollouts.
EVERY = ('a2c', 'dapo', 'dqn', 'dr_grpo', 'grpo', 'gspo', 'ilql', 'impala',
         'online_dpo', 'ppo', 'reinforce', 'rloo', 'sac', 'sql')


@pytest.mark.slow
@pytest.mark.parametrize('name', EVERY)
def test_every_text_algorithm_trains_on_episodes(name):
  env, params, _ = _env(num_samples=4, value_head=name in ('a2c', 'impala',
                                                          'ppo'))
  algo = algos.make(algos.default_config(name))
  tx = optax.adam(1e-3)
  reward_fn = rewards.REWARDS.get('turn_rewards')()
  state = toy.train_state(algo, env, params, _batch(jax.random.key(0)), tx)
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=reward_fn, algo=algo, tx=tx))
  before = jax.tree.map(np.asarray, state.params)
  for i in range(2):
    key = jax.random.key(i)
    state, metrics = step(state, _batch(key), key)
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  moved = jax.tree.leaves(jax.tree.map(
      lambda a, b: not np.array_equal(a, np.asarray(b)), before,
      state.params))
  assert any(moved)
