"""The host-reward process backend against items that hang, crash or loop:
each costs only its penalty, and nothing is left behind."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen import registry
from jaxrlgen import rewards as rewards_lib
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.rewards import host
from jaxrlgen.rewards import workers
from tests.rewards import bad_items
from tests.rewards import texts as texts_lib

TOK = ByteTokenizer()


counts = workers.counts


def test_every_kind_of_bad_item_costs_only_its_penalty():
  n = 5 * len(bad_items.KINDS)  # 50 items, 5 of each kind.
  call = jax.jit(host.host_reward(bad_items.item, penalty=-1.0, timeout_s=0.2,
                                  max_workers=2, backend='process'))
  # The first call starts the pool (and multiprocessing's fork server and
  # resource tracker) and JAX's threads; the counts after it are the
  # baseline.
  rewards, failed = call(jnp.zeros(n, jnp.int32))
  assert not failed.any()
  before = counts()
  pool = workers.pool(2)
  restarts = pool.restarts
  rewards, failed = call(jnp.arange(n))
  kinds = np.array([bad_items.KINDS[i % len(bad_items.KINDS)]
                    for i in range(n)])
  good = (kinds == 'ok') | (kinds == 'array')
  np.testing.assert_array_equal(failed, ~good)
  np.testing.assert_array_equal(rewards, np.where(good, np.arange(n), -1.0))
  # Every exit, segfault, GIL loop and sleep cost its worker, no more.
  assert pool.restarts - restarts == 4 * 5
  # No more than before (other tests' abandoned threads may end meanwhile).
  assert all(a <= b for a, b in zip(counts(), before)), (counts(), before)
  # The pool is reused, not made again per call.
  assert workers.pool(2) is pool and len(pool.pids()) == 2


def test_text_reward_gives_the_same_as_threads_in_jit():
  texts, gold = ['1', '2 ', 'x'], ['1', '2', '3']
  rollout = texts_lib.rollout(TOK, texts)
  batch = {'answer': jnp.asarray(rewards_lib.fields.encode_texts(gold, 4))}
  got = {}
  for backend in host.BACKENDS:
    reward = rewards_lib.make({'exact_string': 1.0}, tokenizer=TOK,
                              fields=('answer',), backend=backend,
                              max_workers=2)
    got[backend] = jax.jit(reward.with_failures)(rollout, batch)
  np.testing.assert_array_equal(got['process'][0], [1, 1, 0])
  for a, b in zip(got['thread'], got['process']):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(ValueError, match='cannot run in worker processes'):
    host.text_reward(lambda completion: 1.0, TOK, backend='process')
  with pytest.raises(ValueError, match="backend='fork' must be one of"):
    host.host_reward(bad_items.item, backend='fork')


def test_function_from_a_file_by_import_path(tmp_path):
  (tmp_path / 'score.py').write_text(
      'def length(completion):\n  return float(len(completion))\n')
  fn = registry.load(f'{tmp_path}/score.py:length')
  rewards, failed = host.run_calls(fn, [(('abc',), {}), (('',), {})],
                                   max_workers=2, backend='process')
  np.testing.assert_array_equal(rewards, [3.0, 0.0])
  assert not failed.any()


@pytest.mark.slow
def test_1000_hanging_items_leave_nothing_behind():
  call = host.host_reward(bad_items.hang, timeout_s=0.01, max_workers=2,
                          backend='process')
  call.host(np.zeros(2))
  before = counts()
  rewards, failed = call.host(np.zeros(1000))
  assert failed.all() and not rewards.any()
  # No more than before (other tests' abandoned threads may end meanwhile).
  assert all(a <= b for a, b in zip(counts(), before)), (counts(), before)


def test_user_modules_are_imported_by_the_zygote_not_by_each_worker(
    tmp_path):
  # A module loaded from a file (registry's 'path/file.py:attr') is loaded
  # by every worker before it unpickles a function; the zygote imports it
  # once, so workers forked after it (after each hung item) find it there.
  # Before, a test file that imported JAX cost each restarted worker 2-3 s.
  log = tmp_path / 'imports.txt'
  module = tmp_path / 'user_module.py'
  module.write_text(
      'import os\n'
      f'with open({str(log)!r}, "a") as f:\n'
      '  f.write(f"{os.getpid()}\\n")\n'
      'def score(unused):\n'
      '  return 0.0\n')
  registry.Registry('reward', 'config.test').get(f'{module}:score')
  call = host.host_reward(bad_items.hang, timeout_s=0.01, max_workers=2,
                          backend='process')
  rewards, failed = call.host(np.zeros(6))  # Six workers killed, refilled.
  assert failed.all()
  pids = log.read_text().split()
  # This process and the zygote; not one import per worker.
  assert len(pids) == 2, pids
