"""REINFORCE, SCST and ReMax: baselines, loss and gradient against NumPy;
learning on a toy task."""

import dataclasses
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.algos import reinforce
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Two prompts with two samples each, three steps; the last sequence ends early.
REWARDS = np.array([1.0, 0.0, 0.5, 0.25], np.float32)
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3],
                        [0.6, 0.1, 0.8], [0.7, 0.5, 0.4]], np.float32))
REF_LOGP = np.log(np.array([[0.5, 0.3, 0.6], [0.2, 0.3, 0.4],
                            [0.5, 0.2, 0.7], [0.6, 0.5, 0.2]], np.float32))
MASK = np.array([[1, 1, 1], [1, 1, 1], [1, 1, 1], [1, 0, 0]], bool)


def np_pg_loss(logp, adv, mask, aggregation):
  adv = adv[:, None] if adv.ndim == 1 else adv
  per_token = -logp * adv * mask
  if aggregation == 'sequence_sum':
    return per_token.sum() / len(logp)
  if aggregation == 'token_mean':
    return per_token.sum() / mask.sum()
  if aggregation == 'sequence_mean':
    return np.mean(per_token.sum(1) / mask.sum(1))
  return per_token.sum() / mask.size


def np_ema(means, decay, init):
  """Baselines used for each batch (before its update), in plain Python."""
  b, used = 0.0, []
  for i, m in enumerate(means):
    used.append(b)
    b = m if (init == 'first_batch' and i == 0) else decay * b + (1 - decay) * m
  return np.array(used), b


class ReferenceTest(parameterized.TestCase):

  @parameterized.product(
      aggregation=['sequence_sum', 'token_mean', 'sequence_mean', 'constant'],
      per_token=[False, True], jit=[False, True])
  def test_loss_and_gradient(self, aggregation, per_token, jit):
    adv = REWARDS - 0.4
    if per_token:  # ReMax's per-token returns.
      want = np.where(MASK, adv[:, None] - 0.3 * (LOGP - REF_LOGP), 0.0)
      adv = np.asarray(reinforce.per_token_kl_penalty(
          jnp.asarray(adv), jnp.asarray(LOGP), jnp.asarray(REF_LOGP),
          jnp.asarray(MASK), kl_coef=0.3))
      np.testing.assert_allclose(adv, want, rtol=1e-6, atol=1e-7)

    def f(logp):
      return reinforce.policy_gradient_loss(
          logp, jnp.asarray(adv), jnp.asarray(MASK),
          aggregation=aggregation)[0]

    f = jax.jit(f) if jit else f
    loss, grad = jax.value_and_grad(f)(jnp.asarray(LOGP))
    ref = lambda x: np_pg_loss(x, adv.astype(np.float64), MASK, aggregation)
    np.testing.assert_allclose(loss, ref(LOGP.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, LOGP), atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[~MASK] == 0))

  def test_advantages_carry_no_gradient(self):
    f = lambda adv: reinforce.policy_gradient_loss(
        jnp.asarray(LOGP), adv, jnp.asarray(MASK))[0]
    np.testing.assert_array_equal(jax.grad(f)(jnp.asarray(REWARDS)), 0.0)

  @parameterized.product(init=['zero', 'first_batch'], jit=[False, True])
  def test_ema_baseline(self, init, jit):
    means = [0.2, 0.6, 0.1, 0.9]
    update = functools.partial(reinforce.ema_baseline, decay=0.75, init=init)
    update = jax.jit(update) if jit else update
    b, count, used = jnp.zeros(()), jnp.zeros((), jnp.int32), []
    for m in means:
      used.append(float(b))
      b, count = update(b, count, jnp.float32(m))
    want_used, want_final = np_ema(means, 0.75, init)
    np.testing.assert_allclose(used, want_used, rtol=1e-6)
    np.testing.assert_allclose(b, want_final, rtol=1e-6)
    self.assertEqual(int(count), len(means))

  def test_reinforce_prepare_uses_the_baseline_from_before_the_batch(self):
    config = algos.default_config('reinforce')
    config.baseline_decay = 0.5
    algo = algos.make(config)
    rollout = Rollout(context={}, actions=jnp.zeros(MASK.shape, jnp.int32),
                      logp=jnp.asarray(LOGP), mask=jnp.asarray(MASK))
    state = TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={},
                       algo_state=algo.init_state())
    prepare = jax.jit(functools.partial(algo.prepare, None))
    baselines = []
    for rewards in (REWARDS, REWARDS + 1.0):
      exp, algo_state, metrics = prepare(state, rollout, jnp.asarray(rewards),
                                         None)
      baselines.append(float(state.algo_state['baseline']))
      np.testing.assert_allclose(exp.advantages, rewards - baselines[-1],
                                 rtol=1e-6)
      np.testing.assert_allclose(metrics['baseline'], baselines[-1])
      state = state.replace(algo_state=algo_state)
    # first_batch init: 0, then the first mean, then the EMA.
    m = REWARDS.mean()
    np.testing.assert_allclose(baselines, [0.0, m], rtol=1e-6)
    np.testing.assert_allclose(state.algo_state['baseline'],
                               0.5 * m + 0.5 * (m + 1.0), rtol=1e-6)

  @parameterized.parameters(0.0, 0.3)
  def test_greedy_baseline_advantages(self, clip):
    greedy = np.array([0.0, 1.0], np.float32)
    got = reinforce.greedy_baseline_advantages(
        jnp.asarray(REWARDS), jnp.asarray(greedy), reward_clip=clip)
    want = REWARDS - np.repeat(greedy, 2)
    if clip:
      want = np.clip(want, -clip, clip)
    np.testing.assert_allclose(got, want, rtol=1e-6)

  def test_config_errors_name_the_field(self):
    for name, field, value in (('reinforce', 'baseline_decay', 1.0),
                               ('reinforce', 'baseline_init', 'mean'),
                               ('scst', 'aggregation', 'sum'),
                               ('remax', 'reward_clip', -1.0)):
      config = algos.default_config(name)
      config[field] = value
      with self.assertRaisesRegex(ValueError, f'config.algo.{field}'):
        algos.make(config)


