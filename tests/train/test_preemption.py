"""jaxrlgen/train/preemption.py with loop.fit: a notice saves the current
step and stops; the resumed run ends where an uninterrupted one does.

End-to-end runs (a real recipe, SIGTERM from outside, two processes) are in
tests/train/test_faults.py.
"""

import os
import signal

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.core.types import TrainState
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import preemption
from jaxrlgen.train import writers


@pytest.fixture(autouse=True)
def _no_notice():
  preemption.clear()
  yield
  preemption.clear()


def _step(state, batch, key):
  params = 0.5 * state.params + batch['x'] + 0.01 * jax.random.normal(
      key, state.params.shape)
  return state.replace(step=state.step + 1, params=params), {
      'reward/mean': jnp.sum(params)}


def _fresh():
  return TrainState(step=jnp.zeros((), jnp.int32), params=jnp.zeros(2),
                    opt_state=None)


def _stage(run_dir, total, *, signal_at=(), ckpt_cls=None):
  """A resumable stage whose step `s` sends SIGTERM to this process for
  each s in `signal_at` (from the batch function, while the step runs)."""
  step_fn = jax.jit(_step)

  def batch_fn(s):
    if s in signal_at:
      os.kill(os.getpid(), signal.SIGTERM)
    return {'x': jnp.full(2, float(s))}

  with preemption.listen():
    return loop.run_stage(
        run_dir, _fresh(), step_fn=step_fn, batch_fn=batch_fn,
        key=jax.random.key(0),
        config=loop.LoopConfig(total_steps=total, checkpoint_every=4),
        eval_fn=lambda state: {'eval/sum': float(jnp.sum(state.params))})


def _rows(run_dir):
  return [{k: v for k, v in r.items() if k not in ('step_time',
                                                   'steps_per_second')}
          for r in writers.read_metrics(str(run_dir))]


def test_sigterm_saves_the_current_step_and_resumes_identically(tmp_path):
  whole, _ = _stage(tmp_path / 'whole', 8)
  with pytest.raises(preemption.Preempted, match='step 3 .*SIGTERM|SIGTERM'
                     '.*step 3') as raised:
    _stage(tmp_path / 'cut', 8, signal_at=(2,))  # Step 2 is the third.
  assert raised.value.step == 3
  ckpt = checkpoint_lib.Checkpointer(tmp_path / 'cut' / 'checkpoints')
  assert ckpt.all_steps() == [3]  # Off the checkpoint_every=4 schedule.
  ckpt.close()
  assert [r['step'] for r in _rows(tmp_path / 'cut')] == [0, 1, 2, 3]
  preemption.clear()
  resumed, ran = _stage(tmp_path / 'cut', 8)
  assert ran
  np.testing.assert_array_equal(resumed.params, whole.params)
  assert _rows(tmp_path / 'cut') == _rows(tmp_path / 'whole')


def test_a_second_sigterm_while_saving_leaves_a_good_checkpoint(
    tmp_path, monkeypatch):
  real_save = checkpoint_lib.Checkpointer.save
  calls = []

  def save_signalled(self, step, state, **kwargs):
    calls.append(step)
    os.kill(os.getpid(), signal.SIGTERM)  # The scheduler insists.
    return real_save(self, step, state, **kwargs)

  monkeypatch.setattr(checkpoint_lib.Checkpointer, 'save', save_signalled)
  with pytest.raises(preemption.Preempted):
    _stage(tmp_path / 'cut', 8, signal_at=(1,))
  assert calls == [2]
  monkeypatch.undo()
  preemption.clear()
  resumed, _ = _stage(tmp_path / 'cut', 8)
  whole, _ = _stage(tmp_path / 'whole', 8)
  np.testing.assert_array_equal(resumed.params, whole.params)


def test_a_notice_before_the_stage_stops_it_before_any_step(tmp_path):
  with preemption.listen():
    os.kill(os.getpid(), signal.SIGUSR1)
    assert preemption.requested()
  with pytest.raises(preemption.Preempted, match='SIGUSR1.*before training'):
    _stage(tmp_path / 'run', 8)
  assert not (tmp_path / 'run' / 'metrics.jsonl').exists() or not _rows(
      tmp_path / 'run')


def test_listen_puts_back_the_previous_handlers():
  before = signal.getsignal(signal.SIGTERM)
  with preemption.listen():
    assert signal.getsignal(signal.SIGTERM) is not before
  assert signal.getsignal(signal.SIGTERM) is before


def test_unknown_signal_names_are_rejected():
  with pytest.raises(ValueError, match="'SIGNOPE'"):
    with preemption.listen(('SIGNOPE',)):
      pass
