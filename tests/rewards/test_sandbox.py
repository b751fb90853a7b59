"""The sandbox against programs that try to break out.

Every attack runs once, all of them at the same time (the module fixture),
so the file costs about two seconds: once with the namespaces the OS grants
and once with the limits only. Each test then checks that its attack
was contained, that the result says what happened, and that this process
goes on. Where containment needs something the OS may refuse (a namespace,
another uid), the test reads `Result.isolation` and checks what was granted
instead of pretending.
"""

import ast
import concurrent.futures
import os
import signal
import socket
import time
import uuid

import pytest

from jaxrlgen.rewards import sandbox

SECRET = 'JAXRLGEN_TEST_SECRET'
TIMEOUT_S = 1.0


def _children() -> set[int]:
  out = set()
  for task in os.listdir('/proc/self/task'):
    try:
      with open(f'/proc/self/task/{task}/children') as f:
        out.update(int(p) for p in f.read().split())
    except OSError:
      pass
  return out


def _running_with(marker: str) -> list[int]:
  """Live (not zombie) processes with `marker` in their command line."""
  out = []
  for pid in filter(str.isdigit, os.listdir('/proc')):
    try:
      with open(f'/proc/{pid}/cmdline', 'rb') as f:
        if marker.encode() not in f.read():
          continue
      with open(f'/proc/{pid}/stat') as f:
        if f.read().rpartition(')')[2].split()[0] != 'Z':
          out.append(int(pid))
    except OSError:
      pass
  return out


@pytest.fixture(scope='module', params=[True, False],
                ids=['namespaces', 'limits_only'])
def attacks(request, tmp_path_factory):
  """{name: Result} for every attack, plus what the attacks aimed at; with
  the namespaces the OS grants, then with the limits only (`isolate=False`,
  what a machine that refuses namespaces gets)."""
  os.environ[SECRET] = 'hunter2'
  listener = socket.socket()
  listener.bind(('127.0.0.1', 0))
  listener.listen(1)
  listener.setblocking(False)
  port = listener.getsockname()[1]
  outside = tmp_path_factory.mktemp('outside')
  targets = [str(outside / 'pwned'),
             os.path.join(os.getcwd(), f'pwned-{uuid.uuid4().hex}'),
             f'/tmp/jaxrlgen-escape-{uuid.uuid4().hex}']
  me = os.getpid()
  marker = f'30.{uuid.uuid4().int % 10**9:09d}'  # Seconds, and a name.
  programs = {
      'fork_bomb': 'import os\nwhile True:\n  os.fork()\n',
      'busy_loop': 'while True: pass\n',
      'memory_bomb': ('chunks = []\nwhile True:\n'
                      '  chunks.append(bytearray(1 << 24))\n'),
      'print_1gb': ('import sys\nfor _ in range(1000):\n'
                    "  sys.stdout.write('x' * (1 << 20))\n"),
      'write_outside': (
          'import os\nprint(os.getcwd())\n'
          f'for path in {targets!r}:\n'
          '  try:\n'
          "    open(path, 'w').write('x')\n"
          "    print('wrote', path)\n"
          '  except OSError as e:\n'
          "    print('refused', path, e.errno)\n"
          # A big file in its own directory: RLIMIT_FSIZE (1 MiB here).
          'try:\n'
          "  open('big', 'wb').write(b'x' * (4 << 20))\n"
          "  print('big written')\n"
          'except OSError as e:\n'
          "  print('big refused', e.errno)\n"),
      'read_environment': (
          'import os\nprint(sorted(os.environ))\n'
          f'print({SECRET!r} in os.environ)\n'
          'try:\n'
          f"  print(open('/proc/{me}/environ', 'rb').read()"
          ".decode(errors='replace'))\n"
          'except OSError as e:\n'
          "  print('environ refused', e.errno)\n"),
      'socket': (
          'import socket\ns = socket.socket()\ns.settimeout(0.5)\n'
          f"s.connect(('127.0.0.1', {port}))\nprint('connected')\n"),
      'kill_parent': (
          'import os\ntry:\n  os.kill(os.getppid(), 9)\n'
          'except OSError as e:\n  print("parent out of reach", e.errno)\n'
          # Probe (signal 0) the test process itself by its PID: found and
          # allowed would mean it could be killed.
          'try:\n'
          f'  os.kill({me}, 0)\n'
          "  print('could signal the caller')\n"
          'except OSError as e:\n'
          "  print('caller out of reach', e.errno)\n"),
      # A grandchild in a session of its own, out of the group kill's reach.
      'new_session': (
          'import os\nif os.fork() == 0:\n  os.setsid()\n'
          '  if os.fork() == 0:\n    os.close(1)\n    os.close(2)\n'
          f"    os.execv('/bin/sleep', ['sleep', '{marker}'])\n"
          '  os._exit(0)\n'),
      'exit_3': 'import os\nprint("bye", flush=True)\nos._exit(3)\n',
      'segfault': 'import ctypes\nctypes.string_at(0)\n',
      'stdin_echo': 'import sys\nprint(sys.stdin.read().upper())\n',
  }
  before = _children()
  limits = dict(memory_mb=128, max_processes=8,
                max_file_mb=1, max_output_bytes=1 << 16,
                isolate=request.param)
  try:
    with concurrent.futures.ThreadPoolExecutor(len(programs)) as pool:
      # Only the attacks that must time out get the short limit: the others
      # should end by themselves, however loaded the machine.
      futures = {name: pool.submit(
          sandbox.run_python, code,
          stdin='shout' if name == 'stdin_echo' else '',
          timeout_s=TIMEOUT_S if name in ('busy_loop', 'fork_bomb') else 20,
          **limits) for name, code in programs.items()}
      results = {name: f.result(timeout=30) for name, f in futures.items()}
    try:
      accepted = listener.accept()[0]
      accepted.close()
      reached = True
    except BlockingIOError:
      reached = False
  finally:
    listener.close()
    del os.environ[SECRET]
  time.sleep(0.2)  # Killed processes may take a moment to go.
  escaped = _running_with(marker)
  for pid in escaped:  # Ours to clean up, whatever the test says.
    os.kill(pid, signal.SIGKILL)
  written = [t for t in targets if os.path.exists(t)]
  for t in written:
    os.remove(t)
  return dict(results=results, reached=reached, written=written,
              escaped=escaped,
              targets=targets, leftover=_children() - before)


