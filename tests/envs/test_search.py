"""Tests for jaxrlgen/envs/search.py (MCTS decoding with mctx)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.core.types import Rollout
from jaxrlgen.envs import search
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from tests.envs import policies

_V, _EOS, _PAD = 16, 1, 0
_CONFIG = tfm.TransformerConfig(vocab_size=_V, hidden_dim=16, mlp_dim=32,
                                num_layers=1, num_heads=4, num_kv_heads=2,
                                max_seq_len=12, value_head=True)
_MODEL = tfm.Transformer(_CONFIG)


def _env(**kwargs):
  return TextEnv(**{'policy': LMPolicy(_MODEL), 'max_new_tokens': 4,
                    'eos_id': _EOS,
                    'pad_id': _PAD, **kwargs})


def _params(seed=0):
  """Random parameters with a non-zero value head (it is zero at init)."""
  params = tfm.init_params(_CONFIG, jax.random.key(seed))
  kernel = params['value_proj']['kernel']
  params['value_proj']['kernel'] = jax.random.normal(
      jax.random.key(seed + 1), kernel.shape)
  return params


def _prompts():
  """Two left-padded prompts of different lengths, i32[2, 5], bool[2, 5]."""
  tokens = jnp.asarray([[0, 0, 7, 3, 9], [4, 12, 6, 2, 8]], jnp.int32)
  return tokens, tokens > 0


def _zero_reward(rollout, batch):
  del batch
  return jnp.zeros((rollout.batch_size,), jnp.float32)


def test_recurrent_step_equals_full_forward():
  """Cached search steps give the teacher-forced logits and values, also when
  the rows of a batch sit at different depths."""
  params, env = _params(), _env()
  sampler = search.MCTSSampler(env, _zero_reward, search.MCTSConfig())
  prompt, mask = _prompts()
  actions = jnp.asarray([[5, 9, 3, 14], [2, 11, 7, 6]], jnp.int32)
  rollout = Rollout(context={'tokens': prompt, 'mask': mask}, actions=actions,
                    logp=jnp.zeros(actions.shape), mask=jnp.ones(actions.shape,
                                                                 bool))
  want_logits, want_values = jax.jit(lambda p: (
      env.action_logits(p, rollout),
      _MODEL.apply({'params': p}, env.hidden_states(p, rollout),
                   method=tfm.Transformer.value)))(params)
  fn = jax.jit(sampler.recurrent_fn(params, _zero_reward, rollout.context, {}))
  node = jax.jit(sampler.root)(params, prompt, mask)
  np.testing.assert_allclose(node.state.logits, want_logits[:, 0], atol=1e-4)
  np.testing.assert_allclose(node.value, want_values[:, 0], atol=1e-4)
  nodes = [node]
  for t in range(3):
    out, node = fn(None, None, actions[:, t], node)
    nodes.append(node)
    np.testing.assert_allclose(out.prior_logits, want_logits[:, t + 1],
                               atol=1e-4)
    np.testing.assert_allclose(out.value, want_values[:, t + 1], atol=1e-4)
    np.testing.assert_array_equal(out.discount, 1.0)
  # Row 0 one token deep, row 1 two tokens deep, in one batch.
  first = jnp.asarray([True, False])
  mixed = jax.tree.map(
      lambda a, b: jnp.where(first.reshape((2,) + (1,) * (a.ndim - 1)), a, b),
      nodes[1], nodes[2])
  out, _ = fn(None, None, jnp.asarray([actions[0, 1], actions[1, 2]]), mixed)
  np.testing.assert_allclose(out.prior_logits[0], want_logits[0, 2], atol=1e-4)
  np.testing.assert_allclose(out.prior_logits[1], want_logits[1, 3], atol=1e-4)


def test_reward_discount_and_terminal_nodes():
  """The reward is paid on the step that ends a sequence (EOS or budget),
  with discount 0 and value 0; a finished node's subtree is inert."""
  params, env = _params(), _env(max_new_tokens=2)
  sampler = search.MCTSSampler(env, _zero_reward, search.MCTSConfig())
  prompt, mask = _prompts()
  reward_fn = lambda r, b: jnp.sum(r.mask, axis=1) + 10.0 * b['bonus']
  batch = {'bonus': jnp.asarray([1.0, 2.0])}
  fn = jax.jit(sampler.recurrent_fn(params, reward_fn,
                                    {'tokens': prompt, 'mask': mask}, batch))
  node = jax.jit(sampler.root)(params, prompt, mask)
  # Row 0 ends by EOS, row 1 goes on.
  out, node = fn(None, None, jnp.asarray([_EOS, 5]), node)
  np.testing.assert_allclose(out.reward, [11.0, 0.0])
  np.testing.assert_allclose(out.discount, [0.0, 1.0])
  assert float(out.value[0]) == 0.0 and float(out.value[1]) != 0.0
  # Row 1 reaches the budget of 2 tokens; row 0 is past its end.
  out, last = fn(None, None, jnp.asarray([7, 7]), node)
  np.testing.assert_allclose(out.reward, [0.0, 22.0])
  np.testing.assert_allclose(out.discount, [0.0, 0.0])
  np.testing.assert_allclose(out.value, [0.0, 0.0])
  np.testing.assert_array_equal(last.tokens, [[_EOS, _PAD], [5, 7]])
  np.testing.assert_array_equal(last.length, [1, 2])
  jax.tree.map(lambda a, b: np.testing.assert_array_equal(a[0], b[0]),
               last.state, node.state)


