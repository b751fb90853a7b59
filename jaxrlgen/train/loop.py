"""The training loop, shared by SFT and every RL algorithm.

The loop owns nothing about the algorithm: it calls a jitted
`step_fn(state, batch, key) -> (state, metrics)` with the batch and key of
each step (both pure functions of the step number, so a resumed run repeats
an uninterrupted one), and around it logs, evaluates, checkpoints and shows
progress. Metrics are fetched from the device only on logging steps. On any
error the metrics are flushed and, in a one-process run, the last completed
state is checkpointed before the error propagates (a multi-process save
needs every process, and the others are mid-step or dead).

Non-finite numbers: the steps skip an update whose rewards, loss or gradient
are not finite (`algos.base.minibatch_update`) and flag it in
`nonfinite/skipped`. The loop reads that flag of each step while the next
one runs (one scalar, one step behind, so the device never waits for the
host) and raises `NonFiniteError` after `max_nonfinite_steps` flagged steps
in a row (after the first with `nonfinite='stop'`), naming the first of them
and its first non-finite metric. A checkpoint is never written of
parameters that are not finite.

Preemption: under `preemption.listen()` (as `experiments.main` runs), a
SIGTERM or SIGUSR1 makes the loop finish the current step (and its
evaluation, if one is due, so that the resumed run's metrics are the
uninterrupted run's), save its checkpoint and raise `preemption.Preempted`.

Killed at any moment (SIGKILL, power loss), a run loses only the steps after
its last checkpoint: metrics lines are flushed as they are written, a
checkpoint appears on disk only when complete (orbax renames a finished
temporary directory), and a resumed run drops the metrics lines after the
checkpoint it restores and redoes those steps with the same batches and keys.
"""

import dataclasses
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen import parallel
from jaxrlgen import schema
from jaxrlgen.algos import base as algo_base
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import plots
from jaxrlgen.train import preemption
from jaxrlgen.train import progress as progress_lib
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]
EvalFn = Callable[[Any], Mapping[str, float]]
NONFINITE_POLICIES = ('skip', 'stop')


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  total_steps: int
  log_every: int = 1
  eval_every: int = 0  # 0: evaluate only at the start and the end.
  checkpoint_every: int = 0  # 0: only at the end (and on errors).
  progress_desc: str = 'train'
  progress_show: tuple[str, ...] = ('reward/mean',)
  # A step with non-finite numbers skips its update; 'stop' also ends the
  # run there, 'skip' only after `max_nonfinite_steps` such steps in a row.
  nonfinite: str = 'skip'
  max_nonfinite_steps: int = 10

  def __post_init__(self):
    schema.one_of(self, 'nonfinite', NONFINITE_POLICIES)
    schema.positive(self, 'max_nonfinite_steps')

  @property
  def nonfinite_limit(self) -> int:
    """Skipped steps in a row that stop the run."""
    return 1 if self.nonfinite == 'stop' else self.max_nonfinite_steps


class NonFiniteError(FloatingPointError):
  """Training met non-finite numbers more often in a row than allowed, or a
  checkpoint would have held non-finite parameters."""


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


# Where non-finite numbers come from, in the order they flow through a step
# (a NaN reward makes the loss and the gradient NaN too); other metrics follow
# in name order (a jitted step's metrics come back sorted by name).
CAUSES = ('reward/mean', 'loss', 'grad_norm')


def first_nonfinite(metrics: Mapping[str, Any]) -> tuple[str, float] | None:
  """The first metric that is NaN or infinite, `CAUSES` first, and its
  value; None if all are finite."""
  values = to_python(metrics)
  for name in (*[c for c in CAUSES if c in values], *sorted(values)):
    if not np.isfinite(values[name]):
      return name, values[name]
  return None


_params_finite = jax.jit(algo_base.all_finite)


def params_finite(state) -> bool:
  """Whether every floating-point parameter of `state` (a TrainState, or any
  pytree) is finite; one compiled reduction, replicated."""
  return bool(_params_finite(getattr(state, 'params', state)))


