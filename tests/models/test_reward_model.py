"""The reward model: the head read at the last real token; it learns a
separable toy preference with the Bradley-Terry loss."""

import pytest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen.algos import preference
from jaxrlgen.core.types import TrainState
from jaxrlgen.models import reward_model as rm
from jaxrlgen.models import transformer as tfm

CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                            num_layers=1, num_heads=2, num_kv_heads=2,
                            max_seq_len=10)
MODEL = tfm.Transformer(rm.reward_model_config(CFG))


def _params(key=0):
  params = rm.init(CFG, jax.random.key(key))
  # A non-zero head, so that scores differ between sequences.
  params['value_proj']['kernel'] = jax.random.normal(
      jax.random.key(key + 1), params['value_proj']['kernel'].shape)
  return params


def test_last_valid_index_and_join():
  mask = jnp.array([[0, 1, 1, 0], [1, 1, 1, 1], [0, 0, 0, 0]], bool)
  np.testing.assert_array_equal(rm.last_valid_index(mask), [2, 3, 0])
  tokens, joined = rm.join(jnp.array([[0, 7]]), jnp.array([[False, True]]),
                           jnp.array([[3, 4, 0]]),
                           jnp.array([[True, True, False]]))
  np.testing.assert_array_equal(tokens, [[0, 7, 3, 4, 0]])
  np.testing.assert_array_equal(joined, [[0, 1, 1, 1, 0]])


def test_score_is_the_head_at_the_last_real_token():
  params = _params()
  prompt = jnp.array([[0, 7, 3], [7, 3, 9]], jnp.int32)
  prompt_mask = jnp.array([[0, 1, 1], [1, 1, 1]], bool)
  completion = jnp.array([[5, 1, 0], [5, 5, 1]], jnp.int32)
  completion_mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  score = jax.jit(functools.partial(rm.score_completions, MODEL))
  got = score(params, prompt, prompt_mask, completion, completion_mask)
  # Row 0 alone, unpadded: its last token (EOS=1) is the last position.
  tokens = jnp.array([[7, 3, 5, 1]], jnp.int32)
  @jax.jit
  def head_at_last(params):
    hidden, _ = MODEL.apply({'params': params}, tokens, jnp.arange(4)[None],
                            jnp.ones((1, 4), bool))
    return MODEL.apply({'params': params}, hidden[:, -1],
                       method=tfm.Transformer.value)

  want = head_at_last(params)
  np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
  # Padding after the last real token changes nothing.
  padded = completion.at[0, 2].set(9)
  again = score(params, prompt, prompt_mask, padded, completion_mask)
  np.testing.assert_allclose(again, got, rtol=1e-6)
  # An ensemble of the same member twice scores like the member.
  both = jax.jit(functools.partial(rm.score_ensemble, MODEL))(
      rm.stack([params, params]),
      *rm.join(prompt, prompt_mask, completion, completion_mask))
  np.testing.assert_allclose(both, jnp.stack([got, got]), rtol=1e-5)


def test_init_from_lm_copies_the_trunk_and_zeroes_the_head():
  lm = tfm.init_params(CFG, jax.random.key(3))
  params = rm.init_from_lm(lm, CFG, jax.random.key(4))
  np.testing.assert_array_equal(params['embed']['embedding'],
                                lm['embed']['embedding'])
  assert not np.any(params['value_proj']['kernel'])


def _toy_pairs(n, key):
  """Chosen completions contain token 5, rejected ones token 9 instead."""
  k1, k2 = jax.random.split(key)
  base = jax.random.randint(k1, (n, 3), 2, 5)
  slot = jax.random.randint(k2, (n,), 0, 3)
  put = lambda v: base.at[jnp.arange(n), slot].set(v)
  eos = jnp.ones((n, 1), jnp.int32)
  return {'prompt': jnp.full((n, 2), 7, jnp.int32),
          'prompt_mask': jnp.ones((n, 2), bool),
          'chosen': jnp.concatenate([put(5), eos], 1),
          'rejected': jnp.concatenate([put(9), eos], 1),
          'chosen_mask': jnp.ones((n, 4), bool),
          'rejected_mask': jnp.ones((n, 4), bool)}


