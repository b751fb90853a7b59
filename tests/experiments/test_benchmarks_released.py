"""The released-model benchmark's two sides compute the same reward."""

import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
from experiments.benchmarks import released
from jaxrlgen.core.types import Rollout


def test_trl_reward_is_the_jaxrlgen_reward():
  # TRL hands a reward each completion's ids up to its end; jaxrlgen, the
  # padded actions with their mask.
  rng = np.random.default_rng(0)
  actions = rng.integers(0, 50, (6, 5)).astype(np.int32)
  lengths = np.array([5, 1, 3, 5, 2, 4])
  mask = np.arange(5)[None, :] < lengths[:, None]
  rollout = Rollout(context={}, actions=jnp.asarray(actions),
                    logp=jnp.zeros(actions.shape), mask=jnp.asarray(mask))
  want = common.even_fraction(rollout, None)
  got = released.even_fraction_of_ids(
      [a[:n].tolist() for a, n in zip(actions, lengths)], prompts=None)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  assert len(set(got)) > 2  # The batch tells the rewards apart.