# --- Whole algorithms on a tiny policy. ---

CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                            num_layers=1, num_heads=2, num_kv_heads=2,
                            max_seq_len=10)
PROMPTS = {'prompt': jnp.array([[7, 3], [7, 4]], jnp.int32),
           'prompt_mask': jnp.ones((2, 2), bool)}


hit_rate = toy.fives_reward


def toy_setup(name, num_samples, **overrides):
  params = tfm.init_params(CFG, jax.random.key(0))
  env = TextEnv(LMPolicy(tfm.Transformer(CFG)),
                max_new_tokens=4,
                eos_id=1,
                pad_id=0,
                num_samples=num_samples)
  config = algos.default_config(name)
  config.update(overrides)
  algo = algos.make(config)
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ref_params=(jax.tree.map(jnp.copy, params)
                                 if algo.uses_reference else None),
                     algo_state=algo.init_state())
  step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                   reward_fn=hit_rate, algo=algo, tx=tx))
  return env, algo, state, step


@dataclasses.dataclass(frozen=True)
class PromptEchoEnv:
  """A stand-in environment whose greedy decode echoes the prompt."""

  num_samples: int
  greedy_calls: list = dataclasses.field(default_factory=list, compare=False)

  def greedy(self):
    return dataclasses.replace(self, num_samples=1)

  def rollout(self, params, batch, key):
    del params, key
    prompt, prompt_mask = batch['prompt'], batch['prompt_mask']
    self.greedy_calls.append(prompt.shape)
    return Rollout(context={}, actions=prompt,
                   logp=jnp.zeros(prompt.shape), mask=prompt_mask)


@pytest.mark.parametrize('name', ['scst', 'remax'])
def test_greedy_baseline_is_each_prompts_own_greedy_reward(name):
  """Every sample's baseline is the greedy reward of its own prompt, decoded
  once per unique prompt."""
  env = PromptEchoEnv(num_samples=3)
  algo = algos.make(algos.default_config(name))
  assert algo.needs_score
  prompt = jnp.array([[1, 2], [3, 4]], jnp.int32)
  # Three samples of each prompt; only their prompts matter here.
  rollout = Rollout(
      context={'tokens': jnp.repeat(prompt, 3, axis=0),
               'mask': jnp.ones((6, 2), bool)},
      actions=jnp.zeros((6, 2), jnp.int32), logp=jnp.zeros((6, 2)),
      mask=jnp.ones((6, 2), bool))
  # The echoed prompt's token sum: 3 for prompt 0, 7 for prompt 1.
  score = lambda greedy: jnp.sum(greedy.actions, axis=1) / 10.0
  rewards = jnp.array([0.0, 0.5, 1.0, 0.0, 0.5, 1.0])
  state = TrainState(step=jnp.zeros((), jnp.int32), params={}, opt_state={})
  exp, _, metrics = jax.jit(functools.partial(algo.prepare, env, score=score))(
      state, rollout, rewards, jax.random.key(0))
  np.testing.assert_allclose(
      exp.advantages, rewards - np.array([0.3] * 3 + [0.7] * 3), atol=1e-6)
  np.testing.assert_allclose(metrics['baseline'], 0.5, atol=1e-6)
  assert env.greedy_calls == [(2, 2)]


@pytest.mark.parametrize('name,num_samples,overrides', [
    ('reinforce', 4, {'baseline_decay': 0.5, 'kl_coef': 0.01}),
    ('scst', 4, {'entropy_coef': 0.001}),
    ('remax', 1, {'kl_reward_coef': 0.01}),
])
def test_raises_reward_on_toy_task(name, num_samples, overrides):
  """A tiny policy learns to emit token 5; margin: mean reward +0.4."""
  _, _, state, step = toy_setup(name, num_samples, **overrides)
  batch = {k: jnp.tile(v, (4 // num_samples, 1)) for k, v in PROMPTS.items()}
  history = []
  for i in range(30):
    state, metrics = step(state, batch, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.25, history
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.4, history
  if name == 'reinforce':
    assert float(state.algo_state['baseline']) > np.mean(history[:3])
