"""Tests for jaxrlgen/envs/text.py."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import sampling_logprobs
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.envs.text import TextState
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from tests.envs import policies

_V, _EOS, _PAD = 32, 31, 30
# Grouped-query attention; the shapes of the 'gqa' model of
# tests/models/test_transformer.py.
_CONFIG = tfm.TransformerConfig(vocab_size=_V, hidden_dim=16, mlp_dim=32,
                                num_layers=1, num_heads=4, num_kv_heads=2,
                                max_seq_len=16)
_MODEL = tfm.Transformer(_CONFIG)


def _env(**kwargs):
  return TextEnv(**{'policy': LMPolicy(_MODEL), 'max_new_tokens': 6,
                    'eos_id': _EOS, 'pad_id': _PAD, **kwargs})


def _batch(prompt, prompt_mask):
  return {'prompt': prompt, 'prompt_mask': prompt_mask}


def _prompts(pads, length=5, seed=0):
  """Left-padded prompts i32[N, length] (no EOS inside), their mask."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(0, _PAD, size=(len(pads), length))
  mask = np.arange(length)[None, :] >= np.asarray(pads)[:, None]
  return (jnp.asarray(np.where(mask, tokens, _PAD), jnp.int32),
          jnp.asarray(mask))


@jax.jit
def _teacher_forced_logits(params, prompt, prompt_mask, actions):
  """f32[B, T, V] logits that predict each action, from one full forward."""
  tokens = jnp.concatenate([prompt, actions], axis=1)
  mask = jnp.concatenate([prompt_mask, jnp.ones_like(actions, jnp.bool_)],
                         axis=1)
  hidden, _ = _MODEL.apply({'params': params}, tokens,
                           tfm.positions_from_mask(mask), mask)
  return _MODEL.apply({'params': params}, hidden[:, prompt.shape[1] - 1:-1],
                      method=tfm.Transformer.logits)


_SAMPLINGS = {
    't1': Sampling(temperature=1.0),
    't0.7': Sampling(temperature=0.7),
    'greedy': Sampling(temperature=0.5, greedy=True),
    'inverse_cdf': Sampling(temperature=0.7, method='inverse_cdf'),
}


@pytest.mark.parametrize('name', list(_SAMPLINGS))
def test_sampled_logp_equals_teacher_forced(name):
  sampling = _SAMPLINGS[name]
  env = _env(sampling=sampling)
  params = tfm.init_params(_CONFIG, jax.random.key(1))
  prompt, prompt_mask = _prompts(pads=[0, 2, 4])
  rollout = jax.jit(env.rollout)(params, _batch(prompt, prompt_mask),
                                 jax.random.key(2))
  assert rollout.actions.shape == rollout.logp.shape == (3, 6)
  out = jax.jit(env.evaluate)(params, rollout)
  m = np.asarray(rollout.mask)
  assert m[:, 0].all()
  np.testing.assert_allclose(out.logp[m], rollout.logp[m], atol=1e-5)
  assert np.all(np.asarray(rollout.logp)[m] < 0)

  # A reference teacher-forced pass over prompt + completion (compiled once
  # for all cases).
  logits = _teacher_forced_logits(params, prompt, prompt_mask,
                                  rollout.actions)
  ref = jax.nn.log_softmax(logits / sampling.scoring_temperature)
  ref = jnp.take_along_axis(ref, rollout.actions[..., None], -1)[..., 0]
  np.testing.assert_allclose(rollout.logp[m], ref[m], atol=1e-5)
  argmax = np.asarray(jnp.argmax(logits, axis=-1))
  if sampling.greedy:
    np.testing.assert_array_equal(rollout.actions[m], argmax[m])
  else:
    # Sampled, not argmax: some chosen token is not the most likely one.
    assert (np.asarray(rollout.actions) != argmax)[m].any()


