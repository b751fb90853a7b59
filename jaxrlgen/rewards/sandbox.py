"""Runs untrusted Python (a model's program) in a separate, limited process.

`run_python(code, stdin=, timeout_s=, memory_mb=)` writes `code` to a file in
a fresh temporary directory and runs it with a Python interpreter in
isolated mode (`-I -S -B`: no site-packages, no PYTHON* variables, no
bytecode files) under these limits, then removes the directory:

- wall time `timeout_s`, counted by the caller: past it the whole process
  group is killed (`SIGKILL`); CPU time (`RLIMIT_CPU`) ends a busy loop even
  if the caller were slow to notice;
- address space `memory_mb` (`RLIMIT_AS`): a memory bomb gets `MemoryError`;
- processes (`RLIMIT_NPROC`, see below), file size (`RLIMIT_FSIZE`), open
  files (`RLIMIT_NOFILE`), no core dumps (`RLIMIT_CORE` 0);
- output: stdout and stderr are read up to `max_output_bytes` together; the
  group is killed when a program writes more (`truncated=True`);
- environment: `PATH` only, nothing inherited (no secrets);
- working directory: the fresh directory; the program file and its stdin
  live beside it, not in it.

Every wait has a deadline, so a run returns within about `timeout_s` plus a
second whatever the program does.

Isolation beyond limits, taken where the OS allows it. A small launcher (a
second, trusted Python process) starts first in its own session; it tries to
create new namespaces and then forks the program, so the program's parent is
the launcher, never the caller:

- a network namespace: the program has only its own loopback, which is down;
  a socket can be made but reaches nothing (`ENETUNREACH`);
- a PID namespace: the program is PID 1 of its own namespace and sees no
  process outside it, so it cannot signal the caller (`getppid()` is 0); when
  it exits, every process it started dies with it;
- a mount namespace in which every mount is remounted read-only except the
  working directory (bind-mounted on itself), and a fresh /proc: the program
  can write nowhere else, /tmp included;
- a user to run as: the caller's user when it is not root (through a user
  namespace that maps that user to itself, so no capability survives the
  exec); when the caller is root, a fresh unprivileged uid/gid
  (`100000 + random`) with no capabilities, so the program cannot signal or
  write as root, and its process count starts from zero.

`Result.isolation` says what each run got. On the machine this was built on
(Linux 6.18 in a VM) every one of them is taken, both as root (network, PID
and mount namespaces, read-only mounts, a fresh /proc, a fresh uid) and as
an unprivileged user (the same through a user namespace, as that user).
Where a user namespace is refused (e.g. Ubuntu 24.04's AppArmor default for
unprivileged users, or a container without `CAP_SYS_ADMIN`) the program runs
with the limits only: it can then open network connections, write wherever
its user may (the limits still bound file size) and signal the user's other
processes by PID; the launcher in between only stops the naive
`os.kill(os.getppid(), 9)` from reaching the caller. A descendant that
starts its own session (`os.setsid()`) then escapes the group kill: under
a fresh uid (the caller is root) the sandbox kills every process of that
uid after the run; under the caller's own uid it cannot tell them apart,
and such a process lives on (a busy one until its CPU limit).

Process count. Linux counts `RLIMIT_NPROC` over all processes (threads) of
the real user, not per process tree, and ignores it for root. Under a fresh
uid the limit is `max_processes`. Under the caller's own uid it is the
number of tasks the user has when the run starts plus `max_processes`
(counted from /proc), so a fork bomb may start `max_processes` processes
and no more, minus whatever the user starts meanwhile. When the caller is
root and no interpreter is readable by an unprivileged user (the default
interpreter sits under a 0700 home directory), the program runs as root in
its namespaces and the process limit is not enforced (`isolation['uid']` is
0); `python=` or a system `/usr/bin/python3` avoids that.
"""

import dataclasses
import json
import os
import random
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time

PATH = '/usr/local/bin:/usr/bin:/bin'
# Where to look for an interpreter an unprivileged uid can run when the
# caller's own is out of its reach.
_SYSTEM_PYTHONS = ('/usr/bin/python3', '/usr/local/bin/python3')
_FRESH_UID_BASE = 100_000
_GRACE_S = 1.0  # Drain and reap after the program ends or is killed.


