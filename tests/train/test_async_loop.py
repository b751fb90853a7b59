"""The asynchronous actor-learner loop: exact lag and loop.fit's guarantees
(toy actor and learner); then, in a subprocess with 4 simulated CPU devices
(run this file to do only that), IMPALA on a tiny text task: without lag the
same numbers as the synchronous `rl_step`, and a 2 actor + 2 learner device
split the same numbers as one device.
"""

import functools
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.arithmetic import config as arithmetic
from jaxrlgen import algos
from jaxrlgen import recipes
from jaxrlgen.core.types import Acted
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import async_loop
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import step as step_lib
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import writers
from jaxrlgen.policies import LMPolicy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(
    __file__))))
N = 2  # Prompts per batch: splits over 2 devices.


# A toy actor-learner pair that makes the pipeline observable: the learner
# counts its updates in `w`, the actor reports the `w` it generated with (as
# rewards) and a draw from its key (as log-probs).
def toy_actor(params, batch, key):
  draw = jax.random.uniform(jax.random.split(key, 3)[0], ())
  b = batch['id'].shape[0]
  rollout = Rollout(context={}, actions=jnp.zeros((b, 1), jnp.int32),
                    logp=jnp.full((b, 1), draw), mask=jnp.ones((b, 1), bool))
  return Acted(rollout=rollout, rewards=jnp.full((b,), params['w']),
               batch=batch, failed=jnp.zeros((b,), bool))


def toy_learner(state, acted, key):
  del key
  state = state.replace(step=state.step + 1,
                        params={'w': state.params['w'] + 1.0})
  return state, {'generated_by': jnp.mean(acted.rewards),
                 'batch_id': jnp.mean(acted.batch['id']),
                 'actor_draw': jnp.mean(acted.rollout.logp)}


TOY = async_loop.ActorLearner(toy_actor, toy_learner)


def toy_state():
  return TrainState(step=jnp.zeros((), jnp.int32),
                    params={'w': jnp.zeros((), jnp.float32)}, opt_state={})


def toy_batch(step):
  return {'id': np.full((N,), step, np.float32)}


def expected_draw(key, step):
  key = jax.random.split(jax.random.fold_in(key, step), 3)[0]
  return float(jax.random.uniform(key, ()))


@pytest.mark.parametrize('max_staleness', [0, 1, 3])
def test_actor_lags_exactly_max_staleness(max_staleness):
  key, total, fetched = jax.random.key(3), 6, []

  def batch_fn(step):
    fetched.append(step)
    return toy_batch(step)

  pipeline = async_loop.Pipeline(TOY, batch_fn=batch_fn, key=key,
                                 total_steps=total,
                                 max_staleness=max_staleness)
  state = pipeline.place(toy_state())
  for k in range(total):
    state, metrics = pipeline(state, k, jax.random.fold_in(key, k))
    metrics = loop.to_python(metrics)
    assert metrics['batch_id'] == k
    assert metrics['generated_by'] == max(k - max_staleness, 0)
    assert metrics['staleness'] == min(k, max_staleness)
    # Batch k's actor key is the one loop.fit gives step k.
    assert metrics['actor_draw'] == pytest.approx(expected_draw(key, k))
  # Each batch is loaded once, in order, and none past the end.
  assert fetched == list(range(total))
  assert float(state.params['w']) == total


