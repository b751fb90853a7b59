"""The non-finite guard: NaN in a reward, a gradient or the parameters skips
the update (state kept, step counted), and the loop stops a run after too
many such steps in a row without ever checkpointing non-finite parameters.

The RL cases run one jitted GRPO step of the toy model (tests/algos/toy.py),
compiled once for the module, on a stored batch of scored completions (the
`replay` actor: no sampling to compile); a NaN is one stored reward. A NaN
from a reward function, on the sampling path, is in test_compiles.py.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxrlgen import algos
from jaxrlgen import schema
from jaxrlgen.algos import base
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import writers
from tests.algos import toy

N, G, T = 2, 4, 4  # Prompts, completions of each, completion length.


def toy_model(**env_kwargs):
  """toy.setup's model and environment, its parameters initialised by one
  compiled program (eagerly, each initialiser op compiles on its own)."""
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=12)
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)), eos_id=toy.EOS,
                pad_id=toy.PAD, **env_kwargs)
  params = jax.jit(functools.partial(tfm.init_params, cfg))(jax.random.key(0))
  return env, params


@functools.cache
def setup():
  env, params = toy_model(num_samples=G, max_new_tokens=T)
  algo = algos.make(algos.default_config('grpo'))
  tx = optax.adam(1e-2)
  step = jax.jit(functools.partial(
      step_lib.rl_step, actor=step_lib.replay, env=env,
      reward_fn=toy.fives_reward, algo=algo, tx=tx))
  return env, params, algo, tx, step


def batch_for(poisoned: bool):
  """N prompts with G stored completions each, scored by the toy reward;
  poisoned: one completion's reward is NaN."""
  rng = np.random.default_rng(0)
  completion = rng.integers(2, 16, (N, G, T)).astype(np.int32)
  reward = (completion == toy.TARGET).mean(-1).astype(np.float32)
  reward[0, 0] = 1.0  # Not all equal: GRPO's advantages are not all zero.
  if poisoned:
    reward[1, 2] = np.nan
  return {'prompt': jnp.full((N, 3), 7, jnp.int32),
          'prompt_mask': jnp.ones((N, 3), bool),
          'completion': jnp.asarray(completion),
          'completion_mask': jnp.ones((N, G, T), bool),
          'logp': jnp.full((N, G, T), -np.log(16.0), jnp.float32),
          'reward': jnp.asarray(reward)}


def fresh_state(nan_param: bool = False) -> TrainState:
  _, params, algo, tx, _ = setup()
  copy = lambda: jax.tree.map(jnp.copy, params)  # The step may donate.
  state = TrainState.create(
      copy(), tx, ref_params=copy() if algo.uses_reference else None,
      algo_state=base.init_algo_state(algo, params))
  if nan_param:  # One NaN weight: every log-prob, hence the loss, is NaN.
    leaves, treedef = jax.tree.flatten(state.params)
    leaves = [leaves[0].at[(0,) * leaves[0].ndim].set(jnp.nan), *leaves[1:]]
    state = state.replace(params=jax.tree.unflatten(treedef, leaves))
  return state


def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)  # NaN equals NaN here.


def assert_skipped(before: TrainState, after: TrainState, metrics):
  assert float(metrics[base.SKIPPED]) == 1.0
  assert int(after.step) == int(before.step) + 1
  assert int(after.skipped_steps) == int(before.skipped_steps) + 1
  assert float(metrics[base.SKIPPED_STEPS]) == int(after.skipped_steps)
  for field in ('params', 'opt_state', 'algo_state', 'ref_params'):
    assert_trees_equal(getattr(before, field), getattr(after, field))


def test_nan_reward_skips_the_update_then_a_finite_step_updates():
  step = setup()[-1]
  state = fresh_state()
  skipped, metrics = step(state, batch_for(True), jax.random.key(0))
  assert np.isnan(float(metrics['reward/mean']))
  assert_skipped(state, skipped, metrics)
  after, metrics = step(skipped, batch_for(False), jax.random.key(1))
  assert float(metrics[base.SKIPPED]) == 0.0
  assert int(after.skipped_steps) == 1 and int(after.step) == 2
  assert float(metrics[base.SKIPPED_STEPS]) == 1.0
  changed = jax.tree.leaves(jax.tree.map(
      lambda a, b: bool(np.any(np.asarray(a) != np.asarray(b))),
      skipped.params, after.params))
  assert any(changed)
  assert base.all_finite(after.params) and base.all_finite(after.opt_state)


def test_nan_parameter_skips_the_update():
  step = setup()[-1]
  state = fresh_state(nan_param=True)
  after, metrics = step(state, batch_for(False), jax.random.key(0))
  assert np.isnan(float(metrics['loss']))
  assert_skipped(state, after, metrics)


@jax.custom_vjp
def nan_gradient(x, poisoned):
  """The identity, whose cotangent is NaN where `poisoned`: the loss stays
  finite, only the gradient is not."""
  del poisoned
  return x


nan_gradient.defvjp(
    lambda x, poisoned: (x, poisoned),
    lambda poisoned, g: (jnp.where(poisoned, jnp.nan, g), None))