@dataclasses.dataclass(frozen=True)
class Result:
  """What a sandboxed run did.

  Attributes:
    stdout: its standard output, decoded as UTF-8 (errors replaced).
    stderr: its standard error, likewise.
    exit_code: the program's exit status, minus the signal number when a
      signal ended it (as `subprocess` reports it); None when it did not end
      by itself (timed out or truncated: the sandbox killed it) or the
      launcher could not report it.
    timed_out: it ran past `timeout_s` and was killed.
    truncated: it wrote more than `max_output_bytes` and was killed.
    signal: the signal that ended the program, if one did (11 for a
      segfault, 9 for a CPU-time kill), else None.
    duration_s: wall time of the whole run, launcher included.
    isolation: what the OS granted this run: `net_ns`, `pid_ns`, `mount_ns`,
      `readonly_fs`, `fresh_proc`, `user_ns`, `uid`, `nproc_limit`,
      `python`, and `error` where a step failed.
  """
  stdout: str
  stderr: str
  exit_code: int | None
  timed_out: bool
  truncated: bool = False
  signal: int | None = None
  duration_s: float = 0.0
  isolation: dict = dataclasses.field(default_factory=dict, compare=False)

  @property
  def ok(self) -> bool:
    """It ended by itself with status 0 within its limits."""
    return self.exit_code == 0 and not self.timed_out and not self.truncated


