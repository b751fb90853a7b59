"""Host rewards in threads or in worker processes: per-item cost, and what
1,000 hanging items leave behind.

  python -m experiments.benchmarks.host_reward_processes [--json]

Per-item cost: a batch of 64 cheap items (`cheap`: a string's length) run by
`rewards.host.run_calls` with each backend, 2 workers (threads or
processes), the pool warm; the median over repeats, divided by 64.

Leaks: 1,000 items that sleep for good, with a timeout of 0.01 s. Counts
of Python threads, OS threads (/proc/self/task) and descendant processes
(children, and theirs) before the call (pool warm) and after it. The
thread backend is run on 50 such items only: each abandoned item stays as
a live thread, which the counts show.
"""

import json
import time

from absl import app
from absl import flags
import numpy as np

from jaxrlgen.rewards import host
from jaxrlgen.rewards import workers


def cheap(text: str) -> float:
  return float(len(text))


def hang(unused_text: str) -> float:
  time.sleep(1e6)
  return 0.0


def counts() -> dict:
  return dict(zip(('python_threads', 'os_threads', 'processes'),
                  workers.counts()))


def per_item_s(fn, backend: str, b: int = 64, repeats: int = 20) -> float:
  calls = [((f'item {i}',), {}) for i in range(b)]
  host.run_calls(fn, calls, max_workers=2, backend=backend)  # Warm.
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    _, failed = host.run_calls(fn, calls, max_workers=2, backend=backend)
    times.append(time.perf_counter() - start)
    assert not failed.any()
  return float(np.median(times)) / b


def leaks(fn, backend: str, n: int) -> dict:
  host.run_calls(fn, [(('x',), {})] * 2, timeout_s=0.01, max_workers=2,
                 backend=backend)
  before = counts()
  start = time.perf_counter()
  _, failed = host.run_calls(fn, [(('x',), {})] * n, timeout_s=0.01,
                             max_workers=2, backend=backend)
  seconds = time.perf_counter() - start
  assert failed.all()
  return dict(items=n, seconds=seconds, before=before, after=counts())


def main(unused_argv):
  # By module name, so that worker processes can import the functions.
  # pylint: disable-next=g-import-not-at-top,import-self
  from experiments.benchmarks import host_reward_processes as this
  out = {'start': counts()}
  out['per_item_s'] = {b: per_item_s(this.cheap, b) for b in host.BACKENDS}
  out['process_hangs'] = leaks(this.hang, 'process', flags.FLAGS.hangs)
  out['process_restarts'] = workers.pool(2).restarts
  # The same cheap batch again: the restarted pool is as fast as before.
  out['per_item_after_hangs_s'] = per_item_s(this.cheap, 'process')
  out['thread_hangs'] = leaks(this.hang, 'thread', 50)
  workers.close_all()
  out['after_close'] = counts()
  print(f"per item: thread {out['per_item_s']['thread'] * 1e6:.0f} us, "
        f"process {out['per_item_s']['process'] * 1e6:.0f} us, "
        f"process after the hangs {out['per_item_after_hangs_s'] * 1e6:.0f} "
        'us')
  for key in ('process_hangs', 'thread_hangs'):
    r = out[key]
    print(f"{key}: {r['items']} items in {r['seconds']:.1f} s; "
          f"before {r['before']}, after {r['after']}")
  print(f"start {out['start']}, after closing the pool {out['after_close']}")
  if flags.FLAGS.json:
    print(json.dumps(out))


if __name__ == '__main__':
  # Defined here, not at import: main imports this module by name.
  flags.DEFINE_bool('json', False, 'Also print one JSON object.')
  flags.DEFINE_integer('hangs', 1000, 'Hanging items (process backend).')
  app.run(main)