class _NonfiniteWatch:
  """Counts the steps in a row that skipped an update, from each step's
  `nonfinite/skipped` flag (steps without the flag are not watched).

  `push` hands it a step's metrics as the step is dispatched and reads the
  previous step's flag, which has finished or is about to: the device keeps
  the new step while the host waits. `flush` reads the last one. A resumed
  run counts its streak anew.
  """

  def __init__(self, config: LoopConfig):
    self.config = config
    self.pending = None  # (step, metrics) not read yet.
    self.streak = 0
    self.first = None  # (step, metrics) of the streak's first step.

  def push(self, step: int, metrics: Mapping[str, jax.Array]) -> None:
    self.flush()
    if algo_base.SKIPPED in metrics:
      self.pending = (step, metrics)

  def flush(self) -> None:
    if self.pending is None:
      return
    step, metrics = self.pending
    self.pending = None
    if not float(np.asarray(metrics[algo_base.SKIPPED])) > 0:
      self.streak, self.first = 0, None
      return
    if not self.streak:
      self.first = (step, metrics)
    self.streak += 1
    logging.warning('Step %d skipped its update: %s.', step,
                    self._culprit(metrics))
    if self.streak >= self.config.nonfinite_limit:
      raise NonFiniteError(self._message(step))

  @staticmethod
  def _culprit(metrics) -> str:
    found = first_nonfinite(metrics)
    if found is None:
      return ('no metric is non-finite, so the loss or gradient of one of '
              'its optimizer updates was')
    return f'{found[0]} = {found[1]}'

  def _message(self, step: int) -> str:
    first_step, first_metrics = self.first
    config = self.config
    steps = (f'step {step} skipped its update' if self.streak == 1 else
             f'{self.streak} steps in a row ({first_step} to {step}) '
             'skipped their updates')
    return (
        f'Non-finite numbers: {steps} '
        f'(nonfinite={config.nonfinite!r}, max_nonfinite_steps='
        f'{config.max_nonfinite_steps}); the first, step {first_step}, has '
        f'{self._culprit(first_metrics)}. The run stops; its parameters are '
        'the last finite ones (skipped steps change only the step counter). '
        'Look at the reward and the learning rate, or allow more skips.')


def fit(state, *, step_fn: StepFn, batch_fn: Callable[[int], Any],
        key: jax.Array, config: LoopConfig,
        checkpointer: checkpoint_lib.Checkpointer,
        writer: writers.MetricWriter,
        eval_fn: EvalFn | None = None):
  """Runs steps `state.step` .. `config.total_steps - 1`.

  Args:
    state: a TrainState, freshly built or restored (its `step` says where to
      start).
    step_fn: the jitted step; it may donate `state`.
    batch_fn: step -> batch (host data, a pure function of the step).
    key: the run's PRNG key; step s uses `fold_in(key, s)`.
    config: when to log, evaluate and checkpoint.
    checkpointer: where checkpoints go.
    writer: where metrics go.
    eval_fn: state -> metrics, written under their own names; called before
      the first step of a fresh run, every `eval_every` steps and at the end.
  Returns:
    The final state.
  Raises:
    NonFiniteError: `config.nonfinite_limit` steps in a row skipped their
      updates for non-finite numbers (the state is checkpointed as on any
      error: its parameters are the last finite ones); or the parameters to
      checkpoint are not finite (nothing is written).
    preemption.Preempted: a preemption notice came (see `preemption`); the
      state of the step it names is checkpointed.
  """
  start = int(state.step)
  total = config.total_steps
  if (start < total and preemption.requested()
      and not jax.distributed.is_initialized()):
    # The notice came before this stage (while data was built, or in an
    # earlier stage): nothing new to save.
    raise preemption.Preempted(start, str(checkpointer.directory),
                               saved=False)
  if eval_fn is not None and start == 0:
    writer.write(0, eval_fn(state))
  progress = progress_lib.Progress(total, start, desc=config.progress_desc,
                                   show=config.progress_show)
  last_saved = start
  watch = _NonfiniteWatch(config)
  interval_start, interval_steps = time.perf_counter(), 0
  try:
    for step in range(start, total):
      batch = batch_fn(step)
      state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
      interval_steps += 1
      done = step + 1
      watch.push(done, metrics)
      if done % config.log_every == 0 or done == total:
        metrics = to_python(metrics)  # Blocks until the step has finished.
        now = time.perf_counter()
        metrics['step_time'] = (now - interval_start) / interval_steps
        metrics['steps_per_second'] = 1.0 / metrics['step_time']
        interval_start, interval_steps = now, 0
        writer.write(done, metrics)
        progress.update(done, metrics)
        watch.flush()  # Its flag, now that the step is done anyway.
      if eval_fn is not None and (
          done == total or (config.eval_every and done % config.eval_every == 0)):
        writer.write(done, eval_fn(state))
        interval_start = time.perf_counter()
      preempted = done < total and preemption.reached(done)
      if preempted or done == total or (
          config.checkpoint_every and done % config.checkpoint_every == 0):
        watch.flush()
        if not params_finite(state):
          raise NonFiniteError(
              f'Step {done}: the parameters hold NaN or infinite numbers; '
              'they are not checkpointed (they were not finite when '
              'training started, or the step has no non-finite guard).')
        checkpointer.save(done, state, force=preempted)
        last_saved = done
      if preempted:
        raise preemption.Preempted(done, str(checkpointer.directory))
    watch.flush()
  except preemption.Preempted:
    raise
  except BaseException:
    # Keep everything up to the last completed step, unless not finite.
    try:
      completed = int(state.step)
      if completed > last_saved and jax.process_count() > 1:
        # A save is collective, and the other processes are not here (they
        # are mid-step, or dead): a lone save would fail or wait forever.
        logging.error('Interrupted after step %d in process %d of %d: not '
                      'checkpointed (a save needs every process).',
                      completed, jax.process_index(), jax.process_count())
      elif completed > last_saved:
        if params_finite(state):
          logging.warning('Interrupted after step %d: saving its checkpoint.',
                          completed)
          checkpointer.save(completed, state, force=True)
        else:
          logging.error('Interrupted after step %d, whose parameters are not '
                        'finite: not checkpointed.', completed)
    except RuntimeError as e:  # The state's buffers were donated to the step.
      logging.error('Could not checkpoint the interrupted run: %s', e)
    raise
  finally:
    checkpointer.wait_until_finished()
    writer.flush()
    progress.close()
  return state


