"""ILQL: expectile, Q and CQL losses against NumPy (values and
finite-difference gradients); advantage-weighted decoding = its formula, in
the heads and in the sampler; learning from a fixed offline dataset of scored
toy sequences."""

import pytest
import functools

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxrlgen import algos
from jaxrlgen.algos import ilql
from jaxrlgen.algos import qlearning
from jaxrlgen.core.types import Acted
from jaxrlgen.train import step as step_lib
from tests.algos import toy

# Three sequences of three steps over a 4-token vocabulary; the second ends
# at step 1, the third at step 0.
MASK = np.array([[1, 1, 1], [1, 1, 0], [1, 0, 0]], bool)
ACTIONS = np.array([[0, 3, 1], [2, 2, 0], [1, 0, 0]], np.int32)
RNG = np.random.default_rng(0)
DIFF = RNG.normal(size=(3, 3)).astype(np.float32)
Q_ALL = RNG.normal(size=(2, 3, 3, 4)).astype(np.float32)
TARGETS = RNG.normal(size=(3, 3)).astype(np.float32)


def np_expectile(diff, mask, tau):
  weight = np.where(diff < 0, 1 - tau, tau)
  return (weight * diff ** 2)[mask].mean()


def np_q_loss(q_taken, targets, mask):
  return sum(((q - targets) ** 2)[mask].mean() for q in q_taken)


def np_cql(q_all, actions, mask):
  total = 0.0
  for q in q_all:
    m = q.max(-1, keepdims=True)
    lse = np.log(np.exp(q - m).sum(-1)) + m[..., 0]
    taken = np.take_along_axis(q, actions[..., None], -1)[..., 0]
    total += (lse - taken)[mask].mean()
  return total


