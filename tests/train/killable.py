"""`experiments.main`, with a SIGKILL planted at a chosen moment.

  python tests/train/killable.py --kill=POINT:CALL:DELAY -- MAIN_FLAGS...
  python tests/train/killable.py --trace=FILE -- MAIN_FLAGS...

POINT names a function of the run (`POINTS`); at the start of its CALL-th
call (1-based) a timer starts, and DELAY seconds later the process kills
itself with SIGKILL, as the OOM killer or a lost machine would. The call is
held from returning until then, so the kill always lands inside it: early in
a short call, anywhere in a long one. `--kill=time:0:DELAY` kills DELAY
seconds after start, wherever the run is. Without --kill this is
`experiments.main`.

Before dying it prints `KILLED POINT CALL DELAY` to stderr, so a test can
tell what it killed. `--trace=FILE` kills nothing and writes one JSON line
per call of each point (`point`, `call`, `seconds` it took, `start` since
the process began), from which a test picks where to kill.
"""

import functools
import importlib
import json
import os
import signal
import sys
import threading
import time

# name -> (module, attribute path) of the function the kill lands in.
POINTS = {
    'data': ('jaxrlgen.data.builders', 'prepare_and_open'),  # TFDS build.
    'fit': ('jaxrlgen.train.loop', 'fit'),  # Warm start = 1, RL = 2.
    'checkpoint': ('jaxrlgen.train.checkpoint', 'Checkpointer.save'),
    'eval': ('jaxrlgen.recipes.text_rl', 'SampleWriter.write'),
    'plot': ('jaxrlgen.train.plots', 'plot_metrics'),
    'summary': ('jaxrlgen.train.writers', 'write_summary'),
}


def _die(what: str) -> None:
  print(f'KILLED {what}', file=sys.stderr, flush=True)
  os.kill(os.getpid(), signal.SIGKILL)


def _wrap(point: str, make_wrapper) -> None:
  """Replaces POINTS[point] by `make_wrapper(original)`."""
  module_name, path = POINTS[point]
  owner = importlib.import_module(module_name)
  *parents, name = path.split('.')
  for parent in parents:
    owner = getattr(owner, parent)
  original = getattr(owner, name)
  setattr(owner, name, functools.wraps(original)(make_wrapper(original)))


def _plant(point: str, call: int, delay: float) -> None:
  calls = [0]

  def make_wrapper(original):
    def wrapped(*args, **kwargs):
      calls[0] += 1
      if calls[0] != call:
        return original(*args, **kwargs)
      timer = threading.Timer(delay, _die, (f'{point} {call} {delay}',))
      timer.daemon = True
      timer.start()
      result = original(*args, **kwargs)
      timer.join()  # Never returns: the timer kills the process.
      return result
    return wrapped

  _wrap(point, make_wrapper)


def _trace(path: str) -> None:
  began = time.monotonic()
  for point in POINTS:
    calls = [0]

    def make_wrapper(original, point=point, calls=calls):
      def wrapped(*args, **kwargs):
        calls[0] += 1
        call, start = calls[0], time.monotonic()
        try:
          return original(*args, **kwargs)
        finally:
          with open(path, 'a') as f:
            f.write(json.dumps({
                'point': point, 'call': call, 'start': start - began,
                'seconds': time.monotonic() - start}) + '\n')
      return wrapped

    _wrap(point, make_wrapper)


def main() -> None:
  # Run as a script from anywhere: the repository's `experiments` package.
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(
      os.path.abspath(__file__)))))
  argv = sys.argv[1:]
  if argv and argv[0].startswith('--trace='):
    _trace(argv.pop(0).split('=', 1)[1])
  elif argv and argv[0].startswith('--kill='):
    point, call, delay = argv.pop(0).split('=', 1)[1].split(':')
    if point == 'time':
      timer = threading.Timer(float(delay), _die, (f'time 0 {delay}',))
      timer.daemon = True
      timer.start()
    else:
      _plant(point, int(call), float(delay))
  if argv and argv[0] == '--':
    argv.pop(0)
  sys.argv = ['experiments.main', *argv]
  from absl import app  # pylint: disable=g-import-not-at-top
  from experiments import main as main_lib  # pylint: disable=g-import-not-at-top
  app.run(main_lib.main)


if __name__ == '__main__':
  main()
