"""Monte Carlo tree search decoding over the text environment, with mctx.

Each token of a completion is chosen by one search whose model is the policy
itself (the environment is known, so no learned dynamics are needed, unlike
MuZero's): the root is the current decoding state (after `TextEnv.reset`, the
prefilled prompt), the recurrent function is ONE cached decode step of the
chosen token, its prior logits are the policy's next-token logits, its value
a learned value head (`TransformerConfig.value_head`) or 0, and its reward the
sequence's reward, paid on the transition that ends the sequence (EOS or the
token budget), after which the discount is 0. Search policies:
  muzero:        PUCT with visit-count acting (Silver et al. 2017, "Mastering
                 the game of Go without human knowledge"; Schrittwieser et al.
                 2020, MuZero), `mctx.muzero_policy`.
  gumbel_muzero: Sequential Halving with Gumbel at the root (Danihelka et al.
                 2022, "Policy improvement by planning with Gumbel"),
                 `mctx.gumbel_muzero_policy`.
A whole completion is a `lax.scan` over its T tokens, one search per token.
The rollout is TextEnv.rollout's, its `logp` that of the search's acting
distribution, and its context also carries the search's action weights
(`search_policy`, the distillation target of `jaxrlgen.algos.mcts`).

Q-values enter action selection on the known scale of the returns
(`q_normalization='fixed'`, [q_min, q_max]) by default. mctx's own defaults
rescale them by the min and max over a node's children: with a learned
value head, tiny value differences then become [0, 1] ones, so the first
child visited above its parent takes every later visit (PUCT) or dominates
the improved policy (Gumbel), and expert iteration collapsed in our runs.

Memory: mctx stores one embedding per tree node, and here an embedding is a
whole decoding state, so a search holds `num_simulations + 1` copies of every
sequence's KV cache: B * (num_simulations + 1) * num_layers * 2 *
num_kv_heads * (prompt + T) * head_dim values, plus [B, num_simulations + 1,
V] arrays of priors, visits and values. For the arithmetic model (2 layers,
2 KV heads of 32, 14 slots) that is ~15 kB per node: 256 sequences x 33
nodes ~ 130 MB. For long contexts or large models this is prohibitive; a
tree that shares prefix caches between nodes would be needed.

The rewards reach inside the search: scoring a finished node calls the run's
reward function on it, so MCTS decoding uses the task's checker (for
arithmetic, the answer) at terminal nodes. Its accuracy is that of
verifier-guided search, not of the policy alone.
"""

import dataclasses
import functools
from typing import Any, Callable, ClassVar

import chex
import flax.struct
import jax
import jax.numpy as jnp
import mctx

from jaxrlgen import schema
from jaxrlgen.core.types import Rollout
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.envs.text import TextState
from jaxrlgen.envs.text import Transition

Params = Any
RewardFn = Callable[[Rollout, Any], jax.Array]

POLICIES = ('muzero', 'gumbel_muzero')
VALUES = ('head', 'zero')
Q_NORMALIZATIONS = ('fixed', 'siblings')


