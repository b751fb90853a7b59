"""Asynchronous actor-learner training (IMPALA: Espeholt et al. 2018).

The synchronous step (`step.rl_step`) generates batch k with the parameters
that update k - 1 produced, so generation and learning alternate. Here the
step is split in two jitted functions,

  actor(actor_params, batch, key) -> Acted (a scored rollout)
  learner(state, acted, key) -> (state, metrics),

and batch k is generated with the learner's parameters of `max_staleness`
updates earlier (version max(k - max_staleness, start)). The rollouts of the
next `max_staleness` batches do not depend on the update in flight, so they
run alongside it:

- on one device, by JAX's asynchronous dispatch: the learner's update of
  batch k is dispatched, then the actor's rollout of batch k + max_staleness,
  and only then does the host block (on the logged metrics of update k), so
  the device generates while the host logs, checkpoints and loads data (and,
  where the runtime runs independent programs concurrently, while the update
  runs);
- on several devices, by splitting them into an actor group and a learner
  group, each with its own 1-D `data` mesh: the actor is jitted with explicit
  shardings on its group, the learner on its own, rollouts are moved
  learner-ward and parameters copied actor-ward every update.

An algorithm trained this way must correct for the lag: IMPALA's V-trace
(`algos.impala`), or a PPO-style ratio against the rollout's behaviour
log-probs. The lag is exact and deterministic (`staleness` is logged), so a
run is reproducible; a resumed run restarts the pipeline from its checkpoint
(the first `max_staleness` batches after it are fresher than they would have
been), so it does not repeat an uninterrupted one exactly.

Everything else (logging to the same MetricWriter, evaluation, checkpoints,
progress, saving on errors) is `loop.fit`'s: the pipeline is handed to it as
its step function, fed the step number instead of a batch.
"""

import collections
import dataclasses
import functools
from typing import Any, Callable, NamedTuple, Sequence

import jax
import numpy as np
import optax
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec

from jaxrlgen.algos import base as algo_base
from jaxrlgen.core.types import Acted
from jaxrlgen.core.types import TrainState
from jaxrlgen.train import checkpoint as checkpoint_lib
from jaxrlgen.train import loop
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import writers

PyTree = Any
LearnerFn = Callable[..., tuple[TrainState, dict[str, jax.Array]]]


class ActorLearner(NamedTuple):
  """The two halves of an RL step (pure, not yet jitted).

  Attributes:
    actor: (actor_params, batch, key) -> Acted.
    learner: (state, acted, key) -> (state, metrics).
    policy_params: the learner's trainable parameters -> the actor's.
  """

  actor: step_lib.Actor
  learner: LearnerFn
  policy_params: Callable[[PyTree], PyTree] = lambda params: params


def rl_actor_learner(env, reward_fn: step_lib.RewardFn,
                     algo: algo_base.Algorithm,
                     tx: optax.GradientTransformation) -> ActorLearner:
  """`rl_step` split into actor and learner for the asynchronous loop."""
  return ActorLearner(
      actor=functools.partial(step_lib.sample, env=env, reward_fn=reward_fn),
      learner=functools.partial(step_lib.learner_step, env=env,
                                reward_fn=reward_fn,
                                algo=algo, tx=tx),
      policy_params=algo.policy_params)


def split_devices(devices: Sequence[jax.Device]
                  ) -> tuple[list[jax.Device], list[jax.Device]]:
  """(actor devices, learner devices): one device serves both; otherwise the
  first half learns (the default device, where restored state lands, is
  among them) and the second half generates."""
  devices = list(devices)
  if len(devices) == 1:
    return devices, devices
  half = len(devices) // 2
  return devices[half:], devices[:half]


@dataclasses.dataclass(frozen=True)
class Group:
  """A device group with a 1-D `data` mesh: replicated params, split batch."""

  mesh: Mesh

  @classmethod
  def of(cls, devices: Sequence[jax.Device]) -> 'Group':
    return cls(Mesh(np.asarray(devices), ('data',)))

  @property
  def replicated(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec())

  @property
  def data(self) -> NamedSharding:
    return NamedSharding(self.mesh, PartitionSpec('data'))

  @property
  def devices(self) -> set[jax.Device]:
    return set(self.mesh.devices.flat)


class _Generated(NamedTuple):
  """An actor output waiting for the learner, already on the learner group."""

  step: int
  version: int  # The learner step whose parameters generated it.
  acted: Acted