def test_fit_logs_evaluates_checkpoints_saves_on_error_and_resumes(tmp_path):
  key, fail_at = jax.random.key(0), [5]
  config = loop.LoopConfig(total_steps=8, log_every=2, eval_every=4,
                           checkpoint_every=2)

  def batch_fn(step):
    if step == fail_at[0]:
      raise KeyboardInterrupt('simulated preemption')
    return toy_batch(step)

  def eval_fn(state):
    return {'eval/w': float(state.params['w'])}

  def run(state, resume_step):
    with checkpoint_lib.Checkpointer(tmp_path / 'checkpoints') as ckpt, \
        writers.MetricWriter(tmp_path, resume_step=resume_step) as writer:
      return async_loop.fit(state, steps=TOY, batch_fn=batch_fn, key=key,
                            config=config, checkpointer=ckpt, writer=writer,
                            eval_fn=eval_fn, max_staleness=2)

  # With a lag of 2, batch 5 is loaded during step 3, after three updates.
  with pytest.raises(KeyboardInterrupt):
    run(toy_state(), None)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / 'checkpoints')
  assert ckpt.all_steps() == [2, 3]
  restored = ckpt.restore(None, toy_state())
  ckpt.close()
  assert int(restored.step) == 3 and float(restored.params['w']) == 3

  fail_at[0] = None
  final = run(restored, 3)
  assert float(final.params['w']) == 8
  records = writers.read_metrics(tmp_path)
  train = [r for r in records if 'staleness' in r]
  assert [r['step'] for r in train] == [2, 4, 6, 8]
  for r in train:
    assert r['step_time'] > 0 and r['batch_id'] == r['step'] - 1
  # After the restart at 3 the pipeline refills from version 3.
  assert [r['staleness'] for r in train] == [1, 0, 2, 2]
  assert [r['generated_by'] for r in train] == [0, 3, 3, 5]
  assert [(r['step'], r['eval/w']) for r in records if 'eval/w' in r] == [
      (0, 0.0), (4, 4.0), (8, 8.0)]
  assert (tmp_path / 'checkpoints' / '8').exists()
  assert list((tmp_path / 'tensorboard').iterdir())


class _Reached(Exception):
  pass


def test_text_rl_switches_to_the_async_loop(tmp_path, monkeypatch):
  config = arithmetic.get_config('impala')
  config.model.update(hidden_dim=16, mlp_dim=32, num_layers=1)
  config.data.data_dir = str(tmp_path / 'data')
  config.task.update(max_operand=9, num_train=32, num_test=16)
  config.sft.steps = 0
  config.rl.update(batch_size=8, group_size=4)
  config.eval.update(num_examples=16, batch_size=16)
  config.total_steps = 2
  seen = {}

  def fake_fit(state, **kwargs):
    seen.update(kwargs)
    raise _Reached

  monkeypatch.setattr(async_loop, 'fit', fake_fit)
  monkeypatch.setattr(loop, 'fit', lambda *a, **k: pytest.fail('sync loop'))
  with pytest.raises(_Reached):
    recipes.run(config, str(tmp_path / 'run'))
  assert seen['max_staleness'] == 2
  assert isinstance(seen['steps'], async_loop.ActorLearner)
  assert seen['config'].total_steps == 2 and seen['eval_fn'] is not None

  config.loop = 'asynchronous'
  monkeypatch.setattr(text_rl, 'load_task', lambda *a: pytest.fail('loaded'))
  with pytest.raises(ValueError, match='config.loop'):
    recipes.run(config, str(tmp_path / 'bad'))


def tiny_task(num_prompts=N):
  """A tiny IMPALA task: the policy (with a value head) is paid for token 5."""
  cfg = tfm.TransformerConfig(vocab_size=16, hidden_dim=16, mlp_dim=32,
                              num_layers=1, num_heads=2, num_kv_heads=2,
                              max_seq_len=8, value_head=True)
  env = TextEnv(LMPolicy(tfm.Transformer(cfg)),
                max_new_tokens=4,
                eos_id=1,
                pad_id=0,
                num_samples=2)

  def reward_fn(rollout, batch):
    del batch
    return jnp.mean((rollout.actions == 5) & rollout.mask, axis=1)

  algo = algos.make(algos.default_config('impala'))
  tx = optax.adam(1e-2)
  params = tfm.init_params(cfg, jax.random.key(0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params))
  batch = {'prompt': np.full((num_prompts, 3), 7, np.int32),
           'prompt_mask': np.ones((num_prompts, 3), bool)}
  return env, reward_fn, algo, tx, state, batch


def run_pipeline(steps, state, batch, key, num_steps, max_staleness,
                 actor_devices=None, learner_devices=None, inspect=None):
  pipeline = async_loop.Pipeline(
      steps, batch_fn=lambda s: batch, key=key, total_steps=num_steps,
      max_staleness=max_staleness, actor_devices=actor_devices,
      learner_devices=learner_devices)
  state = pipeline.place(state)
  history = []
  for k in range(num_steps):
    state, metrics = pipeline(state, k, jax.random.fold_in(key, k))
    history.append(loop.to_python(metrics))
    if inspect is not None:
      inspect(pipeline, state, k)
  return state, history