@dataclasses.dataclass(frozen=True)
class MCTSConfig:
  """How each token is searched for (`config.mcts`); frozen and hashable."""

  SPECIAL: ClassVar[schema.Special] = {
      'max_depth': schema.Means(zero='the completion budget'),
      'dirichlet_fraction': schema.Means(zero='no root noise'),
      'q_min': schema.Means(zero='the smallest return is 0',
                            negative='the smallest return'),
      'gumbel_scale': schema.Means(zero='no root noise (deterministic)')}

  policy: str = 'muzero'  # muzero (PUCT) | gumbel_muzero.
  num_simulations: int = 16  # Simulations (tree nodes added) per token.
  max_depth: int = 0  # Longest simulated path; 0: the completion budget.
  value: str = 'head'  # head: the model's value head; zero: reward only.
  greedy: bool = False  # Act by the largest weight, without noise (eval).
  temperature: float = 1.0  # muzero: act with prob ~ visits^(1/temperature).
  dirichlet_fraction: float = 0.0  # muzero: root prior noise (AlphaZero 0.25).
  dirichlet_alpha: float = 0.3  # muzero: its concentration.
  pb_c_init: float = 1.25  # muzero: PUCT exploration constant c1.
  pb_c_base: float = 19652.0  # muzero: PUCT constant c2.
  # How Q-values enter action selection. fixed: muzero scales them by the
  # known return range [q_min, q_max] (unvisited actions count as q_min);
  # gumbel_muzero takes them unscaled (returns in [0, 1]). siblings: mctx's
  # defaults, scaled by the min and max over the node and its children,
  # which turns tiny value differences into [0, 1] ones: with a learned
  # value head, the first child visited above its parent takes every visit.
  q_normalization: str = 'fixed'
  q_min: float = 0.0  # fixed: the smallest possible return.
  q_max: float = 1.0  # fixed: the largest possible return.
  max_num_considered_actions: int = 16  # gumbel_muzero: root actions kept.
  gumbel_scale: float = 1.0  # gumbel_muzero: scale of the root Gumbel noise.

  @classmethod
  def from_config(cls, mcts_config) -> 'MCTSConfig':
    """From `config.mcts` (a mapping); an unknown field fails, listing all."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mcts_config) - fields)
    if unknown:
      names = ', '.join(f'config.mcts.{k}' for k in unknown)
      raise ValueError(f'Unknown field(s) {names}; known: {sorted(fields)}.')
    return cls(**dict(mcts_config))

  def __post_init__(self):
    schema.positive(self, 'dirichlet_alpha', 'pb_c_init', 'pb_c_base',
                    'max_num_considered_actions')
    schema.non_negative(self, 'gumbel_scale')
    if self.policy not in POLICIES:
      raise ValueError(f'config.mcts.policy={self.policy!r}; known: '
                       f'{POLICIES}.')
    if self.q_normalization not in Q_NORMALIZATIONS:
      raise ValueError('config.mcts.q_normalization='
                       f'{self.q_normalization!r}; known: {Q_NORMALIZATIONS}.')
    if self.q_max <= self.q_min:
      raise ValueError(f'config.mcts.q_max={self.q_max} must exceed '
                       f'config.mcts.q_min={self.q_min}.')
    if self.value not in VALUES:
      raise ValueError(f'config.mcts.value={self.value!r}; known: {VALUES}.')
    if self.num_simulations < 1:
      raise ValueError(f'config.mcts.num_simulations={self.num_simulations} '
                       'must be >= 1.')
    if self.max_depth < 0:
      raise ValueError(f'config.mcts.max_depth={self.max_depth} must be >= 0 '
                       '(0: the completion budget).')
    if self.temperature <= 0:
      raise ValueError(f'config.mcts.temperature={self.temperature} must be '
                       '> 0; use config.mcts.greedy=True for argmax acting.')
    if not 0 <= self.dirichlet_fraction <= 1:
      raise ValueError('config.mcts.dirichlet_fraction='
                       f'{self.dirichlet_fraction} must be in [0, 1].')


@flax.struct.dataclass
class Node:
  """A tree node's embedding: a decoding state, batch-major, one per row.

  Attributes:
    state: the TextState; `state.cache.index` is i32[B] (rows of a batch sit
      at different depths of their trees).
    value: f32[B] the value estimate of the state (0 when terminal).
    tokens: i32[B, T] the completion so far (pad after it).
    length: i32[B] how many tokens were generated.
  """

  state: TextState
  value: jax.Array
  tokens: jax.Array
  length: jax.Array

  def terminal(self, budget: int) -> jax.Array:
    return self.state.done | (self.length >= budget)


@flax.struct.dataclass
class SearchStep:
  """What the scan records per token: the transition and the search's view.

  Attributes:
    token: i32[B] the chosen token (pad once the sequence ended).
    logp: f32[B] its log-probability under the search's acting distribution.
    valid: bool[B] whether the sequence was still going.
    weights: f32[B, V] the search's action weights (visit distribution for
      muzero, softmax(prior + completed Q) for gumbel_muzero).
    value: f32[B] the search's value estimate of the root.
  """

  token: jax.Array
  logp: jax.Array
  valid: jax.Array
  weights: jax.Array
  value: jax.Array


def _add_batch(state: TextState) -> TextState:
  """One row's state (scalar cache index) as a batch of one."""
  add = lambda x: x[None]
  return jax.tree.map(add, state).replace(cache=jax.tree.map(
      add, state.cache).replace(index=state.cache.index))


def _drop_batch(state: TextState) -> TextState:
  """The inverse of `_add_batch`."""
  index = state.cache.index
  state = state.replace(cache=state.cache.replace(index=index[None]))
  state = jax.tree.map(lambda x: x[0], state)
  return state.replace(cache=state.cache.replace(index=index))