class Pipeline:
  """`loop.fit`'s step function: step k -> (state after update k, metrics).

  Call `place(state)` once before the first step; then `pipeline(state, k,
  key_k)` for consecutive k (`loop.fit` passes the step number as the batch).
  """

  def __init__(self, steps: ActorLearner, *, batch_fn: Callable[[int], Any],
               key: jax.Array, total_steps: int, max_staleness: int,
               actor_devices: Sequence[jax.Device] | None = None,
               learner_devices: Sequence[jax.Device] | None = None):
    """Jits the actor and learner on their device groups.

    Args:
      steps: the actor and learner functions.
      batch_fn: step -> host batch (a pure function of the step).
      key: the run's key; batch j is generated with `fold_in(key, j)`, the
        key `loop.fit` gives step j.
      total_steps: no batch at or past it is generated.
      max_staleness: how many updates the actor's parameters lag (>= 0).
      actor_devices, learner_devices: the two groups (they may be the same
        single device); default `split_devices(jax.devices())`.
    """
    if max_staleness < 0:
      raise ValueError(f'max_staleness={max_staleness} must be >= 0.')
    if (actor_devices is None) != (learner_devices is None):
      raise ValueError('Give both actor_devices and learner_devices, or '
                       'neither.')
    if actor_devices is None:
      actor_devices, learner_devices = split_devices(jax.devices())
    self.actor_group = Group.of(actor_devices)
    self.learner_group = Group.of(learner_devices)
    self._steps = steps
    self._batch_fn = batch_fn
    self._key = key
    self._total = total_steps
    self._staleness = max_staleness
    a, l = self.actor_group, self.learner_group
    self._actor = jax.jit(steps.actor,
                          in_shardings=(a.replicated, a.data, a.replicated),
                          out_shardings=a.data)
    self._learner = jax.jit(
        steps.learner,
        in_shardings=(l.replicated, l.data, l.replicated),
        out_shardings=l.replicated, donate_argnums=0)
    self._queue: collections.deque[_Generated] = collections.deque()
    self._next = None  # The next batch to generate.
    self.actor_params = None  # The actor's copy, for inspection.

  def place(self, state: TrainState) -> TrainState:
    """The state replicated over the learner group."""
    return jax.device_put(state, self.learner_group.replicated)

  def _generate(self, batches, version: int) -> None:
    """Dispatches the actor on `[(step, host batch)]`, in order."""
    a, l = self.actor_group, self.learner_group
    for j, batch in batches:
      acted = self._actor(
          self.actor_params, jax.device_put(batch, a.data),
          jax.device_put(jax.random.fold_in(self._key, j), a.replicated))
      # A no-op on one device; a device-to-device copy between groups.
      self._queue.append(_Generated(j, version,
                                    jax.device_put(acted, l.data)))

  def __call__(self, state: TrainState, step: int, key: jax.Array):
    if self._next is None:
      self._next = step
    upto = min(step + self._staleness, self._total - 1)
    # Host data first: if loading fails, nothing has been donated yet and
    # `loop.fit` checkpoints the intact `state`.
    batches = [(j, self._batch_fn(j)) for j in range(self._next, upto + 1)]
    self._next = upto + 1
    if batches:
      # Copied (never aliased): the learner donates its state, and on a
      # split mesh the actor's group needs its own replica.
      self.actor_params = jax.device_put(
          self._steps.policy_params(state.params), self.actor_group.replicated,
          may_alias=False)
    self._generate([b for b in batches if b[0] <= step], version=step)
    item = self._queue.popleft()
    if item.step != step:
      raise ValueError(f'The pipeline holds batch {item.step} at step {step}: '
                       'steps must be consecutive.')
    state, metrics = self._learner(
        state, item.acted, jax.device_put(key, self.learner_group.replicated))
    # Dispatched before anyone blocks on the update above: with a lag, these
    # batches need only the parameters the update started from.
    self._generate([b for b in batches if b[0] > step], version=step)
    return state, {**metrics, 'staleness': step - item.version}


def fit(state: TrainState, *, steps: ActorLearner,
        batch_fn: Callable[[int], Any], key: jax.Array,
        config: loop.LoopConfig, checkpointer: checkpoint_lib.Checkpointer,
        writer: writers.MetricWriter, eval_fn: loop.EvalFn | None = None,
        max_staleness: int = 1,
        actor_devices: Sequence[jax.Device] | None = None,
        learner_devices: Sequence[jax.Device] | None = None) -> TrainState:
  """`loop.fit` with an actor that lags the learner by `max_staleness` updates.

  Args:
    state: a TrainState, fresh or restored; placed on the learner group.
    steps: the actor and learner (see `rl_actor_learner`).
    batch_fn, key, config, checkpointer, writer, eval_fn: as in `loop.fit`
      (step k's batch and key are the same as there).
    max_staleness: updates the actor lags; 0 alternates like `loop.fit`.
    actor_devices, learner_devices: see `Pipeline`.
  Returns:
    The final state (on the learner group).
  """
  pipeline = Pipeline(steps, batch_fn=batch_fn, key=key,
                      total_steps=config.total_steps,
                      max_staleness=max_staleness,
                      actor_devices=actor_devices,
                      learner_devices=learner_devices)
  return loop.fit(pipeline.place(state), step_fn=pipeline,
                  batch_fn=lambda step: step, key=key, config=config,
                  checkpointer=checkpointer, writer=writer, eval_fn=eval_fn)
