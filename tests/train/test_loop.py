"""jaxrlgen/train/loop.py: fused steps, and resumable stages."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.core.types import TrainState
from jaxrlgen.train import loop
from jaxrlgen.train import writers


def toy_step(state, batch, key):
  """A stateful step whose result depends on the order of its inputs."""
  noise = jax.random.normal(key, state.shape)
  state = 0.9 * state + batch['x'] + 0.1 * noise
  return state, {'norm': jnp.linalg.norm(state), 'first': state[0]}


def test_fused_steps_equal_separate_steps():
  state = jnp.zeros(3)
  batches = {'x': jnp.arange(12.0).reshape(4, 3)}
  keys = jax.random.split(jax.random.key(0), 4)
  want = state
  for i in range(4):
    want, want_metrics = toy_step(want, {'x': batches['x'][i]}, keys[i])
  got, metrics = jax.jit(loop.fuse_steps(toy_step, 4))(state, batches, keys)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6),
               metrics, want_metrics)


def _counting_step(state, batch, key):
  params = 0.5 * state.params + batch['x'] + 0.01 * jax.random.normal(
      key, state.params.shape)
  return state.replace(step=state.step + 1, params=params), {
      'reward/mean': jnp.sum(params)}


def _fresh():
  return TrainState(step=jnp.zeros((), jnp.int32), params=jnp.zeros(2),
                    opt_state=None)


def _stage(run_dir, total):
  return loop.run_stage(
      run_dir, _fresh(), step_fn=jax.jit(_counting_step),
      batch_fn=lambda s: {'x': jnp.full(2, float(s))}, key=jax.random.key(0),
      config=loop.LoopConfig(total_steps=total, checkpoint_every=2),
      plot=(('reward/mean',), 'stage.png', 'stage'))


def test_run_stage_trains_skips_when_done_and_resumes(tmp_path):
  state, ran = _stage(tmp_path / 'a', 5)
  assert ran and int(state.step) == 5
  assert [r['step'] for r in writers.read_metrics(str(tmp_path / 'a'))] == [
      1, 2, 3, 4, 5]
  assert (tmp_path / 'a' / 'stage.png').exists()
  # Finished: restored, nothing runs.
  again, ran = _stage(tmp_path / 'a', 5)
  assert not ran
  np.testing.assert_array_equal(again.params, state.params)
  # Longer: resumes from step 5 and equals an uninterrupted 8-step run.
  resumed, ran = _stage(tmp_path / 'a', 8)
  whole, _ = _stage(tmp_path / 'b', 8)
  assert ran and int(resumed.step) == 8
  np.testing.assert_allclose(resumed.params, whole.params, rtol=1e-6)


def test_fused_steps_report_a_skip_in_any_step():
  """The fused metrics are the last step's, but a skipped update in any
  step reaches the loop's non-finite watch."""
  def step(state, batch, key):
    del key
    return state + 1, {'x': state, 'nonfinite/skipped': batch['skip']}

  fused = jax.jit(loop.fuse_steps(step, 3))
  keys = jax.random.split(jax.random.key(0), 3)
  _, metrics = fused(jnp.zeros(()), {'skip': jnp.array([0.0, 1.0, 0.0])},
                     keys)
  assert float(metrics['x']) == 2.0
  assert float(metrics['nonfinite/skipped']) == 1.0
