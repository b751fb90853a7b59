"""Sequence packing: first-fit placement against a Python reference, the
packed rows against the sequences, and packed teacher-forced passes (text
and multi-turn; every text algorithm's loss and gradient) against unpacked
ones."""

import dataclasses
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen.core import packing
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from tests.algos import toy
from tests.envs import test_multiturn
from tests.envs import test_text


def _python_first_fit(lengths, rows, row_length):
  """First fit decreasing, ties in batch order: (row or None, offset)."""
  fill = [0] * rows
  placed = [None] * len(lengths)
  for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
    for r in range(rows):
      if fill[r] + lengths[i] <= row_length:
        placed[i] = (r, fill[r])
        fill[r] += lengths[i]
        break
  return placed


@pytest.mark.parametrize('rows', [3, 5, 8])
def test_first_fit_matches_a_python_reference(rows):
  lengths = np.random.default_rng(rows).integers(0, 12, size=10)
  row, offset, fits = jax.jit(packing.first_fit, static_argnums=(1, 2))(
      jnp.asarray(lengths), rows, 12)
  want = _python_first_fit(lengths.tolist(), rows, 12)
  assert bool(fits) == all(p is not None for p in want)
  for i, p in enumerate(want):
    if p is None:
      assert row[i] == rows
    else:
      assert (int(row[i]), int(offset[i])) == p, i


def test_packed_rows_hold_each_sequence_in_order():
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 50, size=(6, 9))
  real = rng.random((6, 9)) < 0.6  # Not contiguous: padding inside too.
  layout = jax.jit(packing.pack, static_argnums=(2, 3))(
      jnp.asarray(tokens), jnp.asarray(real), 5, 9)
  assert bool(layout.fits)
  packed_tokens = np.asarray(layout.tokens).reshape(-1)
  segments = np.asarray(layout.segment_ids).reshape(-1)
  positions = np.asarray(layout.positions).reshape(-1)
  for i in range(6):
    here = np.flatnonzero(segments == i + 1)
    np.testing.assert_array_equal(packed_tokens[here], tokens[i][real[i]])
    np.testing.assert_array_equal(positions[here], np.arange(real[i].sum()))
    assert np.all(np.diff(here) == 1) and len(set(here // 9)) <= 1, i
    np.testing.assert_array_equal(np.asarray(layout.slot)[i][real[i]], here)
  assert np.sum(segments > 0) == real.sum()


def _text_rollout(value_head=False):
  """16 sampled completions of left-padded prompts, cut to uneven lengths
  (most short, a few whole), as EOS would."""
  config = dataclasses.replace(test_text._CONFIG, value_head=value_head)  # pylint: disable=protected-access
  env = test_text._env(policy=LMPolicy(tfm.Transformer(config)),  # pylint: disable=protected-access
                       num_samples=4, max_new_tokens=10)
  params = tfm.init_params(config, jax.random.key(0))
  prompt, mask = test_text._prompts([0, 2, 3, 1], seed=3)  # pylint: disable=protected-access
  rollout = jax.jit(env.rollout)(params, {'prompt': prompt,
                                          'prompt_mask': mask},
                                 jax.random.key(1))
  lengths = np.array([1, 2, 10, 3, 1, 4, 2, 10, 2, 1, 5, 3, 2, 8, 1, 2])
  return env, params, rollout.replace(mask=jnp.asarray(
      np.arange(10)[None] < lengths[:, None]))


def _assert_same_on_valid_steps(a, b, mask, **tols):
  np.testing.assert_allclose(np.where(mask, a, 0.0), np.where(mask, b, 0.0),
                             **tols)


def _compare_passes(env, params, rollout, rows, with_values):
  packed = dataclasses.replace(env, pack_rows=rows)

  def both(params):
    outs = [e.evaluate(params, rollout, with_values=with_values)
            for e in (env, packed)]
    hidden = [e.hidden_states(params, rollout) for e in (env, packed)]
    grads = [jax.grad(lambda p, e=e: jnp.sum(jnp.where(
        rollout.mask, e.evaluate(p, rollout).logp, 0.0)))(params)
             for e in (env, packed)]
    return outs, hidden, grads

  (out, out_p), (hidden, hidden_p), (grad, grad_p) = jax.jit(both)(params)
  mask = np.asarray(rollout.mask)
  leaves = jax.tree.leaves(out)
  assert len(leaves) == 3 if with_values else 2
  for a, b in zip(leaves, jax.tree.leaves(out_p)):
    _assert_same_on_valid_steps(a, b, mask, rtol=1e-5, atol=1e-5)
  _assert_same_on_valid_steps(hidden, hidden_p, mask[..., None], rtol=1e-5,
                              atol=1e-5)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_p)):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def _layout(env, rollout, rows):
  tokens, real, _ = env.packed_tokens(rollout)
  return packing.pack(tokens, real, rows, tokens.shape[1]), real


