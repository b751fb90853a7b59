"""The types every layer shares: a rollout and the training state.

A `Rollout` is what an environment's sampler returns and what every algorithm
consumes. It does not know whether its actions are tokens or denoising steps:
`context` holds whatever the environment needs to recompute log-probs (prompt
tokens for text, the starting noise and condition for diffusion), `actions`
the chosen actions with leading axes [B, T], `logp` the behaviour policy's
log-probability of each action and `mask` which steps are real.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

PyTree = Any


@flax.struct.dataclass
class Rollout:
  """B trajectories of T steps.

  Attributes:
    context: environment-specific pytree with leading axis B (for text: the
      left-padded prompt `tokens: i32[B, P]` and `mask: bool[B, P]`).
    actions: pytree with leading axes [B, T] (for text: `i32[B, T]` tokens).
    logp: f32[B, T] log-probability of each action under the sampling policy.
    mask: bool[B, T] true for steps that happened (up to and including EOS).
  """

  context: PyTree
  actions: PyTree
  logp: jax.Array
  mask: jax.Array

  @property
  def batch_size(self) -> int:
    return self.logp.shape[0]

  @property
  def num_steps(self) -> int:
    return self.logp.shape[1]


@flax.struct.dataclass
class Acted:
  """What an actor hands the learner: a scored rollout of one batch.

  Every actor — sampling the policy, searching with it (MCTS), reading a
  stored dataset — returns this, so one learner step serves them all.

  Attributes:
    rollout: B = N * G sequences.
    rewards: f32[B] their rewards.
    batch: the N prompts' own data (leading axis N) the rollout came from;
      algorithms that score other rollouts of the same prompts read it.
    failed: bool[B], true where a host reward item failed and got its
      penalty (all false for a pure reward).
  """

  rollout: Rollout
  rewards: jax.Array
  batch: PyTree
  failed: jax.Array


@flax.struct.dataclass
class PolicyOutputs:
  """What a teacher-forced pass of a policy over a stored rollout returns.

  Attributes:
    logp: f32[B, T] log-probability of each stored action.
    entropy: f32[B, T] entropy of the policy at each step.
    values: f32[B, T] value estimates, or None for a policy without a value head.
  """

  logp: jax.Array
  entropy: jax.Array
  values: jax.Array | None = None


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training; a pytree, checkpointed whole.

  Attributes:
    step: i32[] number of completed training steps.
    params: policy parameters.
    opt_state: optimizer state of `params`.
    ref_params: frozen reference policy parameters, or None when no algorithm
      term needs them (the reference model is then never evaluated). With
      adapters, the trainable tree without adapter factors: the bound base
      with the adapters off, no copy.
    algo_state: algorithm-specific running state (baselines, KL controller,
      reward statistics); an empty dict when the algorithm has none.
    frozen: the frozen base weights of a policy with adapters (LoRA), bound
      to the environment's policy inside a step (`train.step.bind`); never
      differentiated, optimized or checkpointed (a run reloads them from
      its model path). None when every parameter trains.
    skipped_steps: i32[] steps whose update the non-finite guard skipped
      (`algos.base.minibatch_update`); checkpointed, so the count survives a
      resume.
  """

  step: jax.Array
  params: PyTree
  opt_state: PyTree
  ref_params: PyTree | None = None
  algo_state: PyTree = flax.struct.field(default_factory=dict)
  frozen: PyTree | None = None
  skipped_steps: jax.Array = flax.struct.field(
      default_factory=lambda: jnp.zeros((), jnp.int32))

  @classmethod
  def create(cls, params: PyTree, tx, *, ref_params: PyTree | None = None,
             algo_state: PyTree | None = None,
             frozen: PyTree | None = None) -> 'TrainState':
    """Step 0 of training `params` with the optax transformation `tx`."""
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               opt_state=tx.init(params), ref_params=ref_params,
               algo_state={} if algo_state is None else algo_state,
               frozen=frozen)
