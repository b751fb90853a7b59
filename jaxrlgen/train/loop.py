"""The training loop, shared by SFT and every RL algorithm.

The loop owns nothing about the algorithm: it calls a jitted
`step_fn(state, batch, key) -> (state, metrics)` with the batch and key of
each step (both pure functions of the step number, so a resumed run repeats
an uninterrupted one), and around it logs, evaluates, checkpoints and shows
progress. Metrics are fetched from the device only on logging steps. On any
error the last completed state is checkpointed and the metrics flushed before
the error propagates.
"""

import dataclasses
import time
from typing import Any, Callable, Mapping

from absl import logging
import jax
import numpy as np

from jaxrlgen import parallel
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import plots
from jaxrlgen.train import progress as progress_lib
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

StepFn = Callable[[Any, Any, jax.Array], tuple[Any, Mapping[str, jax.Array]]]
EvalFn = Callable[[Any], Mapping[str, float]]


@dataclasses.dataclass(frozen=True)
class LoopConfig:
  total_steps: int
  log_every: int = 1
  eval_every: int = 0  # 0: evaluate only at the start and the end.
  checkpoint_every: int = 0  # 0: only at the end (and on errors).
  progress_desc: str = 'train'
  progress_show: tuple[str, ...] = ('reward/mean',)


def to_python(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(np.asarray(v)) for k, v in jax.device_get(dict(metrics)).items()}


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
  """
  start = int(state.step)
  total = config.total_steps
  if eval_fn is not None and start == 0:
    writer.write(0, eval_fn(state))
  progress = progress_lib.Progress(total, start, desc=config.progress_desc,
                                   show=config.progress_show)
  last_saved = start
  interval_start, interval_steps = time.perf_counter(), 0
  try:
    for step in range(start, total):
      batch = batch_fn(step)
      state, metrics = step_fn(state, batch, jax.random.fold_in(key, step))
      interval_steps += 1
      done = step + 1
      if done % config.log_every == 0 or done == total:
        metrics = to_python(metrics)  # Blocks until the step has finished.
        now = time.perf_counter()
        metrics['step_time'] = (now - interval_start) / interval_steps
        metrics['steps_per_second'] = 1.0 / metrics['step_time']
        interval_start, interval_steps = now, 0
        writer.write(done, metrics)
        progress.update(done, metrics)
      if eval_fn is not None and (
          done == total or (config.eval_every and done % config.eval_every == 0)):
        writer.write(done, eval_fn(state))
        interval_start = time.perf_counter()
      if done == total or (config.checkpoint_every
                           and done % config.checkpoint_every == 0):
        checkpointer.save(done, state)
        last_saved = done
  except BaseException:
    # Keep everything up to the last completed step.
    try:
      completed = int(state.step)
      if completed > last_saved:
        logging.warning('Interrupted after step %d: saving its checkpoint.',
                        completed)
        checkpointer.save(completed, state, force=True)
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
    if int(state.step) >= config.total_steps:
      return state, False
    with writers.MetricWriter(str(run_dir), resume_step=resume_step) as writer:
      state = fit(state, step_fn=step_fn, batch_fn=batch_fn, key=key,
                  config=config, checkpointer=checkpointer, writer=writer,
                  eval_fn=eval_fn)
  finally:
    checkpointer.close()
  if plot is not None and parallel.is_primary():
    keys, name, title = plot
    plots.plot_metrics(writers.read_metrics(str(run_dir)), keys,
                       str(run_dir / name), title=title)
  return state, True


def fuse_steps(step_fn: StepFn, num_steps: int):
  """`num_steps` training steps as one `lax.scan`, for one jit.

  For small models the host's per-step work (dispatch, fetching the batch,
  launching the program) is a visible share of a step; fusing k steps pays
  it once per k. `step_fn` is the plain (unjitted) step.

  Returns:
    fused(state, batches, keys) -> (state, metrics), where `batches` has a
    leading axis of `num_steps` (one batch per step), `keys` is
    key[num_steps], and `metrics` are the last step's.
  """
  def fused(state, batches, keys):
    def body(state, batch_and_key):
      return step_fn(state, *batch_and_key)
    state, metrics = jax.lax.scan(body, state, (batches, keys),
                                  length=num_steps)
    return state, jax.tree.map(lambda m: m[-1], metrics)
  return fused