@pytest.mark.parametrize('policy', ['muzero', 'gumbel_muzero'])
def test_search_finds_the_only_rewarded_token(policy):
  """Only token 6 earns a reward; the prior puts most of its mass on 3 (0.3
  against 0.047 for each other token). The search's weights and its
  (greedy) choice go to 6."""
  probs = np.full(_V, 0.7 / (_V - 1))
  probs[3] = 0.3
  params = policies.fixed_policy_params(_CONFIG, probs)
  env = _env(max_new_tokens=1)
  sampler = search.MCTSSampler(env, _zero_reward, search.MCTSConfig(
      policy=policy, num_simulations=48, value='zero', greedy=True))
  prompt, mask = _prompts()
  reward_fn = lambda r, b: (r.actions[:, 0] == 6).astype(jnp.float32)
  fn = sampler.recurrent_fn(params, reward_fn, {'tokens': prompt,
                                                'mask': mask}, {})
  root = jax.jit(sampler.root)(params, prompt, mask)
  step = jax.jit(functools.partial(sampler.search, recurrent_fn=fn))(
      params, root, jax.random.key(0))
  assert int(jnp.argmax(root.state.logits[0])) == 3
  np.testing.assert_array_equal(jnp.argmax(step.weights, axis=-1), [6, 6])
  np.testing.assert_array_equal(step.token, [6, 6])
  np.testing.assert_allclose(step.logp, jnp.log(step.weights[:, 6]),
                             rtol=1e-5)


def test_rollout_is_a_text_rollout():
  """Shapes, masks and padding of TextEnv.rollout; logp is the log of the
  search's weight of the chosen token; the weights are distributions."""
  params, env = _params(), _env(num_samples=2)
  sampler = search.MCTSSampler(env, _zero_reward,
                               search.MCTSConfig(num_simulations=6))
  prompt, mask = _prompts()
  batch = {'prompt': prompt, 'prompt_mask': mask}
  rollout = jax.jit(lambda p, k: sampler.rollout(p, batch, k))(
      params, jax.random.key(3))
  b, t = 4, env.max_new_tokens
  assert rollout.actions.shape == rollout.mask.shape == (b, t)
  np.testing.assert_array_equal(rollout.context['tokens'],
                                jnp.repeat(prompt, 2, axis=0))
  weights = rollout.context['search_policy']
  assert weights.shape == (b, t, _V)
  valid = np.asarray(rollout.mask)
  np.testing.assert_allclose(np.sum(weights, -1)[valid], 1.0, rtol=1e-5)
  chosen = np.take_along_axis(
      np.asarray(weights), np.asarray(rollout.actions)[..., None], -1)[..., 0]
  np.testing.assert_allclose(rollout.logp[valid], np.log(chosen[valid]),
                             rtol=1e-5)
  np.testing.assert_array_equal(rollout.logp[~valid], 0.0)
  # Steps are valid up to and including EOS, padding after.
  actions = np.asarray(rollout.actions)
  for row in range(b):
    ends = np.flatnonzero(actions[row] == _EOS)
    n = ends[0] + 1 if len(ends) else t
    np.testing.assert_array_equal(valid[row], np.arange(t) < n)
    np.testing.assert_array_equal(actions[row, n:], _PAD)


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match='config.mcts.policy'):
    search.MCTSConfig(policy='alphago')
  with pytest.raises(ValueError, match='config.mcts.nope'):
    search.MCTSConfig.from_config({'nope': 1})
  env = TextEnv(LMPolicy(tfm.Transformer(tfm.TransformerConfig(vocab_size=_V))),
                max_new_tokens=2)
  with pytest.raises(ValueError, match='model.value_head'):
    search.MCTSSampler(env, _zero_reward, search.MCTSConfig(value='head'))