def test_nan_gradient_skips_its_optimizer_update_only():
  """Two minibatches, one with a NaN gradient (its loss is finite): the
  other's update is kept, its own skipped (params, Adam's moments and
  count)."""
  tx = optax.adam(0.1)
  params = {'w': jnp.array([1.0, -2.0, 0.5])}
  x = jnp.array([[1.0, 2.0, 3.0], [0.5, -1.0, 2.0]])

  def loss_fn(p, mb):
    w = nan_gradient(p['w'], mb['poisoned'][0])
    return jnp.sum((mb['x'] @ w) ** 2), {}

  run = jax.jit(functools.partial(base.minibatch_update, loss_fn, tx,
                                  num_minibatches=2))

  def update(poisoned, enabled=True):
    return run(params, tx.init(params),
               {'x': x, 'poisoned': jnp.asarray(poisoned)},
               jax.random.key(0), enabled=enabled)

  one_bad = update([False, True])
  neither = update([True, True])
  both = update([False, False])
  disabled = update([False, False], enabled=False)
  for got, skipped in ((one_bad, 0.5), (neither, 1.0), (both, 0.0),
                       (disabled, 1.0)):
    assert float(got[2][base.SKIPPED]) == skipped
    assert np.isfinite(float(got[2]['loss']))
  for got in (neither, disabled):
    assert_trees_equal(got[0], params)
    assert_trees_equal(got[1], tx.init(params))
  # The kept update is the finite minibatch's: one Adam step.
  assert int(one_bad[1][0].count) == 1
  assert not np.allclose(one_bad[0]['w'], params['w'])
  assert int(both[1][0].count) == 2


def _run(tmp_path, state, poisoned_steps, *, total, **config):
  """`run_stage` of the toy step; `poisoned_steps` are 1-based (as logged)."""
  step = setup()[-1]
  return loop.run_stage(
      tmp_path, state, step_fn=step,
      batch_fn=lambda s: batch_for(s + 1 in poisoned_steps),
      key=jax.random.key(0),
      config=loop.LoopConfig(total_steps=total, **config))


def _checkpoint(tmp_path):
  with checkpoint_lib.Checkpointer(tmp_path / 'checkpoints') as ckpt:
    step = ckpt.latest_step()
    return step, None if step is None else ckpt.restore(step, fresh_state())


def test_stop_raises_at_the_first_nonfinite_step(tmp_path):
  with pytest.raises(loop.NonFiniteError,
                     match=r"step 3 skipped its update \(nonfinite='stop'.*"
                     r'the first, step 3, has reward/mean = nan'):
    _run(tmp_path, fresh_state(), {3}, total=6, nonfinite='stop')
  step, restored = _checkpoint(tmp_path)
  assert step == 3  # Logged every step: the flag is read at once.
  assert int(restored.skipped_steps) == 1
  assert base.all_finite(restored.params)
  rows = writers.read_metrics(str(tmp_path))
  assert [r['step'] for r in rows] == [1, 2, 3]
  assert rows[-1][base.SKIPPED] == 1.0 and rows[-1][base.SKIPPED_STEPS] == 1


def test_skip_stops_after_k_skipped_steps_in_a_row(tmp_path):
  # Two skipped steps, finite ones (the streak restarts), then three.
  with pytest.raises(loop.NonFiniteError,
                     match=r'3 steps in a row \(6 to 8\) skipped their '
                     r'updates.*max_nonfinite_steps=3.*'
                     r'first, step 6, has reward/mean'):
    _run(tmp_path, fresh_state(), {2, 3, 6, 7, 8}, total=12,
         max_nonfinite_steps=3, log_every=100)
  step, restored = _checkpoint(tmp_path)
  # Not logging, the loop reads each flag while the next step runs: it stops
  # after step 9 (finite, so it updated), one after the third skip.
  assert step == 9
  assert int(restored.skipped_steps) == 5
  assert base.all_finite(restored.params)


def test_skip_finishes_a_run_with_occasional_nonfinite_steps(tmp_path):
  state, _ = _run(tmp_path, fresh_state(), {2, 4}, total=5,
                  max_nonfinite_steps=2, checkpoint_every=2)
  assert int(state.step) == 5 and int(state.skipped_steps) == 2
  step, restored = _checkpoint(tmp_path)
  assert step == 5 and int(restored.skipped_steps) == 2
  assert_trees_equal(restored.params, state.params)
  assert base.all_finite(restored.params)


@pytest.mark.parametrize('checkpoint_every,error', [
    (0, '2 steps in a row'),  # Stopped: the save on the way out refuses.
    (1, 'Step 1: the parameters hold NaN'),  # A scheduled save refuses.
])
def test_nonfinite_parameters_are_never_checkpointed(tmp_path,
                                                     checkpoint_every, error):
  with pytest.raises(loop.NonFiniteError, match=error):
    _run(tmp_path, fresh_state(nan_param=True), set(), total=4,
         max_nonfinite_steps=2, checkpoint_every=checkpoint_every)
  assert _checkpoint(tmp_path)[0] is None


def test_checkpoint_from_before_the_skip_count_restores(tmp_path):
  """A checkpoint written without `skipped_steps` restores with count 0."""
  state = fresh_state()
  old = {'step': jnp.array(7, jnp.int32), 'params': state.params,
         'opt_state': state.opt_state, 'ref_params': state.ref_params,
         'algo_state': state.algo_state, 'frozen': None}
  with checkpoint_lib.Checkpointer(tmp_path) as ckpt:
    ckpt.save(7, old)
    ckpt.wait_until_finished()
    restored = ckpt.restore(7, jax.eval_shape(lambda: state))
  assert int(restored.step) == 7 and int(restored.skipped_steps) == 0
  assert_trees_equal(restored.params, state.params)


@pytest.mark.parametrize('cls', [
    functools.partial(loop.LoopConfig, total_steps=1), text_rl.RunConfig])
def test_bad_policy_and_limit_are_field_errors(cls):
  with pytest.raises(schema.FieldError, match=r"nonfinite.*'skip', 'stop'"):
    cls(nonfinite='ignore')
  with pytest.raises(schema.FieldError, match='max_nonfinite_steps'):
    cls(max_nonfinite_steps=0)
  assert cls(nonfinite='stop').nonfinite == 'stop'
