"""A2C: loss and gradients against NumPy, the n-step targets of `prepare`,
and a learning test."""

import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import a2c
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.train import step as step_lib
from jaxrlgen.policies import LMPolicy
from tests.algos import toy

# Three sequences of three steps; the second ends at step 1, the third at 0.
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
LOGP = np.log(np.array([[0.5, 0.2, 0.9], [0.3, 0.3, 0.3],
                        [0.6, 0.1, 0.8]], np.float32))
VALUES = np.array([[0.1, 0.5, -0.4], [0.3, -0.2, 0.0],
                   [0.9, 0.0, 0.0]], np.float32)
ADV = np.array([[0.5, -1.0, 2.0], [-0.3, 1.5, 0.0],
                [1.0, 0.0, 0.0]], np.float32)
TARGETS = np.array([[1.0, 0.2, 0.0], [-0.5, 0.4, 0.0],
                    [1.0, 0.0, 0.0]], np.float32)


def np_a2c_loss(logp, values, adv, targets, mask, vf_coef):
  policy = -(logp * adv)[mask].mean()
  value = 0.5 * ((values - targets)**2)[mask].mean()
  return policy + vf_coef * value


def np_n_step_targets(scores, values, mask, n):
  """gamma = 1: the score if it is within n steps, else V(s_{t+n})."""
  out = np.zeros(mask.shape, np.float64)
  for b, length in enumerate(mask.sum(1)):
    for t in range(length):
      out[b, t] = scores[b] if t + n >= length else values[b, t + n]
  return out


# The toy task: a tiny LM is rewarded for the fraction of its tokens that are 5.
TOY_CFG = tfm.TransformerConfig(vocab_size=16, hidden_dim=32, mlp_dim=64,
                                num_layers=1, num_heads=2, num_kv_heads=2,
                                max_seq_len=12, value_head=True)
TOY_ENV = TextEnv(LMPolicy(tfm.Transformer(TOY_CFG)),
                  max_new_tokens=6,
                  eos_id=1,
                  pad_id=0,
                  num_samples=8)
TOY_BATCH = {'prompt': jnp.full((4, 3), 7, jnp.int32),
             'prompt_mask': jnp.ones((4, 3), bool)}


toy_reward = toy.fives_reward


class A2CReferenceTest(parameterized.TestCase):

  @parameterized.product(vf_coef=[0.5, 2.0], jit=[False, True])
  def test_loss_and_gradients(self, vf_coef, jit):
    def f(logp, values):
      return a2c.a2c_loss(logp, values, jnp.asarray(ADV), jnp.asarray(TARGETS),
                          jnp.asarray(MASK), vf_coef=vf_coef)[0]

    f = jax.jit(f) if jit else f
    loss, (g_logp, g_values) = jax.value_and_grad(f, argnums=(0, 1))(
        jnp.asarray(LOGP), jnp.asarray(VALUES))
    ref = functools.partial(np_a2c_loss, adv=ADV, targets=TARGETS, mask=MASK,
                            vf_coef=vf_coef)
    np.testing.assert_allclose(
        loss, ref(LOGP.astype(np.float64), VALUES.astype(np.float64)),
        rtol=1e-5)
    np.testing.assert_allclose(
        g_logp, toy.finite_difference(lambda x: ref(x, VALUES), LOGP), atol=1e-5)
    np.testing.assert_allclose(
        g_values, toy.finite_difference(lambda x: ref(LOGP, x), VALUES),
        atol=1e-5)
    self.assertTrue(np.all(np.asarray(g_logp)[~MASK] == 0))
    self.assertTrue(np.all(np.asarray(g_values)[~MASK] == 0))

  def test_advantages_and_targets_are_not_differentiated(self):
    # They are fixed weights: a gradient through the advantage would turn the
    # policy term into a value loss of the wrong sign.
    grads = jax.grad(lambda adv, targets: a2c.a2c_loss(
        jnp.asarray(LOGP), jnp.asarray(VALUES), adv, targets,
        jnp.asarray(MASK), vf_coef=0.5)[0], argnums=(0, 1))(
            jnp.asarray(ADV), jnp.asarray(TARGETS))
    for grad in grads:
      np.testing.assert_array_equal(grad, 0.0)

  def test_prepare_builds_n_step_targets(self):
    n = 2
    config = algos.default_config('a2c')
    config.n = n
    algo = algos.make(config)
    params = tfm.init_params(TOY_CFG, jax.random.key(0))
    # A value head that is not zero, so that bootstrapping shows.
    kernel = params['value_proj']['kernel']
    params['value_proj'] = {
        'kernel': jnp.linspace(-1.0, 1.0, kernel.size).reshape(kernel.shape),
        'bias': jnp.full((1,), 0.3)}
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                       opt_state=None)
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 7, size=32)
    lengths[:2] = (1, 6)  # Ends at once; runs to the horizon.
    mask = np.arange(6)[None, :] < lengths[:, None]
    rollout = Rollout(context={'tokens': TOY_BATCH['prompt'].repeat(8, 0),
                               'mask': TOY_BATCH['prompt_mask'].repeat(8, 0)},
                      actions=jnp.asarray(
                          np.where(mask, rng.integers(2, 16, mask.shape), 0),
                          jnp.int32),
                      logp=jnp.zeros(mask.shape), mask=jnp.asarray(mask))
    scores = jnp.asarray(rng.normal(size=32), jnp.float32)

    @jax.jit
    def run(state, rollout, scores):
      prepared = algo.prepare(TOY_ENV, state, rollout, scores,
                              jax.random.key(0))
      return (TOY_ENV.evaluate(state.params, rollout, with_values=True).values,
              prepared)

    values, (exp, _, metrics) = run(state, rollout, scores)
    values = np.asarray(values)
    want = np_n_step_targets(np.asarray(scores), values, mask, n)
    np.testing.assert_allclose(exp.value_targets, want, rtol=1e-4,
                               atol=1e-5)
    np.testing.assert_allclose(exp.advantages,
                               np.where(mask, want - values, 0.0), rtol=1e-4,
                               atol=1e-5)
    self.assertIn('advantages/mean', metrics)


def test_a2c_raises_reward_on_toy_task():
  """Value head on the trunk, n = 3 < T, a k3 KL anchor; margin: mean
  reward +0.4."""
  config = algos.default_config('a2c')
  config.update(n=3, entropy_coef=0.0, whiten_advantages=True, kl_coef=0.01)
  algo = algos.make(config)
  assert algo.uses_reference
  tx = optax.adam(3e-3)
  params = tfm.init_params(TOY_CFG, jax.random.key(0))
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=tx.init(params),
                     ref_params=jax.tree.map(jnp.copy, params),
                     algo_state=algo.init_state())
  step = jax.jit(functools.partial(step_lib.rl_step, env=TOY_ENV,
                                   reward_fn=toy_reward, algo=algo, tx=tx),
                 donate_argnums=0)
  history = []
  for i in range(15):
    state, metrics = step(state, TOY_BATCH, jax.random.key(i))
    history.append(float(metrics['reward/mean']))
  assert np.mean(history[:3]) < 0.2, history
  assert np.mean(history[-3:]) > np.mean(history[:3]) + 0.4, history
  assert float(metrics['value_loss']) > 0.0
  assert float(metrics['kl']) > 0.0