class ILQLReferenceTest(parameterized.TestCase):

  @parameterized.parameters(0.5, 0.7, 0.9)
  def test_expectile_loss_and_gradient(self, tau):
    f = lambda d: ilql.expectile_loss(d, jnp.asarray(MASK), expectile=tau)
    loss, grad = jax.value_and_grad(f)(jnp.asarray(DIFF))
    ref = lambda d: np_expectile(d, MASK, tau)
    np.testing.assert_allclose(loss, ref(DIFF.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, DIFF),
                               atol=1e-5)
    # tau > 1/2 weighs under-estimates of the target (u > 0) more.
    if tau > 0.5:
      up = float(f(jnp.abs(jnp.asarray(DIFF))))
      down = float(f(-jnp.abs(jnp.asarray(DIFF))))
      self.assertGreater(up, down)

  def test_q_loss_and_gradient(self):
    q_taken = np.take_along_axis(Q_ALL, ACTIONS[None, ..., None], -1)[..., 0]
    f = lambda q: qlearning.twin_td_loss(q, jnp.asarray(TARGETS),
                                         jnp.asarray(MASK))[0]
    loss, grad = jax.value_and_grad(f)(jnp.asarray(q_taken))
    ref = lambda q: np_q_loss(q, TARGETS, MASK)
    np.testing.assert_allclose(loss, ref(q_taken), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, q_taken),
                               atol=1e-5)
    self.assertTrue(np.all(np.asarray(grad)[:, ~MASK] == 0))

  def test_cql_loss_and_gradient(self):
    f = lambda q: ilql.cql_loss(q, jnp.asarray(ACTIONS), jnp.asarray(MASK))
    loss, grad = jax.value_and_grad(f)(jnp.asarray(Q_ALL))
    ref = lambda q: np_cql(q, ACTIONS, MASK)
    np.testing.assert_allclose(loss, ref(Q_ALL.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(grad, toy.finite_difference(ref, Q_ALL),
                               atol=1e-5)
    # It lowers every action's Q but the dataset's (softmax minus one-hot).
    g = np.asarray(grad)[0, 0, 0]
    self.assertLess(g[ACTIONS[0, 0]], 0)
    self.assertTrue(np.all(np.delete(g, ACTIONS[0, 0]) > 0))

  def test_advantage_weighted_logits_formula(self):
    logp = np.log(RNG.dirichlet(np.ones(4), size=(3, 3))).astype(np.float32)
    v = RNG.normal(size=(3, 3)).astype(np.float32)
    got = ilql.advantage_weighted_logits(jnp.asarray(logp),
                                         jnp.asarray(Q_ALL[0]),
                                         jnp.asarray(v), beta=2.5)
    np.testing.assert_allclose(got, logp + 2.5 * (Q_ALL[0] - v[..., None]),
                               rtol=1e-6)

  def test_config_errors_name_the_field(self):
    config = algos.default_config('ilql')
    config.expectile = 1.0
    with self.assertRaisesRegex(ValueError, 'config.algo.expectile'):
      algos.make(config)
    config = algos.default_config('ilql')
    config.cql_coef = -1.0
    with self.assertRaisesRegex(ValueError, 'config.algo.cql_coef'):
      algos.make(config)


def _random_heads(heads, key):
  """The heads with every leaf random (the real ones start at Q = V = 0)."""
  leaves, tree = jax.tree.flatten(heads)
  keys = jax.random.split(key, len(leaves))
  return jax.tree.unflatten(tree, [jax.random.normal(k, x.shape)
                                   for k, x in zip(keys, leaves)])


def test_decoding_samples_from_the_formula():
  """The sampler's logits are log pi_beta + beta (min_i Q_i - V) at every
  decoder state, and zero heads (the initial ones) decode as the LM."""
  env, params, _ = toy.setup(num_samples=2)
  algo = algos.make(algos.default_config('ilql'))
  trainable = algo.init_params(env, params, jax.random.key(1))
  prompt = jnp.full((2, 3), 7, jnp.int32)
  prompt_mask = jnp.ones((2, 3), bool).at[0, 0].set(False)
  prompts = {'prompt': prompt, 'prompt_mask': prompt_mask}
  key = jax.random.key(3)
  beta = 1.7
  decoding = ilql.decoding_env(env, beta)
  decode = jax.jit(decoding.rollout)
  # At the start (zero heads) the perturbed policy is pi_beta itself: the
  # sampled log-probs are the LM's teacher-forced ones.
  start = decode(algo.policy_params(trainable), prompts, key)
  lm_logp = jax.jit(env.evaluate)(params, start).logp
  np.testing.assert_allclose(jnp.where(start.mask, start.logp, 0.0),
                             jnp.where(start.mask, lm_logp, 0.0), atol=1e-5)
  # With random heads, the rollout's log-probs are those of the formula
  # recomputed from a teacher-forced pass.
  trainable['heads'] = _random_heads(trainable['heads'], jax.random.key(4))
  rollout = decode(algo.policy_params(trainable), prompts, key)

  @jax.jit
  def formula(params, heads, rollout):
    hidden = env.hidden_states(params, rollout)
    logp = jax.nn.log_softmax(env.action_logits(params, rollout), axis=-1)
    q = jnp.minimum(ilql.q_head(heads['q1'], hidden),
                    ilql.q_head(heads['q2'], hidden))
    return logp + beta * (q - ilql.v_head(heads['v'], hidden)[..., None])

  logits = formula(params, trainable['heads'], rollout)
  want = qlearning.action_values(jax.nn.log_softmax(logits, axis=-1),
                                 rollout.actions)
  np.testing.assert_allclose(jnp.where(rollout.mask, rollout.logp, 0.0),
                             jnp.where(rollout.mask, want, 0.0), atol=1e-4)
  # Greedy evaluation decodes the argmax of the same logits.
  prompts = {'prompt': prompt, 'prompt_mask': prompt_mask}
  greedy = jax.jit(decoding.greedy().rollout)(algo.policy_params(trainable),
                                              prompts, key)
  first = jnp.argmax(logits[:, 0], axis=-1)
  np.testing.assert_array_equal(greedy.actions[:, 0], first[::2])


@pytest.mark.slow
def test_ilql_improves_on_its_offline_data():
  """ILQL trained on a fixed dataset of random-policy samples decodes a policy
  that beats the data; margin: sampled mean reward +0.12 over the dataset."""
  env, params, batch = toy.setup(num_prompts=8)
  config = algos.default_config('ilql')
  config.beta = 30.0
  config.tau = 0.2
  algo = algos.make(config)
  tx = optax.adam(3e-3)
  sample = jax.jit(env.rollout)
  dataset = [sample(params, batch, jax.random.key(100 + i)) for i in range(4)]
  scores = [toy.fives_reward(r, None) for r in dataset]
  data_reward = float(np.mean(scores))
  state = toy.train_state(algo, env, params, batch, tx)
  step = jax.jit(functools.partial(step_lib.learner_step, env=env,
                                   reward_fn=toy.fives_reward, algo=algo,
                                   tx=tx), donate_argnums=0)
  for i in range(60):
    acted = Acted(rollout=dataset[i % 4], rewards=scores[i % 4], batch=batch,
                  failed=jnp.zeros_like(scores[i % 4], bool))
    state, metrics = step(state, acted, jax.random.key(i))
  decoded = jax.jit(ilql.decoding_env(env, config.beta).rollout)(
      algo.policy_params(state.params), batch, jax.random.key(7))
  reward = float(jnp.mean(toy.fives_reward(decoded, None)))
  assert data_reward < 0.15
  assert reward > data_reward + 0.12, (reward, data_reward)
  assert float(metrics['cql_loss']) > 0.0