def test_eos_masking():
  probs = np.full(_V, 0.85 / (_V - 1))
  probs[_EOS] = 0.15
  params = policies.fixed_policy_params(_CONFIG, probs)
  env = _env(max_new_tokens=8)
  prompt, prompt_mask = _prompts(pads=[0, 1, 2, 3], length=4)
  prompt, prompt_mask = jnp.repeat(prompt, 2, 0), jnp.repeat(prompt_mask, 2, 0)
  rollout = jax.jit(env.rollout)(params, _batch(prompt, prompt_mask),
                                 jax.random.key(0))
  actions = np.asarray(rollout.actions)
  mask = np.asarray(rollout.mask)
  logp = np.asarray(rollout.logp)

  is_eos = actions == _EOS
  # Reference: a step is real iff no EOS came strictly before it.
  eos_before = np.cumsum(is_eos, axis=1) - is_eos > 0
  np.testing.assert_array_equal(mask, ~eos_before)
  has_eos = is_eos.any(axis=1)
  # The key was chosen so that both kinds of rows, and padding, occur.
  assert has_eos.any() and (~has_eos).any() and (~mask).any()
  assert mask[~has_eos].all()
  first_eos = np.argmax(is_eos, axis=1)
  for row in np.flatnonzero(has_eos):
    assert mask[row, :first_eos[row] + 1].all()
    assert (actions[row, first_eos[row] + 1:] == _PAD).all()
  assert (logp[~mask] == 0).all()
  # The policy is known: each real step's log-prob is log probs[token].
  np.testing.assert_allclose(logp[mask], np.log(probs[actions[mask]]),
                             atol=1e-5)


_PROBS = np.array([0.4, 0.3, 0.15, 0.1, 0.05])