def run_stage(run_dir, state, *, step_fn: StepFn, batch_fn, key: jax.Array,
              config: LoopConfig, eval_fn: EvalFn | None = None,
              max_checkpoints: int | None = 3,
              plot: tuple[tuple[str, ...], str, str] | None = None):
  """One resumable sub-run of an experiment under `run_dir` (a warm start,
  a pretraining phase, one branch of a study) with `fit`.

  Restores the run's newest checkpoint; a run whose `config.total_steps` are
  done is returned as it is. Otherwise it trains, writing checkpoints,
  metrics.jsonl and TensorBoard events under `run_dir`, and, given
  `plot=(metric keys, file name, title)`, a PNG of the metrics (on the
  primary process).

  Returns:
    (final state, whether any step ran now).
  """
  run_dir = workdir_lib.prepare_workdir(str(run_dir))
  checkpointer = checkpoint_lib.Checkpointer(
      str(run_dir / checkpoint_lib.CHECKPOINT_DIR),
      max_to_keep=max_checkpoints)
  try:
    state, resume_step = checkpointer.restore_or(state)
    ran = int(state.step) < config.total_steps
    if ran:
      with writers.MetricWriter(str(run_dir),
                                resume_step=resume_step) as writer:
        state = fit(state, step_fn=step_fn, batch_fn=batch_fn, key=key,
                    config=config, checkpointer=checkpointer, writer=writer,
                    eval_fn=eval_fn)
  finally:
    checkpointer.close()
  if plot is not None and parallel.is_primary():
    keys, name, title = plot
    # Also when the stage was done before: the run that finished it may have
    # been killed before its plot.
    if ran or not (run_dir / name).exists():
      plots.plot_metrics(writers.read_metrics(str(run_dir)), keys,
                         str(run_dir / name), title=title)
  return state, ran


def fuse_steps(step_fn: StepFn, num_steps: int):
  """`num_steps` training steps as one `lax.scan`, for one jit.

  For small models the host's per-step work (dispatch, fetching the batch,
  launching the program) is a visible share of a step; fusing k steps pays
  it once per k. `step_fn` is the plain (unjitted) step.

  Returns:
    fused(state, batches, keys) -> (state, metrics), where `batches` has a
    leading axis of `num_steps` (one batch per step), `keys` is
    key[num_steps], and `metrics` are the last step's, except
    `nonfinite/skipped`: its largest over the steps, so that a skip in any
    of them reaches the loop's watch.
  """
  def fused(state, batches, keys):
    def body(state, batch_and_key):
      return step_fn(state, *batch_and_key)
    state, metrics = jax.lax.scan(body, state, (batches, keys),
                                  length=num_steps)
    last = jax.tree.map(lambda m: m[-1], metrics)
    if algo_base.SKIPPED in metrics:
      last[algo_base.SKIPPED] = jnp.max(metrics[algo_base.SKIPPED])
    return state, last
  return fused
