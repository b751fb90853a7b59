"""Text generation as a token-level MDP.

State: the KV cache, the next-token logits, each sequence's next rotary
position and done flag. Action: the next token. The prompt is prefilled once
(`reset`); with `num_samples = G`, the prefilled cache of each prompt is
repeated G times, so a group shares one prefill. `step` samples a token,
marks sequences that emitted EOS as done (later steps are padding, masked) and
runs one cached decode step. `rollout` is `reset` followed by a `lax.scan` of
`step`; `evaluate` recomputes log-probs (and entropies and values) of a stored
rollout with one teacher-forced forward pass.
"""

import dataclasses
from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from jaxrlgen.core import logprob
from jaxrlgen.core import packing
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core import sampling as sampling_lib
from jaxrlgen.core.types import PolicyOutputs
from jaxrlgen.core.types import Rollout
from jaxrlgen.policies.lm import KVCache
from jaxrlgen.policies.lm import LMPolicy

Params = Any


SAMPLING_METHODS = ('gumbel', 'inverse_cdf')


@dataclasses.dataclass(frozen=True)
class Sampling:
  """How a token is drawn from the logits.

  temperature divides the logits; top_k > 0 keeps the k most likely tokens;
  top_p < 1 keeps the smallest set of most likely tokens whose mass reaches
  top_p (Holtzman et al. 2020); greedy takes the argmax. `method` is how a
  random draw is made, both exact: 'gumbel' (`jax.random.categorical`, V
  random numbers per row) or 'inverse_cdf' (`core.sampling`, one per row;
  cheaper where random bits are expensive, as on CPU).
  """

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  greedy: bool = False
  method: str = 'gumbel'

  def __post_init__(self):
    if self.temperature <= 0:
      raise ValueError(f'sampling.temperature={self.temperature} must be > 0; '
                       'use sampling.greedy=True for argmax decoding.')
    if self.top_k < 0:
      raise ValueError(f'sampling.top_k={self.top_k} must be >= 0 (0: off).')
    if not 0 < self.top_p <= 1:
      raise ValueError(f'sampling.top_p={self.top_p} must be in (0, 1].')
    if self.method not in SAMPLING_METHODS:
      raise ValueError(f'sampling.method={self.method!r}; known: '
                       f'{SAMPLING_METHODS}.')

  @property
  def scoring_temperature(self) -> float:
    """Temperature of the distribution that log-probs are reported under."""
    return 1.0 if self.greedy else self.temperature


def sampling_logprobs(logits: jax.Array, sampling: Sampling) -> jax.Array:
  """Log-probabilities [..., V] of the distribution `sampling` draws from.

  For greedy decoding this is the temperature-1 policy (the argmax of it is
  taken), so that greedy rollouts still carry the policy's log-probs.
  """
  logits = logits.astype(jnp.float32) / sampling.scoring_temperature
  if sampling.greedy:
    return jax.nn.log_softmax(logits)
  neg_inf = jnp.finfo(jnp.float32).min
  if sampling.top_k:
    # Tokens tied with the k-th logit are all kept; k beyond the vocabulary
    # keeps everything.
    k = min(sampling.top_k, logits.shape[-1])
    kth = jax.lax.top_k(logits, k)[0][..., -1:]
    logits = jnp.where(logits < kth, neg_inf, logits)
  if sampling.top_p < 1.0:
    sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
    sorted_probs = jax.nn.softmax(sorted_logits, axis=-1)
    # Mass strictly before each token: the most likely token is always kept.
    mass_before = jnp.cumsum(sorted_probs, axis=-1) - sorted_probs
    kept = mass_before < sampling.top_p
    threshold = jnp.min(jnp.where(kept, sorted_logits, jnp.inf), axis=-1,
                        keepdims=True)
    logits = jnp.where(logits < threshold, neg_inf, logits)
  return jax.nn.log_softmax(logits)