# The launcher runs as `python -I -S -c _LAUNCHER ARGS_JSON` in the run's
# session. It is trusted code; the program it forks is not. It reports on
# a status pipe: one JSON line from the child just before exec (what
# isolation it got; the pipe is close-on-exec, so the program cannot write
# to it), and one from the launcher with the program's wait status.
_LAUNCHER = r'''
import ctypes, json, os, random, resource, signal, sys
a = json.loads(sys.argv[1])
report = a['status_fd']
os.set_inheritable(report, False)
libc = ctypes.CDLL(None, use_errno=True)
libc.mount.argtypes = [ctypes.c_char_p] * 3 + [ctypes.c_ulong, ctypes.c_void_p]
# Dies with the thread that started it (a reward worker killed for hanging,
# say), and with it the program (below).
libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
if os.getppid() != a['parent']:
  os._exit(1)
iso = {}
errors = []

def say(obj):
  os.write(report, (json.dumps(obj) + '\n').encode())

def call(name, *args):
  if getattr(libc, name)(*args) != 0:
    e = ctypes.get_errno()
    raise OSError(e, name + ': ' + os.strerror(e))

def tasks_of(uid):
  n = 0
  for p in os.listdir('/proc'):
    if not p.isdigit():
      continue
    try:
      with open('/proc/%s/status' % p) as f:
        lines = dict(l.split(':', 1) for l in f if ':' in l)
      if int(lines['Uid'].split()[0]) == uid:
        n += int(lines['Threads'])
    except (OSError, KeyError, ValueError):
      pass
  return n

NEWNS, NEWUTS, NEWIPC = 0x20000, 0x4000000, 0x8000000
NEWUSER, NEWPID, NEWNET = 0x10000000, 0x20000000, 0x40000000
uid, gid = os.getuid(), os.getgid()
root = uid == 0
fresh = a['fresh_uid'] if root else None
choices = [NEWNET | NEWPID | NEWNS | NEWIPC | NEWUTS, NEWNET]
if not root:
  choices = [NEWUSER | c for c in choices]
flags = 0
if a['isolate']:
  for c in choices:
    try:
      call('unshare', c)
      flags = c
      break
    except OSError as e:
      errors.append(str(e))
  if flags & NEWUSER:
    try:
      for name, text in (('setgroups', 'deny'),
                         ('uid_map', '%d %d 1' % (uid, uid)),
                         ('gid_map', '%d %d 1' % (gid, gid))):
        with open('/proc/self/' + name, 'w') as f:
          f.write(text)
    except OSError as e:
      errors.append('id map: %s' % e)
iso.update(user_ns=bool(flags & NEWUSER), net_ns=bool(flags & NEWNET),
           pid_ns=bool(flags & NEWPID), mount_ns=bool(flags & NEWNS))
nproc = a['max_processes'] + (0 if fresh is not None else tasks_of(uid))
os.closerange(3, report)
os.closerange(report + 1, 1 << 16)
pid = os.fork()
if pid == 0:
  try:
    work = a['workdir']
    if flags & NEWPID:
      # Its own session: kill(0, ...) or kill(-pgid) from the program then
      # reaches only its namespace, not the launcher; the launcher's death
      # still takes it (PDEATHSIG), and with it, as PID 1, the namespace.
      os.setsid()
    if flags & NEWNS:
      MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REMOUNT = 1, 2, 4, 8, 32
      MS_BIND, MS_REC, MS_PRIVATE = 4096, 16384, 1 << 18
      kept = {'nosuid': MS_NOSUID, 'nodev': MS_NODEV, 'noexec': MS_NOEXEC,
              'noatime': 1024, 'nodiratime': 2048, 'relatime': 1 << 21,
              'strictatime': 1 << 24}
      call('mount', None, b'/', None, MS_REC | MS_PRIVATE, None)
      call('mount', work.encode(), work.encode(), None, MS_BIND, None)
      failed = []
      with open('/proc/self/mountinfo') as f:
        mounts = [l.split() for l in f]
      for m in mounts:
        point = m[4].encode().decode('unicode_escape')  # \040 is a space.
        if point == work:
          continue
        # Flags locked by a user namespace must be kept to remount.
        extra = sum(kept.get(o, 0) for o in m[5].split(','))
        try:
          call('mount', None, point.encode(), None,
               MS_REMOUNT | MS_BIND | MS_RDONLY | extra, None)
        except OSError as e:
          failed.append('%s (%s)' % (point, os.strerror(e.errno)))
      iso['readonly_fs'] = not failed
      os.chdir(work)  # Onto the writable bind mount, not what lies under it.
      if failed:
        errors.append('not read-only: ' + ', '.join(failed[:5]))
      if flags & NEWPID:
        try:
          call('mount', b'proc', b'/proc', b'proc',
               MS_NOSUID | MS_NODEV | MS_NOEXEC, None)
          iso['fresh_proc'] = True
        except OSError as e:
          iso['fresh_proc'] = False
          errors.append(str(e))
    else:
      iso['readonly_fs'] = False
    for res, value in ((resource.RLIMIT_CPU, (a['cpu_s'], a['cpu_s'] + 1)),
                       (resource.RLIMIT_AS, (a['memory'], a['memory'])),
                       (resource.RLIMIT_FSIZE, (a['fsize'], a['fsize'])),
                       (resource.RLIMIT_NOFILE, (a['nofile'], a['nofile'])),
                       (resource.RLIMIT_CORE, (0, 0)),
                       (resource.RLIMIT_NPROC, (nproc, nproc))):
      resource.setrlimit(res, value)
    python = a['python']
    if fresh is not None and a['fresh_python']:
      python = a['fresh_python']
      os.chown(work, fresh, fresh)
      os.setgroups([])
      os.setresgid(fresh, fresh, fresh)
      os.setresuid(fresh, fresh, fresh)
    # After the uid change, which clears it: the launcher's death kills the
    # program (and, as PID 1, its namespace).
    PR_SET_PDEATHSIG = 1
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    iso.update(uid=os.getuid(), nproc_limit=None if os.getuid() == 0 else nproc,
               python=python)
    if errors:
      iso['error'] = '; '.join(errors)
    say({'isolation': iso})
    os.execve(python, [python, '-I', '-S', '-B', a['program']],
              {'PATH': a['path']})
  except BaseException as e:
    say({'launch_error': '%s: %s' % (type(e).__name__, e)})
  finally:
    os._exit(127)
say({'pid': pid})  # The caller kills it too: it may have its own session.
null = os.open(os.devnull, os.O_RDWR)
for fd in (0, 1, 2):
  os.dup2(null, fd)  # EOF on the caller's pipes then means the program ended.
while True:
  try:
    _, status = os.waitpid(pid, 0)
    break
  except InterruptedError:
    pass
say({'status': status})
'''


def _reachable_by_others(path: str) -> bool:
  """Whether a user with no special rights can execute `path` and read its
  installation (every directory above it searchable, the file executable)."""
  path = os.path.realpath(path)
  try:
    if not os.stat(path).st_mode & stat.S_IXOTH:
      return False
    prefix = os.path.dirname(os.path.dirname(path))  # .../bin/python -> ...
    parts = prefix.split(os.sep)
    for i in range(1, len(parts) + 1):
      d = os.sep.join(parts[:i]) or os.sep
      if not os.stat(d).st_mode & stat.S_IXOTH:
        return False
  except OSError:
    return False
  return True