def test_fork_bomb_is_contained(attacks):
  r = attacks['results']['fork_bomb']
  assert not r.ok
  assert r.exit_code != 0
  assert 'BlockingIOError' in r.stderr or r.timed_out
  assert r.isolation.get('nproc_limit'), r.isolation


def test_busy_loop_times_out(attacks):
  r = attacks['results']['busy_loop']
  assert r.timed_out and r.exit_code is None and not r.ok
  assert TIMEOUT_S <= r.duration_s < TIMEOUT_S + 5


def test_memory_bomb_gets_memory_error(attacks):
  r = attacks['results']['memory_bomb']
  assert r.exit_code == 1 and 'MemoryError' in r.stderr, r


def test_1gb_print_is_truncated_and_killed(attacks):
  r = attacks['results']['print_1gb']
  assert r.truncated and r.exit_code is None and not r.ok
  assert len(r.stdout) <= 1 << 16
  assert set(r.stdout) == {'x'}


def test_writes_outside_its_directory(attacks):
  r = attacks['results']['write_outside']
  assert r.exit_code == 0, r
  # Its own directory was fresh and is gone.
  cwd = r.stdout.splitlines()[0]
  assert os.path.basename(cwd) == 'work' and not os.path.exists(cwd)
  assert 'big refused 27' in r.stdout  # EFBIG: RLIMIT_FSIZE.
  if r.isolation.get('readonly_fs'):
    assert attacks['written'] == [], r.stdout
    assert r.stdout.count('refused') == len(attacks['targets']) + 1
  elif r.isolation.get('uid') != os.getuid():
    # No mount namespace, but a fresh uid: the caller's directories are
    # closed to it; /tmp is open to every user.
    assert all(t.startswith('/tmp/jaxrlgen-escape-')
               for t in attacks['written']), attacks['written']
  # Else (the caller's own uid, no mount namespace) nothing stops a write
  # its user may make: only the fresh directory and the file-size limit
  # above are enforced.


def test_parent_environment_is_not_visible(attacks):
  r = attacks['results']['read_environment']
  assert r.exit_code == 0, r
  lines = r.stdout.splitlines()
  # Python itself may set LC_CTYPE (locale coercion); nothing else.
  assert set(ast.literal_eval(lines[0])) <= {'PATH', 'LC_CTYPE'}
  assert lines[1] == 'False'
  if r.isolation.get('pid_ns') or r.isolation.get('uid') != os.getuid():
    assert 'hunter2' not in r.stdout
    assert 'environ refused' in r.stdout


def test_socket_reaches_nothing(attacks):
  r = attacks['results']['socket']
  if not r.isolation.get('net_ns'):
    pytest.skip(f'no network namespace here: {r.isolation.get("error")}')
  assert r.exit_code == 1 and 'connected' not in r.stdout
  assert 'Network is unreachable' in r.stderr, r.stderr
  assert not attacks['reached']


def test_killing_its_parent_spares_the_caller(attacks):
  r = attacks['results']['kill_parent']
  # This process is alive (the test runs), and the run was reported.
  assert not r.timed_out
  if r.isolation.get('pid_ns') or r.isolation.get('uid') != os.getuid():
    assert r.exit_code == 0, r
    assert 'caller out of reach' in r.stdout
  else:
    # Same uid, no PID namespace: its parent is the launcher, which it
    # killed; the caller reports that and goes on.
    assert r.exit_code is None and 'launcher ended' in r.stderr


def test_a_new_session_does_not_outlive_the_run(attacks):
  r = attacks['results']['new_session']
  assert r.exit_code == 0, r
  if r.isolation.get('pid_ns') or r.isolation.get('uid') != os.getuid():
    assert attacks['escaped'] == []
  # Else (the caller's own uid, no PID namespace) the sandbox cannot tell
  # the escaped process from the caller's others; the fixture killed it.


def test_exit_code_and_segfault(attacks):
  r = attacks['results']['exit_3']
  assert r.exit_code == 3 and r.stdout == 'bye\n' and r.signal is None
  r = attacks['results']['segfault']
  assert r.exit_code == -signal.SIGSEGV and r.signal == signal.SIGSEGV
  assert not r.timed_out


def test_stdin_and_no_leftover_processes(attacks):
  assert attacks['results']['stdin_echo'].stdout == 'SHOUT\n'
  assert attacks['results']['stdin_echo'].ok
  assert attacks['leftover'] == set()


def test_bad_limits_are_refused():
  with pytest.raises(ValueError, match='timeout_s'):
    sandbox.run_python('pass', timeout_s=0)