@flax.struct.dataclass
class TextState:
  """The scan carry of text generation.

  Attributes:
    cache: KV cache of prompt and generated tokens, batch B.
    logits: f32[B, V] logits of the next token.
    position: i32[B] rotary position of the next token.
    done: bool[B] whether the sequence has emitted EOS.
    hidden: [B, E] the decoder state the logits were read from (value heads
      and searches read it).
  """

  cache: KVCache
  logits: jax.Array
  position: jax.Array
  done: jax.Array
  hidden: jax.Array


@flax.struct.dataclass
class Transition:
  """One generated token per sequence: token i32[B], logp f32[B], valid bool[B]."""

  token: jax.Array
  logp: jax.Array
  valid: jax.Array



def _kept_tokens(mask: jax.Array, before: jax.Array,
                 valid: jax.Array) -> jax.Array:
  """bool[B, P + T]: the attended stream tokens (`mask`) that the states of
  valid actions read, i.e. none after the last valid action's `before`."""
  needed = jnp.max(jnp.where(valid, before, -1), axis=1)
  return mask & (jnp.arange(mask.shape[1])[None] <= needed[:, None])

@dataclasses.dataclass(frozen=True)
class TextEnv:
  """Static description of the generation environment (hashable).

  Attributes:
    policy: the language model that acts (`policies.LMPolicy`).
    max_new_tokens: T, completion length (sequences that end earlier are
      padded with `pad_id` and masked).
    sampling: how tokens are drawn.
    eos_id: the token that ends a sequence.
    pad_id: the token written after EOS.
    num_samples: G, samples per prompt sharing one prefill.
    suppress_eos: never sample EOS (for fixed-length benchmarks).
    logprob_chunk: time steps per chunk in `evaluate` (bounds the [B, c, V]
      logits that exist at once).
    early_stop: decode in a `lax.while_loop` that ends as soon as every
      sequence has emitted EOS, instead of a scan of all T steps; the rollout
      is the same, generation of short completions is cheaper.
    cache_segments: decode in this many segments, each on a KV cache just
      long enough for its steps (grown between segments), instead of on the
      whole prompt + T cache from the start. Attention reads every slot, so
      this cuts its reads by up to a half for long completions; each segment
      compiles its own loop. 1: one cache of P + T slots. The rollout is
      the same up to float rounding.
    pack_rows: teacher-forced passes (`evaluate`, `hidden_states`) pack the
      B sequences' real tokens into this many rows of P + T slots
      (`core.packing`, attention kept within each sequence), so that their
      cost follows the real tokens rather than B * (P + T); a batch that
      does not fit runs unpacked (both are compiled; `lax.cond` picks one).
      Results equal the unpacked pass's up to float rounding. 0: off.
    logits_fn: optional `(env, params, hidden [N, E]) -> f32[N, V]` giving the
      logits that `reset` / `advance` sample from, for a policy that is not
      the LM's own head (ILQL's advantage-weighted decoding); None: the LM's
      logits. `evaluate` and `action_logits` always read the LM's.
  """

  policy: LMPolicy
  max_new_tokens: int
  sampling: Sampling = Sampling()
  eos_id: int = 258
  pad_id: int = 256
  num_samples: int = 1
  suppress_eos: bool = False
  logprob_chunk: int = 128
  early_stop: bool = False
  cache_segments: int = 1
  pack_rows: int = 0
  logits_fn: Callable[['TextEnv', Params, jax.Array], jax.Array] | None = None

  def __post_init__(self):
    if self.cache_segments < 1:
      raise ValueError(f'cache_segments={self.cache_segments} must be >= 1 '
                       '(1: one cache for the whole rollout).')
    if self.pack_rows < 0:
      raise ValueError(f'pack_rows={self.pack_rows} must be >= 0 (0: no '
                       'packing).')

  def greedy(self) -> 'TextEnv':
    """This environment with argmax decoding and one sample per prompt."""
    return dataclasses.replace(self, sampling=Sampling(greedy=True),
                               num_samples=1)

  def bind(self, frozen) -> 'TextEnv':
    """This environment with its policy's frozen base bound (adapters)."""
    return dataclasses.replace(self, policy=self.policy.bind(frozen))

  def with_value_head(self) -> 'TextEnv':
    """This environment with a value head on its policy: a critic's."""
    return dataclasses.replace(self, policy=self.policy.with_value_head())

  def init_critic(self, params: Params, key: jax.Array) -> Params:
    """A critic's parameters (`with_value_head`): a copy of the policy's
    `params` with a fresh value head."""
    return self.policy.init_critic(params, key)

  def lm_logits(self, params: Params, hidden: jax.Array) -> jax.Array:
    """[..., V] the LM head's logits (the model's dtype) at decoder states
    hidden [..., E], whatever `logits_fn` samples from."""
    return self.policy.logits(params, hidden)

  def value(self, params: Params, hidden: jax.Array) -> jax.Array:
    """f32[...] the value head at decoder states hidden [..., E]."""
    return self.policy.value(params, hidden)

  def _next_logits(self, params: Params, hidden: jax.Array) -> jax.Array:
    """The logits sampled from at decoder states hidden [N, E]."""
    if self.logits_fn is not None:
      return self.logits_fn(self, params, hidden)
    return self.lm_logits(params, hidden)

  def reset(self, params: Params, prompt: jax.Array,
            prompt_mask: jax.Array) -> TextState:
    """Prefills the prompts once and repeats each one's state G times.

    Args:
      params: policy parameters.
      prompt: i32[N, P] left-padded prompt tokens.
      prompt_mask: bool[N, P] true for real prompt tokens.
    Returns:
      The state of N * G sequences, G consecutive rows per prompt.
    """
    return self._prefill(params, prompt, prompt_mask,
                         prompt.shape[1] + self.max_new_tokens)

  def _prefill(self, params: Params, prompt: jax.Array,
               prompt_mask: jax.Array, slots: int) -> TextState:
    """`reset` with a KV cache of `slots` slots."""
    chex.assert_rank([prompt, prompt_mask], 2)
    chex.assert_equal_shape([prompt, prompt_mask])
    n, _ = prompt.shape
    hidden, cache = self.policy.prefill(params, prompt, prompt_mask,
                                        self.policy.init_cache(n, slots))
    logits = self._next_logits(params, hidden)
    g = self.num_samples
    return TextState(
        cache=self.policy.repeat_cache(cache, g),
        logits=jnp.repeat(logits, g, axis=0),
        position=jnp.repeat(jnp.sum(prompt_mask, axis=1, dtype=jnp.int32), g),
        done=jnp.zeros((n * g,), jnp.bool_),
        hidden=jnp.repeat(hidden, g, axis=0))

  def choose(self, state: TextState, key: jax.Array) -> Transition:
    """Samples the next token of every sequence from `state.logits`."""
    logits = state.logits
    if self.suppress_eos:
      logits = logits.at[:, self.eos_id].set(jnp.finfo(jnp.float32).min)
    logps = sampling_logprobs(logits, self.sampling)
    if self.sampling.greedy:
      token = jnp.argmax(logits, axis=-1)
    elif self.sampling.method == 'inverse_cdf':
      token, _ = sampling_lib.sample_categorical(key, logps)
    else:
      token = jax.random.categorical(key, logps, axis=-1)
    token = token.astype(jnp.int32)
    logp = jnp.take_along_axis(logps, token[:, None], axis=-1)[:, 0]
    valid = ~state.done
    return Transition(token=jnp.where(valid, token, self.pad_id),
                      logp=jnp.where(valid, logp, 0.0), valid=valid)

  def advance(self, params: Params, state: TextState,
              transition: Transition) -> TextState:
    """Feeds the chosen tokens through one cached decode step."""
    hidden, cache = self.policy.decode(params, transition.token,
                                       state.position, state.cache)
    logits = self._next_logits(params, hidden)
    done = state.done | (transition.token == self.eos_id)
    return TextState(cache=cache, logits=logits, position=state.position + 1,
                     done=done, hidden=hidden)

  def step(self, params: Params, state: TextState,
           key: jax.Array) -> tuple[TextState, Transition]:
    transition = self.choose(state, key)
    return self.advance(params, state, transition), transition

  def rollout(self, params: Params, batch, key: jax.Array) -> Rollout:
    """Generates G completions of each of N prompts.

    Args:
      params: policy parameters.
      batch: per-prompt data with `prompt` i32[N, P] (left-padded) and
        `prompt_mask` bool[N, P]; other fields are not read.
      key: PRNG key.
    Returns:
      A Rollout of B = N * G sequences and T = max_new_tokens steps, with
      `context = {'tokens': i32[B, P], 'mask': bool[B, P]}` and `actions`
      i32[B, T].
    """
    prompt, prompt_mask = batch['prompt'], batch['prompt_mask']
    last_key, scan_key = jax.random.split(key)
    # The last token needs no decode step after it: T - 1 full steps, then a
    # final choice.
    num_steps = self.max_new_tokens - 1
    segments = min(self.cache_segments, num_steps)
    p = prompt.shape[1]
    if segments > 1:
      # Decode step t writes slot p + t, so steps before `end` need p + end.
      state = self._prefill(params, prompt, prompt_mask, p)
    else:
      state = self.reset(params, prompt, prompt_mask)
    step = lambda s, k: self.step(params, s, k)
    stop = fill = None
    if self.early_stop:
      b = state.done.shape[0]
      stop = lambda s: jnp.all(s.done)
      fill = Transition(token=jnp.full((b,), self.pad_id, jnp.int32),
                        logp=jnp.zeros((b,), jnp.float32),
                        valid=jnp.zeros((b,), jnp.bool_))
    if segments > 1:
      bounds = [round(j * num_steps / segments) for j in range(segments + 1)]
      grow = lambda s, end: s.replace(
          cache=self.policy.grow_cache(s.cache, p + end))
      state, transitions = rollout_lib.unroll_segments(
          step, state, scan_key, num_steps, bounds=bounds, grow=grow,
          stop=stop, fill=fill)
    elif self.early_stop:
      state, transitions = rollout_lib.unroll_until(
          step, state, scan_key, num_steps, stop=stop, fill=fill)
    else:
      state, transitions = rollout_lib.unroll(step, state, scan_key,
                                              num_steps)
    last = self.choose(state, last_key)
    cat = lambda a, b: jnp.concatenate([a, b[:, None]], axis=1)
    transitions = jax.tree.map(cat, transitions, last)
    g = self.num_samples
    context = {'tokens': jnp.repeat(prompt, g, axis=0),
               'mask': jnp.repeat(prompt_mask, g, axis=0)}
    return Rollout(context=context, actions=transitions.token,
                   logp=transitions.logp, mask=transitions.valid)

  def stream(self, rollout: Rollout
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """What a teacher-forced pass over a stored rollout reads.

    Returns:
      tokens i32[B, P + T]: prompt then actions; mask bool[B, P + T]: the
      tokens the cached rollout attended to (completion tokens after EOS
      are padding the decoder also attended to: marking them real keeps
      the pass identical to the cached one); before i32[B, T]: the column
      whose decoder state action t was sampled from (the last prompt
      column for t = 0).
    """
    prompt, prompt_mask = rollout.context['tokens'], rollout.context['mask']
    actions = rollout.actions
    chex.assert_rank([prompt, actions], 2)
    p, t = prompt.shape[1], actions.shape[1]
    tokens = jnp.concatenate([prompt, actions], axis=1)
    mask = jnp.concatenate([prompt_mask, jnp.ones_like(actions, jnp.bool_)],
                           axis=1)
    before = jnp.broadcast_to(p - 1 + jnp.arange(t, dtype=jnp.int32),
                              actions.shape)
    return tokens, mask, before

  def hidden_states(self, params: Params, rollout: Rollout) -> jax.Array:
    """f32[B, T, E]: the decoder state before each action of a stored rollout.

    Row t is what predicted action t, from one teacher-forced pass
    identical to cached decoding (`stream`; packed with `pack_rows`).
    Heads other than the LM's (values, Q-values, ILQL's) read these; masked
    steps hold garbage.
    """
    if self.pack_rows:
      return self._packed(params, rollout, lambda hidden, _: hidden)
    tokens, mask, before = self.stream(rollout)
    hidden = self.policy.hidden_states(params, tokens, mask)
    return jnp.take_along_axis(hidden, before[..., None], axis=1)

  def packed_tokens(self, rollout: Rollout
                    ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(tokens, real, before): the `stream`, with `real` bool[B, P + T]
    narrowed to the tokens a packed pass keeps: the attended ones that the
    states of valid actions read (nothing after the last of them)."""
    tokens, mask, before = self.stream(rollout)
    return tokens, _kept_tokens(mask, before, rollout.mask), before

  def _packed(self, params: Params, rollout: Rollout, heads):
    """`heads(hidden, targets)` read off a packed pass, as [B, T] arrays.

    The rollout's sequences are packed (`core.packing`) down to the tokens
    that the states of valid actions depend on; `heads` maps the packed
    states f32[R, S, E] and the actions they predict, i32[R, S] (0
    elsewhere), to a pytree of [R, S, ...] arrays, which is gathered back
    to each action's step. If the sequences do not fit in `pack_rows` rows,
    the same heads run on the unpacked pass instead.
    """
    tokens, mask, before = self.stream(rollout)
    valid = rollout.mask
    real = _kept_tokens(mask, before, valid)  # As `packed_tokens`.
    layout = packing.pack(tokens, real, self.pack_rows, tokens.shape[1])
    # Distinct for valid actions: each is a real token after the one before.
    slot = jnp.where(valid, jnp.take_along_axis(layout.slot, before, axis=1),
                     layout.num_slots)

    def packed(params):
      hidden = self.policy.packed_hidden_states(
          params, layout.tokens, layout.positions, layout.segment_ids)
      targets = packing.scatter_rows(layout, slot, rollout.actions)
      return jax.tree.map(lambda x: packing.gather_rows(x, slot),
                          heads(hidden, targets))

    def unpacked(params):
      hidden = jnp.take_along_axis(
          self.policy.hidden_states(params, tokens, mask), before[..., None],
          axis=1)
      return heads(hidden, rollout.actions)

    # Under a gradient, a cond's forward returns the residuals of both
    # branches (zeros for the one not taken): rematerialising the fallback
    # keeps its residuals down to its inputs (W's model at 64 new tokens,
    # loss forward + backward against unpacked: 1.7x faster without it,
    # 2.6x with it, 2.7x with no fallback at all).
    return jax.lax.cond(layout.fits, packed, jax.checkpoint(unpacked), params)

  def action_logits(self, params: Params, rollout: Rollout) -> jax.Array:
    """f32[B, T, V]: the LM's logits over every action at every step.

    Value-based algorithms read them as Q-values over the vocabulary. This
    materialises [B, T, V]: meant for the small vocabularies such
    algorithms are trained with, not for 100k-token models.
    """
    hidden = self.hidden_states(params, rollout)
    return self.lm_logits(params, hidden).astype(jnp.float32)

  def evaluate(self, params: Params, rollout: Rollout, *,
               with_values: bool = False) -> PolicyOutputs:
    """Teacher-forced log-probs, entropies (and values) of a stored rollout.

    One forward pass over prompt + completion; log-probs are under the
    temperature-scaled policy (top-k / top-p truncation is a sampling device,
    not part of the policy being trained) and computed in time chunks.
    Returns PolicyOutputs with [B, T] fields; masked steps hold garbage.
    """
    if self.pack_rows:
      return self._packed(params, rollout, lambda hidden, targets: (
          self.evaluate_hidden(params, hidden, targets,
                               with_values=with_values)))
    return self.evaluate_hidden(params, self.hidden_states(params, rollout),
                                rollout.actions, with_values=with_values)

  def evaluate_hidden(self, params: Params, hidden: jax.Array,
                      actions: jax.Array, *,
                      with_values: bool = False) -> PolicyOutputs:
    """`evaluate` from the decoder states `hidden_states` gave: f32[B, T, E],
    for an algorithm that also reads its own heads off them (ILQL)."""
    logp, entropy = logprob.chunked_token_logprobs(
        lambda h: self.lm_logits(params, h), hidden, actions,
        temperature=self.sampling.scoring_temperature,
        chunk_size=self.logprob_chunk)
    values = self.value(params, hidden) if with_values else None
    return PolicyOutputs(logp=logp, entropy=entropy, values=values)