def _interpreters(python: str | None) -> tuple[str, str | None]:
  """(the interpreter for the caller's uid, the one for a fresh uid or None)."""
  own = os.path.realpath(python or sys.executable)
  if _reachable_by_others(own):
    return own, own
  if python is None:
    for candidate in _SYSTEM_PYTHONS:
      if os.path.exists(candidate) and _reachable_by_others(candidate):
        return own, os.path.realpath(candidate)
  return own, None


def _signal(kill, target: int):
  try:
    kill(target, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _kill_uid(uid: int):
  """SIGKILL to every process whose real uid is `uid`."""
  for pid in os.listdir('/proc'):
    if not pid.isdigit():
      continue
    try:
      with open(f'/proc/{pid}/status') as f:
        for line in f:
          if line.startswith('Uid:'):
            if int(line.split()[1]) == uid:
              os.kill(int(pid), signal.SIGKILL)
            break
    except (OSError, ValueError):
      pass


def _remove(path: str):
  def retry(func, p, unused_exc):
    # A program may leave a directory without write or search permission.
    try:
      os.chmod(os.path.dirname(p), 0o700)
      os.chmod(p, 0o700)
      func(p)
    except OSError:
      pass
  shutil.rmtree(path, onerror=retry)


def run_python(code: str, *, stdin: str = '', timeout_s: float = 10.0,
               memory_mb: int = 512, max_processes: int = 16,
               max_file_mb: float = 16.0, max_output_bytes: int = 1 << 20,
               max_open_files: int = 64, isolate: bool = True,
               python: str | None = None) -> Result:
  """Runs the Python program `code` in a sandbox (see the module docstring).

  Args:
    code: the program's source.
    stdin: its standard input.
    timeout_s: wall-clock limit in seconds; the CPU-time limit is this
      rounded up, plus one.
    memory_mb: address-space limit in MiB (Python itself needs about 30).
    max_processes: processes (threads included) it may start.
    max_file_mb: largest file it may write, in MiB.
    max_output_bytes: stdout plus stderr kept; more kills it.
    max_open_files: file descriptors it may hold.
    isolate: try the namespaces (False: the limits only, and the fresh uid
      when the caller is root).
    python: the interpreter (default: this one; under a fresh uid, a system
      python3 if this one is out of its reach).
  Returns:
    The `Result`.
  Raises:
    ValueError: a limit is not positive.
  """
  for name, value in (('timeout_s', timeout_s), ('memory_mb', memory_mb),
                      ('max_processes', max_processes),
                      ('max_file_mb', max_file_mb),
                      ('max_output_bytes', max_output_bytes),
                      ('max_open_files', max_open_files)):
    if not value > 0:
      raise ValueError(f'run_python {name}={value} must be > 0.')
  start = time.monotonic()
  own_python, fresh_python = _interpreters(python)
  base = tempfile.mkdtemp(prefix='jaxrlgen-sandbox-')
  status_r = status_w = stdin_file = proc = None
  try:
    os.chmod(base, 0o711)  # A fresh uid may pass through, not list.
    workdir = os.path.join(base, 'work')
    os.mkdir(workdir, 0o700)
    program = os.path.join(base, 'main.py')
    with open(program, 'w', encoding='utf-8') as f:
      f.write(code)
    os.chmod(program, 0o644)
    stdin_file = tempfile.TemporaryFile(dir=base)
    stdin_file.write(stdin.encode('utf-8'))
    stdin_file.seek(0)
    status_r, status_w = os.pipe()
    args = dict(
        parent=os.getpid(), status_fd=status_w, workdir=workdir,
        program=program, path=PATH,
        python=own_python, fresh_python=fresh_python,
        fresh_uid=_FRESH_UID_BASE + random.SystemRandom().randrange(1 << 24),
        isolate=bool(isolate), max_processes=int(max_processes),
        cpu_s=int(-(-timeout_s // 1)) + 1, memory=int(memory_mb) << 20,
        fsize=int(max_file_mb * (1 << 20)), nofile=int(max_open_files))
    proc = subprocess.Popen(
        [sys.executable, '-I', '-S', '-c', _LAUNCHER, json.dumps(args)],
        stdin=stdin_file, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        cwd=workdir, env={'PATH': PATH}, start_new_session=True,
        pass_fds=(status_w,))
    os.close(status_w)
    status_w = None
    result = _collect(proc, status_r, start, timeout_s, max_output_bytes)
    if (os.getuid() == 0 and fresh_python
        and not result.isolation.get('pid_ns')):
      # Without a PID namespace a descendant that started its own session
      # escaped the group kill; its uid is this run's alone.
      _kill_uid(args['fresh_uid'])
    return result
  finally:
    if proc is not None and proc.poll() is None:  # Only on an exception.
      _signal(os.killpg, proc.pid)
      try:
        proc.wait(timeout=_GRACE_S)
      except subprocess.TimeoutExpired:
        pass
    for fd in (status_r, status_w):
      if fd is not None:
        os.close(fd)
    if stdin_file is not None:
      stdin_file.close()
    _remove(base)


def _collect(proc: subprocess.Popen, status_fd: int, start: float,
             timeout_s: float, max_output_bytes: int) -> Result:
  """Reads the run's pipes until it ends, is killed, or the deadline."""
  out = {proc.stdout.fileno(): bytearray(), proc.stderr.fileno(): bytearray()}
  status_buf = bytearray()
  report = {}  # From the status pipe: pid, isolation, status, launch_error.
  sel = selectors.DefaultSelector()
  for fd in (*out, status_fd):
    os.set_blocking(fd, False)
    sel.register(fd, selectors.EVENT_READ)
  deadline = start + timeout_s
  timed_out = truncated = killed = False

  def kill():
    # The launcher's group, and the program, which may have its own session
    # (PID 1 of its namespace: its death ends every process in it). Its pid
    # is not reused before the launcher reaps it and reports its status.
    _signal(os.killpg, proc.pid)
    if 'pid' in report and 'status' not in report:
      _signal(os.kill, report['pid'])
    return True, time.monotonic() + _GRACE_S

  try:
    while sel.get_map():
      now = time.monotonic()
      if now >= deadline:
        if killed:
          break  # Past the grace period: give up on what is left.
        timed_out = True
        killed, deadline = kill()
        continue
      for key, _ in sel.select(max(deadline - now, 0.0)):
        try:
          data = os.read(key.fd, 1 << 16)
        except BlockingIOError:
          continue
        if key.fd == status_fd:
          status_buf += data
          *lines, rest = bytes(status_buf).split(b'\n')
          status_buf[:] = rest
          for line in lines:
            try:
              report.update(json.loads(line))
            except ValueError:
              pass
        elif data:
          out[key.fd] += data
          if sum(map(len, out.values())) > max_output_bytes and not killed:
            truncated = True
            killed, deadline = kill()
        if not data:
          sel.unregister(key.fd)
          if key.fd == status_fd and not killed:
            # The launcher ended: kill what the program left behind, then
            # drain what it wrote.
            killed, deadline = kill()
  finally:
    sel.close()
  try:
    proc.wait(timeout=_GRACE_S)
  except subprocess.TimeoutExpired:
    pass
  isolation = report.get('isolation', {})
  status = report.get('status')
  launch_error = report.get('launch_error')
  stdout, stderr = (bytes(out[proc.stdout.fileno()]),
                    bytes(out[proc.stderr.fileno()]))
  if truncated:
    keep = max_output_bytes
    stdout = stdout[:keep]
    stderr = stderr[:max(keep - len(stdout), 0)]
  stderr = stderr.decode('utf-8', 'replace')
  if launch_error:
    stderr += f'\n[sandbox] the program could not start: {launch_error}'
  exit_code = sig = None
  if status is not None and not truncated:
    timed_out = False  # It ended just as the deadline passed.
    if os.WIFSIGNALED(status):
      sig = os.WTERMSIG(status)
      exit_code = -sig
    else:
      exit_code = os.waitstatus_to_exitcode(status)
  elif not (timed_out or truncated):
    stderr += ('\n[sandbox] the launcher ended without reporting the '
               f'program\'s status (launcher exit {proc.returncode}).')
  return Result(stdout=stdout.decode('utf-8', 'replace'), stderr=stderr,
                exit_code=exit_code, timed_out=timed_out, truncated=truncated,
                signal=sig, duration_s=time.monotonic() - start,
                isolation=isolation)