@dataclasses.dataclass(frozen=True)
class MCTSSampler:
  """Decodes with one mctx search per token (see the module docstring).

  A sampling strategy of the text environment: its `rollout(params, batch,
  key)` is `TextEnv.rollout`'s, so it stands in for the environment wherever
  completions are drawn (`train.step.sample`, greedy evaluation).

  Attributes:
    env: the text environment (policy, budget T, EOS / pad, G samples).
    reward_fn: (rollout, per-sequence batch) -> f32[B], the run's reward,
      which scores the search's finished nodes.
    config: the search.
  """

  env: TextEnv
  reward_fn: RewardFn
  config: MCTSConfig = MCTSConfig()

  def __post_init__(self):
    if self.config.value == 'head' and not self.env.policy.has_value_head:
      raise ValueError("config.mcts.value='head' needs a model with a value "
                       "head: set config.model.value_head=True, or "
                       "config.mcts.value='zero'.")
    if self.env.suppress_eos:
      raise ValueError('MCTS decoding scores finished sequences; it does not '
                       'support TextEnv.suppress_eos.')

  def bind(self, frozen) -> 'MCTSSampler':
    """This sampler with its policy's frozen base bound (adapters)."""
    return dataclasses.replace(self, env=self.env.bind(frozen))

  def greedy(self) -> 'MCTSSampler':
    """This sampler acting by the largest search weight, noise-free, G = 1."""
    return MCTSSampler(env=dataclasses.replace(self.env, num_samples=1),
                       reward_fn=self.reward_fn,
                       config=dataclasses.replace(
                           self.config, greedy=True, dirichlet_fraction=0.0))

  def _value(self, params, hidden: jax.Array) -> jax.Array:
    if self.config.value == 'zero':
      return jnp.zeros(hidden.shape[:-1], jnp.float32)
    return self.env.value(params, hidden)

  def root(self, params: Params, prompt: jax.Array,
           prompt_mask: jax.Array) -> Node:
    """The prefilled prompts (`TextEnv.reset`), G rows each, as a Node."""
    state = self.env.reset(params, prompt, prompt_mask)
    b, t = state.done.shape[0], self.env.max_new_tokens
    value = self._value(params, state.hidden)
    # Rows of one search sit at different depths: the cache index per row.
    state = state.replace(cache=state.cache.replace(
        index=jnp.full((b,), state.cache.index, jnp.int32)))
    return Node(state=state, value=value,
                tokens=jnp.full((b, t), self.env.pad_id, jnp.int32),
                length=jnp.zeros((b,), jnp.int32))

  def recurrent_fn(self, params: Params, reward_fn: RewardFn, context,
                   batch) -> Callable:
    """mctx's recurrent function: one decode step of each row's action.

    Args:
      params: policy parameters.
      reward_fn: scores finished sequences, (rollout, batch) -> f32[B].
      context: the rows' prompts, {'tokens': i32[B, P], 'mask': bool[B, P]}.
      batch: per-row data the reward reads (leading axis B).
    """
    budget = self.env.max_new_tokens

    def one_row(state: TextState, token):
      # A batch of one, so the row's own cache index is the shared one.
      chosen = Transition(token=token[None], logp=jnp.zeros((1,)),
                          valid=jnp.ones((1,), jnp.bool_))
      return _drop_batch(self.env.advance(params, _add_batch(state), chosen))

    def fn(unused_params, unused_key, action: jax.Array, node: Node):
      b = action.shape[0]
      action = action.astype(jnp.int32)
      terminal = node.terminal(budget)
      state = jax.vmap(one_row)(node.state, action)
      ended = action == self.env.eos_id
      rows = jnp.arange(b)
      slot = jnp.minimum(node.length, budget - 1)
      tokens = node.tokens.at[rows, slot].set(
          jnp.where(terminal, node.tokens[rows, slot], action))
      length = jnp.where(terminal, node.length, node.length + 1)
      ends_now = ~terminal & (ended | (length >= budget))
      finished = Rollout(
          context=context, actions=tokens,
          logp=jnp.zeros(tokens.shape, jnp.float32),
          mask=jnp.arange(budget)[None] < length[:, None])
      reward = jnp.where(ends_now, reward_fn(finished, batch), 0.0)
      stops = terminal | ends_now
      value = jnp.where(stops, 0.0, self._value(params, state.hidden))
      child = Node(state=state, value=value, tokens=tokens, length=length)
      # A terminal node's subtree is inert: the same node, nothing earned.
      child = jax.tree.map(
          lambda new, old: jnp.where(
              terminal.reshape((b,) + (1,) * (new.ndim - 1)), old, new),
          child, node)
      out = mctx.RecurrentFnOutput(
          reward=reward.astype(jnp.float32),
          discount=jnp.where(stops, 0.0, 1.0).astype(jnp.float32),
          prior_logits=child.state.logits.astype(jnp.float32),
          value=child.value.astype(jnp.float32))
      return out, child

    return fn

  def search(self, params: Params, node: Node, key: jax.Array,
             recurrent_fn: Callable) -> SearchStep:
    """One search from `node`; the chosen token of every row."""
    cfg = self.config
    prior = node.state.logits.astype(jnp.float32)
    root = mctx.RootFnOutput(prior_logits=prior, value=node.value,
                             embedding=node)
    max_depth = cfg.max_depth or self.env.max_new_tokens
    search_key, act_key = jax.random.split(key)
    fixed = cfg.q_normalization == 'fixed'
    if cfg.policy == 'muzero':
      qtransform = (functools.partial(mctx.qtransform_by_min_max,
                                      min_value=cfg.q_min,
                                      max_value=cfg.q_max) if fixed
                    else mctx.qtransform_by_parent_and_siblings)
      out = mctx.muzero_policy(
          params, search_key, root, recurrent_fn, cfg.num_simulations,
          max_depth=max_depth,
          dirichlet_fraction=float(cfg.dirichlet_fraction),
          dirichlet_alpha=float(cfg.dirichlet_alpha),
          pb_c_init=float(cfg.pb_c_init), pb_c_base=float(cfg.pb_c_base),
          qtransform=qtransform)
      weights = out.action_weights
      if cfg.greedy:
        # Most visits; the prior breaks ties (weights are multiples of
        # 1 / num_simulations, far above the prior's 1e-6 share).
        action = jnp.argmax(weights + 1e-6 * jax.nn.softmax(prior), axis=-1)
        acting = jnp.log(jnp.maximum(weights, jnp.finfo(jnp.float32).tiny))
      else:
        acting = jax.nn.log_softmax(
            jnp.log(jnp.maximum(weights, jnp.finfo(jnp.float32).tiny))
            / cfg.temperature)
        action = jax.random.categorical(act_key, acting)
    else:
      out = mctx.gumbel_muzero_policy(
          params, search_key, root, recurrent_fn, cfg.num_simulations,
          max_depth=max_depth,
          max_num_considered_actions=cfg.max_num_considered_actions,
          qtransform=functools.partial(
              mctx.qtransform_completed_by_mix_value,
              rescale_values=not fixed),
          gumbel_scale=0.0 if cfg.greedy else cfg.gumbel_scale)
      weights, action = out.action_weights, out.action
      # The action is deterministic given the Gumbel draw; its log-prob is
      # reported under the improved policy the search returns.
      acting = jnp.log(jnp.maximum(weights, jnp.finfo(jnp.float32).tiny))
    action = action.astype(jnp.int32)
    logp = jnp.take_along_axis(acting, action[:, None], axis=-1)[:, 0]
    valid = ~node.terminal(self.env.max_new_tokens)
    return SearchStep(token=jnp.where(valid, action, self.env.pad_id),
                      logp=jnp.where(valid, logp, 0.0), valid=valid,
                      weights=weights,
                      value=out.search_tree.node_values[:, 0])

  @property
  def num_samples(self) -> int:
    return self.env.num_samples

  def rollout(self, params: Params, batch, key: jax.Array) -> Rollout:
    """Generates G completions of each of N prompts, one search per token.

    Args:
      params: policy parameters (with a value head for value='head').
      batch: per-prompt data, leading axis N: `prompt` i32[N, P],
        `prompt_mask` bool[N, P], and whatever `reward_fn` reads.
      key: PRNG key.
    Returns:
      TextEnv.rollout's Rollout (B = N * G, T = max_new_tokens), `logp` the
      log-probs of the search's acting distribution, and in `context` also
      `search_policy: f32[B, T, V]` (the search's action weights, the
      distillation target) and `search_value: f32[B, T]` (root values).
    """
    prompt, prompt_mask = batch['prompt'], batch['prompt_mask']
    chex.assert_rank([prompt, prompt_mask], 2)
    g = self.env.num_samples
    rows = jax.tree.map(lambda x: jnp.repeat(x, g, axis=0), batch)
    context = {'tokens': rows['prompt'], 'mask': rows['prompt_mask']}
    recurrent_fn = self.recurrent_fn(params, self.reward_fn, context, rows)
    node = self.root(params, prompt, prompt_mask)
    budget = self.env.max_new_tokens
    b, v = node.state.logits.shape

    def body(node, key):
      def skip(node):  # Every sequence has ended: nothing to search.
        return node, SearchStep(
            token=jnp.full((b,), self.env.pad_id, jnp.int32),
            logp=jnp.zeros((b,), jnp.float32),
            valid=jnp.zeros((b,), jnp.bool_),
            weights=jnp.zeros((b, v), jnp.float32),
            value=jnp.zeros((b,), jnp.float32))

      def go(node):
        step = self.search(params, node, key, recurrent_fn)
        node = recurrent_fn(params, key, step.token, node)[1]
        return node, step

      return jax.lax.cond(jnp.all(node.terminal(budget)), skip, go, node)

    _, steps = jax.lax.scan(body, node, jax.random.split(key, budget))
    steps = jax.tree.map(lambda x: jnp.moveaxis(x, 0, 1), steps)
    context = {**context, 'search_policy': steps.weights,
               'search_value': steps.value}
    return Rollout(context=context, actions=steps.token, logp=steps.logp,
                   mask=steps.valid)