@pytest.mark.parametrize('sampling,want', [
    (Sampling(), _PROBS),
    (Sampling(top_k=2), [4 / 7, 3 / 7, 0, 0, 0]),
    (Sampling(top_k=5), _PROBS),
    # Kept iff the mass strictly before a token is < top_p. With 0.7 the mass
    # before the third token is 0.4 + 0.3, at or just above float32(0.7)
    # depending on rounding, so it goes.
    (Sampling(top_p=0.7), [4 / 7, 3 / 7, 0, 0, 0]),
    # Away from float ties: the second token stays although the mass up to
    # and including it (0.7) exceeds top_p.
    (Sampling(top_p=0.65), [4 / 7, 3 / 7, 0, 0, 0]),
    (Sampling(top_p=0.75), [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
    (Sampling(top_p=0.3), [1, 0, 0, 0, 0]),  # The top token always stays.
    (Sampling(top_k=3, top_p=0.65), [4 / 7, 3 / 7, 0, 0, 0]),
    # Temperature 0.5 squares the probabilities before truncation.
    (Sampling(temperature=0.5, top_k=2), [16 / 25, 9 / 25, 0, 0, 0]),
    # Greedy reports the temperature-1 policy whatever the temperature.
    (Sampling(temperature=0.5, greedy=True), _PROBS),
])
def test_sampling_logprobs(sampling, want):
  logits = jnp.log(jnp.asarray(_PROBS, jnp.float32))
  got = np.exp(np.asarray(sampling_logprobs(logits[None], sampling)))[0]
  np.testing.assert_allclose(got, want, atol=1e-6)


@pytest.mark.parametrize('sampling,want', [
    (Sampling(top_k=2), [4 / 7, 3 / 7, 0, 0, 0]),
    (Sampling(top_p=0.75), [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
    (Sampling(temperature=0.5), _PROBS**2 / np.sum(_PROBS**2)),
    (Sampling(method='inverse_cdf'), _PROBS),
    (Sampling(top_p=0.75, method='inverse_cdf'),
     [0.4 / 0.85, 0.3 / 0.85, 0.15 / 0.85, 0, 0]),
    (Sampling(temperature=0.5, top_k=2, method='inverse_cdf'),
     [16 / 25, 9 / 25, 0, 0, 0]),
])
def test_choose_matches_expected_frequencies(sampling, want):
  n = 20_000
  env = TextEnv(policy=LMPolicy(tfm.Transformer(
      tfm.TransformerConfig(vocab_size=5, hidden_dim=4, num_heads=2,
                            num_kv_heads=2))),
                max_new_tokens=1, sampling=sampling, eos_id=4, pad_id=3)
  logits = jnp.tile(jnp.log(jnp.asarray(_PROBS, jnp.float32)), (n, 1))
  state = TextState(cache=None, logits=logits,
                    position=jnp.zeros((n,), jnp.int32),
                    done=jnp.zeros((n,), jnp.bool_), hidden=None)
  transition = jax.jit(env.choose)(state, jax.random.key(0))
  token = np.asarray(transition.token)
  freqs = np.bincount(token, minlength=5) / n
  np.testing.assert_allclose(freqs, want, atol=0.02)
  assert freqs[np.asarray(want) == 0].sum() == 0  # Truncated ones never.
  np.testing.assert_allclose(transition.logp, np.log(np.asarray(want)[token]),
                             atol=1e-5)
  assert transition.valid.all()


def test_shared_prefill_equals_separate_prefills():
  g = 3
  params = tfm.init_params(_CONFIG, jax.random.key(3))
  prompt, prompt_mask = _prompts(pads=[3, 0], seed=1)
  key = jax.random.key(4)
  shared = jax.jit(_env(num_samples=g).rollout)(params,
                                                _batch(prompt, prompt_mask),
                                                key)
  rep_prompt = jnp.repeat(prompt, g, 0)
  rep_mask = jnp.repeat(prompt_mask, g, 0)
  separate = jax.jit(_env(num_samples=1).rollout)(params,
                                                  _batch(rep_prompt, rep_mask),
                                                  key)
  assert shared.actions.shape == (2 * g, 6)
  np.testing.assert_array_equal(shared.actions, separate.actions)
  np.testing.assert_array_equal(shared.mask, separate.mask)
  np.testing.assert_allclose(shared.logp, separate.logp, atol=1e-5)
  np.testing.assert_array_equal(shared.context['tokens'], rep_prompt)
  np.testing.assert_array_equal(shared.context['mask'], rep_mask)
  # The G samples of a prompt differ: each row got its own randomness.
  assert len({tuple(a) for a in np.asarray(shared.actions[:g])}) > 1


def test_suppress_eos():
  probs = np.full(_V, 0.1 / (_V - 1))
  probs[_EOS] = 0.9  # EOS is by far the most likely token.
  params = policies.fixed_policy_params(_CONFIG, probs)
  prompt, prompt_mask = _prompts(pads=[0, 2, 1, 0])
  rollout = jax.jit(_env(suppress_eos=True).rollout)(params,
                                                     _batch(
                                                         prompt, prompt_mask),
                                                     jax.random.key(5))
  assert not (np.asarray(rollout.actions) == _EOS).any()
  assert rollout.mask.all()
  # Log-probs are under the policy with EOS removed: uniform over the rest.
  np.testing.assert_allclose(rollout.logp, np.log(1 / (_V - 1)), atol=1e-5)


@pytest.mark.parametrize('greedy', [False, True])
def test_suppress_eos_choose(greedy):
  n = 64
  probs = np.full(_V, 0.1 / (_V - 1))
  probs[_EOS] = 0.9
  logits = jnp.tile(jnp.log(jnp.asarray(probs, jnp.float32)), (n, 1))
  state = TextState(cache=None, logits=logits,
                    position=jnp.zeros((n,), jnp.int32),
                    done=jnp.zeros((n,), jnp.bool_), hidden=None)
  sampling = Sampling(greedy=greedy)
  suppressed = _env(sampling=sampling, suppress_eos=True).choose(
      state, jax.random.key(6))
  assert not (np.asarray(suppressed.token) == _EOS).any()
  np.testing.assert_allclose(suppressed.logp, np.log(1 / (_V - 1)),
                             atol=1e-5)
  # Control: without suppression the same choice is mostly (greedy: always)
  # EOS.
  plain = _env(sampling=sampling).choose(state, jax.random.key(6))
  eos_fraction = np.mean(np.asarray(plain.token) == _EOS)
  assert eos_fraction >= (1.0 if greedy else 0.7)


@pytest.mark.parametrize('kwargs,field', [
    (dict(temperature=0.0), 'temperature'),
    (dict(temperature=-1.0), 'temperature'),
    (dict(top_p=0.0), 'top_p'),
    (dict(top_p=1.5), 'top_p'),
    (dict(top_k=-1), 'top_k'),
    (dict(method='multinomial'), 'method'),
])
def test_invalid_sampling_raises(kwargs, field):
  with pytest.raises(ValueError, match=field):
    Sampling(**kwargs)


def test_early_stop_equals_full_scan():
  # EOS is likely (0.5), so every sequence ends long before the budget.
  probs = np.full(_V, 0.5 / (_V - 1))
  probs[_EOS] = 0.5
  params = policies.fixed_policy_params(_CONFIG, probs)
  prompt, prompt_mask = _prompts(pads=[0, 1, 2, 3], length=4)
  full = jax.jit(_env(max_new_tokens=10).rollout)
  early = jax.jit(_env(max_new_tokens=10, early_stop=True).rollout)
  for seed in range(3):
    want = full(params, _batch(prompt, prompt_mask), jax.random.key(seed))
    got = early(params, _batch(prompt, prompt_mask), jax.random.key(seed))
    jax.tree.map(np.testing.assert_array_equal, got, want)
  assert not np.asarray(want.mask)[:, -1].any()  # All ended early.
  # And when nothing ends (EOS suppressed), the loop runs all T steps.
  want = jax.jit(_env(max_new_tokens=10,
                      suppress_eos=True).rollout)(params,
                                                  _batch(prompt, prompt_mask),
                                                  jax.random.key(0))
  got = jax.jit(
      _env(max_new_tokens=10, suppress_eos=True,
           early_stop=True).rollout)(params, _batch(prompt, prompt_mask),
                                     jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, got, want)
  assert np.asarray(got.mask).all()


@pytest.mark.parametrize('early_stop', [False, True])
def test_cache_segments_equal_one_cache(early_stop):
  # Segments of 2, 1 and 2 decode steps (T = 6: five decode steps) on caches
  # grown from the prompt's 5 slots to 7, 8 and 10; prompts of several pads.
  # EOS is the token the model samples most, so rows end at different steps.
  params = tfm.init_params(_CONFIG, jax.random.key(4))
  prompt, prompt_mask = _prompts(pads=[0, 2, 4], seed=2)
  key = jax.random.key(5)
  first = jax.jit(_env(num_samples=2).rollout)(params,
                                               _batch(prompt, prompt_mask), key)
  eos = int(np.bincount(np.asarray(first.actions).ravel()).argmax())
  env = lambda **kw: _env(early_stop=early_stop, num_samples=2, eos_id=eos,
                          **kw)
  want = jax.jit(env().rollout)(params, _batch(prompt, prompt_mask), key)
  assert 0 < np.asarray(want.mask).sum() < want.mask.size  # Some ended.
  for segments in (3, 50):  # 50 > 5 steps: one step per segment.
    got = jax.jit(env(cache_segments=segments).rollout)(params,
                                                        _batch(
                                                            prompt,
                                                            prompt_mask), key)
    np.testing.assert_array_equal(got.actions, want.actions)
    np.testing.assert_array_equal(got.mask, want.mask)
    np.testing.assert_allclose(got.logp, want.logp, atol=1e-6)


def test_cache_segments_must_be_positive():
  with pytest.raises(ValueError, match='cache_segments'):
    _env(cache_segments=0)