def _fewest_rows(env, rollout):
  """The fewest packed rows that hold the rollout: fewer than its rows."""
  rows = next(r for r in range(1, rollout.batch_size + 1)
              if bool(_layout(env, rollout, r)[0].fits))
  assert rows < rollout.batch_size
  return rows


def test_packed_text_pass_equals_the_unpacked_one():
  """Log-probs, entropies, values, decoder states and the gradient of the
  valid log-probs: 16 uneven sequences packed into 8 rows."""
  env, params, rollout = _text_rollout(value_head=True)
  lengths = np.asarray(rollout.mask).sum(1)
  assert lengths.min() < lengths.max(), lengths  # Uneven: EOS ends some.
  layout, real = _layout(env, rollout, 8)
  assert bool(layout.fits)
  assert int(real.sum()) < layout.num_slots < real.size
  _compare_passes(env, params, rollout, 8, with_values=True)


@pytest.mark.slow  # Compiles both passes again (~20 s on 2 busy cores).
def test_a_batch_that_does_not_fit_runs_unpacked():
  env, params, rollout = _text_rollout()
  assert not bool(_layout(env, rollout, 2)[0].fits)
  _compare_passes(env, params, rollout, 2, with_values=False)


def test_packed_multiturn_pass_equals_the_unpacked_one(episodes):
  """Observations and padding slots inside the stream: only the attended
  tokens are packed, and each action reads the state it was sampled from."""
  env, params, _, rollout = episodes
  _compare_passes(env, params, rollout, _fewest_rows(env, rollout),
                  with_values=False)


@pytest.fixture(scope='module')
def episodes():
  """test_multiturn's CopyGame episodes (its fixture's)."""
  env, params, batch = test_multiturn._env(num_samples=4)  # pylint: disable=protected-access
  batch = {**batch, 'secret': jnp.full((4,), 9)}
  return env, params, batch, test_multiturn._rollout(env, params, batch,  # pylint: disable=protected-access
                                                     seed=7)


@pytest.mark.slow  # 14 algorithms, each compiled twice (~1 min).
@pytest.mark.parametrize('name', test_multiturn.EVERY)
def test_every_text_algorithm_has_the_same_loss_and_gradient_packed(name):
  env, params, batch = toy.setup(num_samples=4, num_prompts=4,
                                 value_head=name in ('a2c', 'impala', 'ppo'))
  algo = algos.make(algos.default_config(name))
  state = toy.train_state(algo, env, params, batch, optax.adam(1e-3))
  rollout = jax.jit(env.rollout)(params, batch, jax.random.key(2))
  lengths = np.array([1, 2, 6, 3, 1, 4, 2, 6, 2, 1, 5, 3, 2, 6, 1, 2])
  rollout = rollout.replace(mask=jnp.asarray(
      np.arange(6)[None] < lengths[:, None]))
  rewards = toy.fives_reward(rollout, batch)
  rows = _fewest_rows(env, rollout)
  packed = dataclasses.replace(env, pack_rows=rows)

  @jax.jit
  def run(state):
    out = []
    for e in (env, packed):
      exp, _, _ = algo.prepare(e, state, rollout, rewards, jax.random.key(3))
      loss_fn = lambda p, e=e, exp=exp: algo.loss(e, p, exp)[0]
      out.append(jax.value_and_grad(loss_fn)(state.params))
    return out

  (loss, grad), (loss_p, grad_p) = run(state)
  np.testing.assert_allclose(loss_p, loss, rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(grad), jax.tree.leaves(grad_p)):
    np.testing.assert_allclose(b, a, rtol=1e-3, atol=1e-5)