def check_no_lag_repeats_the_synchronous_step(steps, env, reward_fn, algo,
                                              tx, state, batch, device):
  """Without lag, actor + learner on `device` are `rl_step`."""
  key = jax.random.key(7)
  sync_step = jax.jit(functools.partial(step_lib.rl_step, env=env,
                                        reward_fn=reward_fn, algo=algo, tx=tx))
  sync_state = jax.device_put(state, device)
  sync_history = []
  for k in range(3):
    sync_state, metrics = sync_step(sync_state, batch,
                                    jax.random.fold_in(key, k))
    sync_history.append(loop.to_python(metrics))
  async_state, history = run_pipeline(
      steps, jax.tree.map(jnp.copy, state), batch, key, 3, 0, [device],
      [device])
  for want, got in zip(sync_history, history):
    assert got.pop('staleness') == 0
    assert set(got) == set(want)
    for name in want:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-5, atol=1e-6,
                                 err_msg=name)
  assert history[-1]['grad_norm'] > 0
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5,
                                 atol=1e-6), async_state.params,
               sync_state.params)


def mesh_main():
  """On one device, no lag repeats `rl_step`; 2 actor + 2 learner devices
  give the numbers of one device."""
  devices = jax.devices()
  assert len(devices) == 4, devices
  actor_devices, learner_devices = async_loop.split_devices(devices)
  assert len(actor_devices) == len(learner_devices) == 2
  assert not set(actor_devices) & set(learner_devices)
  assert devices[0] in learner_devices  # Where restored state lands.
  env, reward_fn, algo, tx, state, batch = tiny_task()
  steps = async_loop.rl_actor_learner(env, reward_fn, algo, tx)
  check_no_lag_repeats_the_synchronous_step(steps, env, reward_fn, algo, tx,
                                            state, batch, devices[0])
  key = jax.random.key(7)
  seen = []

  def inspect(pipeline, state, step):
    learner = pipeline.learner_group.devices
    assert {d for x in jax.tree.leaves(state.params)
            for d in x.sharding.device_set} == learner
    assert {d for x in jax.tree.leaves(pipeline.actor_params)
            for d in x.sharding.device_set} == pipeline.actor_group.devices
    # The next batch, generated on the actor group, waits split over the
    # learner group.
    for item in pipeline._queue:  # pylint: disable=protected-access
      tokens = item.acted.rollout.actions
      assert tokens.sharding.device_set == learner
      assert not tokens.sharding.is_fully_replicated
      seen.append(step)

  one = [devices[0]]
  single_state, single = run_pipeline(
      steps, jax.tree.map(jnp.copy, state), batch, key, 3, 1, one, one)
  split_state, split = run_pipeline(steps, state, batch, key, 3, 1,
                                    actor_devices, learner_devices, inspect)
  assert seen == [0, 1]
  for want, got in zip(single, split):
    for name in want:
      np.testing.assert_allclose(got[name], want[name], rtol=1e-4, atol=1e-5,
                                 err_msg=name)
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-4,
                                 atol=1e-5), split_state.params,
               single_state.params)
  print('mesh OK')


@pytest.mark.slow  # A subprocess on 4 devices (~40 s).
def test_one_device_and_two_plus_two_devices():
  # One subprocess does both, so the one-device actor and learner compile once.
  env = {**os.environ,
         'XLA_FLAGS': '--xla_force_host_platform_device_count=4',
         'JAX_PLATFORMS': 'cpu',
         'PYTHONPATH': REPO + os.pathsep + os.environ.get('PYTHONPATH', '')}
  result = subprocess.run([sys.executable, os.path.abspath(__file__)],
                          env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=600, check=False)
  assert result.returncode == 0 and 'mesh OK' in result.stdout, (
      result.stdout[-3000:] + result.stderr[-3000:])


if __name__ == '__main__':
  mesh_main()
