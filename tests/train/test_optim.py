"""jaxrlgen/train/optim.py: the learning-rate schedules."""

import jax.numpy as jnp
import numpy as np
import pytest

from jaxrlgen.train import optim


def _first_updates(cfg, total_steps, steps=4):
  """The update of a parameter with gradient 1 at each of the first steps."""
  tx = optim.make(cfg, total_steps)
  params = jnp.zeros(())
  state = tx.init(params)
  out = []
  for _ in range(steps):
    update, state = tx.update(jnp.ones(()), state, params)
    out.append(float(update))
  return np.asarray(out)


def test_no_warmup_means_the_full_rate_from_the_first_step():
  # Adam's first update of a constant gradient is -lr (b1, b2 debiased).
  np.testing.assert_allclose(
      _first_updates(optim.config(0.1), 100), -0.1, rtol=1e-4)


def test_warmup_and_cosine():
  got = _first_updates(optim.config(0.1, warmup_steps=2), 100)
  np.testing.assert_allclose(got, [0.0, -0.05, -0.1, -0.1], atol=1e-6)
  cosine = _first_updates(optim.config(0.1, 'cosine', warmup_steps=2), 4)
  np.testing.assert_allclose(cosine[:3], [0.0, -0.05, -0.1], atol=1e-6)
  assert -0.1 < cosine[3] < 0  # Decaying after the warmup.


def test_unknown_schedule_is_rejected():
  cfg = optim.config(1.0)
  cfg.schedule = 'linear'
  with pytest.raises(ValueError, match='schedule'):
    optim.make(cfg, 10)