@pytest.mark.slow
def test_reward_models_learn_a_separable_preference():
  """Two bootstrapped members trained at once; each alone and their mean
  separate held-out pairs, and the bootstrap keeps them apart."""
  heldout = _toy_pairs(64, jax.random.key(999))
  score_fn = functools.partial(rm.score_completions, MODEL)
  evaluate = jax.jit(functools.partial(preference.reward_model_eval, score_fn))
  before = evaluate(rm.init(CFG, jax.random.key(0)), heldout)
  assert float(before['accuracy']) == 0.5  # The zero head ties every pair.
  tx = optax.adam(3e-3)
  params = rm.stack([rm.init(CFG, jax.random.key(i)) for i in range(2)])
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=jax.vmap(tx.init)(params))
  step = jax.jit(functools.partial(preference.reward_model_step,
                                   score_fn=score_fn, tx=tx, ensemble_size=2))
  for i in range(40):
    state, metrics = step(state, _toy_pairs(32, jax.random.key(i)),
                          jax.random.key(100 + i))
  assert float(metrics['loss']) < 0.3, metrics
  members = [jax.tree.map(lambda x, i=i: x[i], state.params) for i in range(2)]
  for member in members:
    after = evaluate(member, heldout)
    assert float(after['accuracy']) >= 0.95, after
    assert float(after['margin']) > 1.0, after
  both = jax.jit(functools.partial(preference.reward_model_eval, score_fn,
                                   ensemble=True))(state.params, heldout)
  assert float(both['accuracy']) >= 0.95, both
  assert not np.allclose(members[0]['value_proj']['kernel'],
                         members[1]['value_proj']['kernel'])


@pytest.mark.slow
def test_adapted_reward_models_learn_and_merge():
  """Two members of adapters and heads on one frozen, int8 trunk learn the
  separable preference; merged into the trunk, each is a plain reward
  model that scores as it did."""
  from jaxrlgen.algos import base as algo_base  # pylint: disable=g-import-not-at-top
  from jaxrlgen.policies import LMPolicy  # pylint: disable=g-import-not-at-top
  from jaxrlgen.policies import lora  # pylint: disable=g-import-not-at-top
  config = lora.LoraConfig(rank=4, alpha=16.0, quantize='int8')
  policy = LMPolicy(MODEL).with_adapters(config)
  frozen, head = policy.split_base(rm.init(CFG, jax.random.key(0)))
  frozen = policy.quantize_base(frozen)
  params = rm.stack([{**policy.init_adapters(frozen, jax.random.key(i)),
                      **head} for i in range(2)])
  scorer = lora.AdaptedModel(MODEL, policy.adapters)
  score_fn = lambda frozen: functools.partial(
      rm.score_completions, algo_base.bind(scorer, frozen))
  tx = optax.adam(1e-2)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=jax.vmap(tx.init)(params), frozen=frozen)
  step = jax.jit(lambda state, batch, key: preference.reward_model_step(
      state, batch, key, score_fn=score_fn(state.frozen), tx=tx,
      ensemble_size=2))
  for i in range(25):
    state, metrics = step(state, _toy_pairs(32, jax.random.key(i)),
                          jax.random.key(100 + i))
  heldout = _toy_pairs(64, jax.random.key(999))
  for i in range(2):
    member = jax.tree.map(lambda x, i=i: x[i], state.params)
    adapted = jax.jit(functools.partial(
        preference.reward_model_eval, score_fn(frozen)))(member, heldout)
    assert float(adapted['accuracy']) >= 0.95, adapted
    merged = lora.merge(frozen, member, config)
    plain = jax.jit(functools.partial(
        preference.reward_model_eval,
        functools.partial(rm.score_completions, MODEL)))(merged, heldout)
    np.testing.assert_allclose(plain['margin'], adapted['margin'], rtol=1e-4)
