"""Host rewards: a direct call's numbers, failures as penalties, in jit."""

import functools
import re
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.rewards import host
from jaxrlgen.rewards import text as text_rewards
from jaxrlgen.train import host_step
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy

TOK = ByteTokenizer()


def weighted_sum(x, w):
  return float(np.dot(x, w))


def test_batch_matches_direct_calls_eagerly_and_in_jit():
  x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
  w = np.arange(6 * 3, dtype=np.float32).reshape(6, 3) / 10
  want = np.array([weighted_sum(a, b) for a, b in zip(x, w)], np.float32)
  call = host.host_reward(weighted_sum, max_workers=2)
  for f in (call, jax.jit(call)):
    rewards, failed = f(jnp.asarray(x), jnp.asarray(w))
    np.testing.assert_allclose(rewards, want, rtol=1e-6)
    assert rewards.dtype == jnp.float32 and not np.any(failed)
  # Under vmap each mapped element is one batch of the callback.
  rewards, failed = jax.vmap(call)(jnp.stack([x, -x]), jnp.stack([w, w]))
  np.testing.assert_allclose(rewards, np.stack([want, -want]), rtol=1e-6)
  assert failed.shape == (2, 6)


def test_exception_and_non_finite_give_penalty_and_flag():
  def fragile(i):
    if i == 1:
      raise RuntimeError('checker crashed')
    if i == 2:
      return float('nan')
    if i == 3:
      return 'not a number'
    return float(i)

  rewards, failed = jax.jit(host.host_reward(fragile, penalty=-1.0))(
      jnp.arange(5))
  np.testing.assert_array_equal(rewards, [0.0, -1.0, -1.0, -1.0, 4.0])
  np.testing.assert_array_equal(failed, [False, True, True, True, False])


def test_timeout_gives_penalty_without_waiting_for_the_slow_item():
  def slow_on_odd(i):
    if i % 2:
      time.sleep(5.0)
    return 1.0

  call = jax.jit(host.host_reward(slow_on_odd, penalty=-2.0, timeout_s=0.3,
                                  max_workers=2))
  start = time.monotonic()
  rewards, failed = call(jnp.arange(4))
  rewards.block_until_ready()
  elapsed = time.monotonic() - start
  np.testing.assert_array_equal(rewards, [1.0, -2.0, 1.0, -2.0])
  np.testing.assert_array_equal(failed, [False, True, False, True])
  # Two slots: the hung item 1 is abandoned at 0.3 s and frees its slot for
  # item 3, which times out by ~0.6 s; far below the 5 s sleep.
  assert elapsed < 3.0, elapsed


def _text_rollout(texts, prompts, t=8, p=6):
  actions, mask = TOK.pad_batch([TOK.encode(s, add_eos=True) for s in texts], t)
  prompt, prompt_mask = TOK.pad_batch([TOK.encode(s) for s in prompts], p,
                                      side='left')
  return Rollout(context={'tokens': jnp.asarray(prompt),
                          'mask': jnp.asarray(prompt_mask)},
                 actions=jnp.asarray(actions),
                 logp=jnp.zeros(actions.shape, jnp.float32),
                 mask=jnp.asarray(mask))


def regex_match(text, *, answer, prompt):
  """1 if the text is the answer as an integer; reads the prompt too."""
  assert prompt.endswith('=')
  if text == 'boom':
    raise ValueError('unparseable')
  return float(re.fullmatch(r'-?\d+', text) is not None
               and int(text) == int(answer))


def test_text_reward_equals_the_jax_exact_match():
  texts = ['12', '-3', 'x1', '7', 'boom']
  rollout = _text_rollout(texts, ['5+7=', '1-4=', '2+2=', '3+3=', '1+1='])
  batch = {'answer': jnp.asarray([12, -3, 1, 6, 2], jnp.int32)}
  reward = host.text_reward(regex_match, TOK, fields=('answer',),
                            with_prompt=True, penalty=-0.5)
  want = text_rewards.exact_match(rollout, batch, eos_id=TOK.eos_id)
  got, failed = jax.jit(reward.with_failures)(rollout, batch)
  np.testing.assert_array_equal(got[:4], want[:4])
  assert float(got[4]) == -0.5
  np.testing.assert_array_equal(failed, [0, 0, 0, 0, 1])
  np.testing.assert_array_equal(jax.jit(reward)(rollout, batch), got)
  host_got, host_failed = reward.host(rollout, batch)
  np.testing.assert_array_equal(host_got, got)
  np.testing.assert_array_equal(host_failed, failed)
  # The reward satisfies the step's contract (checked on shapes only).
  step_lib.check_reward(reward, rollout, batch)


def test_missing_field_fails_naming_it():
  rollout = _text_rollout(['1'], ['1+0='])
  reward = host.text_reward(regex_match, TOK, fields=('answer',))
  try:
    reward(rollout, {'prompt': rollout.context['tokens']})
  except ValueError as e:
    assert "'answer'" in str(e) and 'fields=' in str(e)
  else:
    raise AssertionError('expected a ValueError')


def _setup():
  cfg = tfm.TransformerConfig(vocab_size=TOK.vocab_size, hidden_dim=16,
                              mlp_dim=32, num_layers=1, num_heads=2,
                              num_kv_heads=2, max_seq_len=16)
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=4,
                eos_id=TOK.eos_id,
                pad_id=TOK.pad_id,
                num_samples=2)
  algo = algos.make(algos.default_config('reinforce'))
  tx = optax.sgd(0.1)
  params = tfm.init_params(cfg, jax.random.key(0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params), ref_params=params,
                     algo_state=algo.init_state())
  prompt, prompt_mask = TOK.pad_batch([TOK.encode('1+1='), TOK.encode('9=')],
                                      6, side='left')
  batch = {'prompt': jnp.asarray(prompt),
           'prompt_mask': jnp.asarray(prompt_mask),
           'answer': jnp.asarray([2, 9], jnp.int32)}
  return env, algo, tx, state, batch


def odd_bytes(text, *, answer):
  """Fraction of odd bytes; fails on purpose when the answer is 9."""
  if answer == 9:
    raise RuntimeError('no checker for 9')
  data = text.encode('utf-8', errors='replace')
  return sum(b % 2 for b in data) / max(len(data), 1)


def test_host_steps_agree_and_count_failures():
  """The one-jit step (callback inside) and the two-halves step give the same
  rewards, metrics and update; failures are penalised and counted."""
  env, algo, tx, state, batch = _setup()
  seen = []

  def recording(text, *, answer):
    seen.append((text, int(answer)))
    return odd_bytes(text, answer=answer)

  reward = host.text_reward(recording, TOK, fields=('answer',), penalty=-1.0)
  key = jax.random.key(3)
  one_jit = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                      reward_fn=reward, algo=algo, tx=tx))
  split = host_step.make_split_step(env=env, reward=reward, algo=algo, tx=tx,
                                    donate=False)
  want_state, want = one_jit(state, batch, key)
  seen.clear()
  got_state, got = split(state, batch, key)
  # Each of the 4 completions was scored once, on its decoded text; the
  # second prompt's two fail and get the penalty.
  assert sorted(a for _, a in seen) == [2, 2, 9, 9]
  direct = [odd_bytes(t, answer=a) if a != 9 else -1.0 for t, a in seen]
  np.testing.assert_allclose(got['reward/mean'], np.mean(direct), rtol=1e-5)
  assert float(got[step_lib.FAILURES_METRIC]) == 2.0
  assert set(got) == set(want)
  for name, value in want.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-5, atol=1e-6,
                               err_msg=name)
  for a, b in zip(jax.tree.leaves(got_state.params),
                  jax.tree.leaves(want_state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
