"""Multi-turn episodes: the model and an environment take turns in one
token stream.

An episode is: prompt, model turn 1, observation 1, model turn 2, ...,
model turn K. A model turn is decoded (a `lax.scan` of cached decode steps)
until it samples EOS (the episode ends), a stop sequence (a tool call's
close tag, an end-of-turn token: the turn ends) or its budget of M tokens.
The environment (a `Responder`) then reads each row's turn and answers with
up to O observation tokens (a tool's output, a scripted user's reply, a
game's state), whether the episode is over, a reward for the turn and
whether something failed. The observation is appended to the same KV cache
in one pass; the next model turn continues from it.

Static shapes: the stream has a fixed layout of T = K M + (K - 1) O slots,

  [turn 1: M][observation 1: O][turn 2: M] ... [turn K: M],

and a row that stops a turn early waits in padding slots until the block
ends. Padding slots are written to the cache but masked (never attended to,
their positions not counted, as left padding of a prompt), and observations
are right-aligned in their block. So what the model sees is exactly prompt,
turn, observation, turn, ... with no gaps: the rollout is token-exact.

The Rollout holds the whole stream: `actions` i32[B, T] (model tokens,
observation tokens and padding), `logp`, and `mask` true only for the
tokens the model sampled, the loss mask: observation tokens and the
environment's control tokens are context, never trained on.
`context['attend']` bool[B, T] says which slots are real tokens (model or
observation); `hidden_states` teacher-forces the stream under it, reading the
decoder state before each action at the last real slot before it, the
state the rollout sampled from. Every algorithm that works on single-turn
text reads a multi-turn rollout through `evaluate` unchanged.

Per-turn rewards: `context['turn_rewards']` f32[B, K] (0 for turns that did
not happen), read by the `turn_rewards` reward term (discounted over turns,
added to the episode's reward). Or, with `place_turn_rewards`, placed in
the stream at each turn's last model token (`context['step_rewards']`,
`core.rollout.STEP_REWARDS`): they count toward every algorithm's return,
and those with per-token returns and a critic (PPO, A2C, IMPALA) credit
each at the token where it was earned, discounted by their own gamma.
`context['stats']` holds per-row counts (`turns`, `observation_tokens`,
`failures`, `truncated`) that the step logs as `env/...`.

Stitching: one jitted program. A responder written in JAX (a game) runs
inside it; a Python one (tools, a scripted user) runs on the host through
one `jax.pure_callback` per turn boundary for the whole batch
(`HostResponder`), the way host rewards do.
"""

import dataclasses
from typing import Any, Callable, ClassVar, NamedTuple, Protocol, Sequence

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen import schema
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.envs.text import TextState

Params = Any


@dataclasses.dataclass(frozen=True)
class Turns:
  """The budgets of an episode.

  Attributes:
    max_turns: K, model turns at most.
    turn_tokens: M, tokens per model turn at most.
    observation_tokens: O, tokens per observation at most (longer ones are
      cut to their first O tokens and counted in `stats['truncated']`).
    stop_sequences: token sequences that end a model turn (kept in it: the
      model chose them); EOS ends the whole episode.
  """

  max_turns: int = 2
  turn_tokens: int = 16
  observation_tokens: int = 16
  stop_sequences: tuple[tuple[int, ...], ...] = ()

  def __post_init__(self):
    for name in ('max_turns', 'turn_tokens', 'observation_tokens'):
      value = getattr(self, name)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f'turns.{name}={value!r} must be a positive int.')
    for seq in self.stop_sequences:
      if not seq or not all(isinstance(t, int) and t >= 0 for t in seq):
        raise ValueError(f'turns.stop_sequences holds {seq!r}: each must be '
                         'a non-empty tuple of token ids.')

  @property
  def length(self) -> int:
    """T: slots of the whole stream after the prompt."""
    return (self.max_turns * self.turn_tokens
            + (self.max_turns - 1) * self.observation_tokens)


@flax.struct.dataclass
class Response:
  """The environment's answer to one model turn, for every row.

  Attributes:
    tokens: i32[B, O] observation tokens, right-aligned (padding first).
    mask: bool[B, O] the real ones.
    done: bool[B] the episode ends here (no further model turn).
    reward: f32[B] the turn's reward.
    failed: bool[B] the environment failed on this row (a tool that raised,
      hung or answered too much); the episode goes on.
    truncated: bool[B] the observation was longer than O tokens and cut.
  """

  tokens: jax.Array
  mask: jax.Array
  done: jax.Array
  reward: jax.Array
  failed: jax.Array
  truncated: jax.Array


class Responder(Protocol):
  """The environment side of an episode (hashable: a static argument).

  `init(batch) -> state`: per-row state (leading axis B) from the batch's
  per-sequence fields (already repeated G times). `respond(state, turn,
  tokens, mask) -> (state, Response)`: turn is the model turn just ended
  (i32[], 0-based), tokens i32[B, M] and mask bool[B, M] what the model
  wrote in it (rows whose episode was over before it write nothing).
  """

  def init(self, batch) -> Any:
    ...

  def respond(self, state, turn: jax.Array, tokens: jax.Array,
              mask: jax.Array) -> tuple[Any, Response]:
    ...


class StreamSlots(NamedTuple):
  """One block of the stream: tokens, logp, loss mask, attended slots."""

  token: jax.Array
  logp: jax.Array
  valid: jax.Array
  attend: jax.Array


@flax.struct.dataclass
class _Carry:
  """The scan carry of a model turn."""

  text: TextState
  over: jax.Array  # bool[B]: the row's turn has ended.
  window: jax.Array  # i32[B, L]: the turn's last L tokens (-1 before).


def right_align(tokens: np.ndarray, lengths: np.ndarray, width: int,
                pad_id: int) -> tuple[np.ndarray, np.ndarray]:
  """Host helper: rows of `tokens` (each `lengths[i]` long, left-packed)
  placed at the right of a [B, width] array. Returns (tokens, mask)."""
  b = tokens.shape[0]
  out = np.full((b, width), pad_id, np.int32)
  mask = np.zeros((b, width), bool)
  for i in range(b):
    n = int(lengths[i])
    if n:
      out[i, width - n:] = tokens[i, :n]
      mask[i, width - n:] = True
  return out, mask


@dataclasses.dataclass(frozen=True)
class MultiTurnEnv(TextEnv):
  """A `TextEnv` whose episodes alternate model turns and observations.

  Build it with `MultiTurnEnv.wrap(text_env, turns, responder)`; its
  `max_new_tokens` is the stream's length T. Sampling, EOS, padding, G
  samples per prompt and the policy are the wrapped environment's.
  `early_stop`, `cache_segments` and `logits_fn` are not supported.
  """

  turns: Turns = Turns()
  responder: Responder | None = None
  # Turn rewards also in the stream, at each turn's last model token
  # (`context['step_rewards']`); then do not add the `turn_rewards` term.
  place_turn_rewards: bool = False

  def __post_init__(self):
    super().__post_init__()
    if self.responder is None:
      raise ValueError('MultiTurnEnv needs a responder (the environment side '
                       'of the episode); build it with MultiTurnEnv.wrap.')
    if self.max_new_tokens != self.turns.length:
      raise ValueError(
          f'MultiTurnEnv.max_new_tokens={self.max_new_tokens} must be the '
          f'stream length {self.turns.length} (turns.max_turns x '
          'turn_tokens + (max_turns - 1) x observation_tokens); build it '
          'with MultiTurnEnv.wrap.')
    unsupported = [name for name, off in (
        ('early_stop', False), ('cache_segments', 1), ('logits_fn', None))
                   if getattr(self, name) != off]
    if unsupported:
      raise ValueError(f'MultiTurnEnv does not support {unsupported}: leave '
                       'them at their defaults.')
    window = getattr(self.policy.config, 'sliding_window', None)
    if window:
      raise ValueError(
          'MultiTurnEnv needs a model with global attention: its padding '
          'slots would count against a sliding window of '
          f'{window} tokens.')

  @classmethod
  def wrap(cls, env: TextEnv, turns: Turns, responder: Responder,
           place_turn_rewards: bool = False) -> 'MultiTurnEnv':
    fields = {f.name: getattr(env, f.name) for f in dataclasses.fields(
        TextEnv)}
    fields['max_new_tokens'] = turns.length
    return cls(**fields, turns=turns, responder=responder,
               place_turn_rewards=place_turn_rewards)

  # -- Generation ----------------------------------------------------------

  def _stop_table(self) -> tuple[np.ndarray, np.ndarray]:
    """(seqs i32[S, L], wild bool[S, L]): stop sequences right-aligned in
    a window of L = the longest; `wild` marks the slots any token fits."""
    seqs = self.turns.stop_sequences
    width = max((len(s) for s in seqs), default=1)
    table = np.zeros((max(len(seqs), 1), width), np.int32)
    wild = np.ones((max(len(seqs), 1), width), bool)
    for i, seq in enumerate(seqs):
      table[i, width - len(seq):] = seq
      wild[i, width - len(seq):] = False
    return table, wild

  def _model_turn(self, params: Params, text: TextState, key: jax.Array
                  ) -> tuple[TextState, StreamSlots]:
    """One model turn of M decode steps for every row still playing."""
    table, wild = self._stop_table()
    has_stops = bool(self.turns.stop_sequences)
    b = text.done.shape[0]

    def step(carry: _Carry, step_key):
      state = carry.text
      active = ~state.done & ~carry.over
      choice = self.choose(state.replace(done=~active), step_key)
      hidden, cache = self.policy.decode(params, choice.token, state.position,
                                         state.cache, mask=active)
      logits = self.lm_logits(params, hidden)
      keep = active[:, None]
      window = jnp.where(
          keep, jnp.concatenate([carry.window[:, 1:], choice.token[:, None]],
                                axis=1), carry.window)
      stopped = jnp.zeros((b,), jnp.bool_)
      if has_stops:
        hits = wild[None] | (window[:, None, :] == table[None])
        stopped = jnp.any(jnp.all(hits, axis=-1), axis=-1)
      text_next = TextState(
          cache=cache, logits=jnp.where(keep, logits, state.logits),
          position=state.position + active.astype(jnp.int32),
          done=state.done | (active & (choice.token == self.eos_id)),
          hidden=jnp.where(keep, hidden, state.hidden))
      over = carry.over | (active & stopped)
      slots = StreamSlots(token=choice.token, logp=choice.logp, valid=active,
                          attend=active)
      return _Carry(text=text_next, over=over, window=window), slots

    carry = _Carry(text=text, over=jnp.zeros((b,), jnp.bool_),
                   window=jnp.full((b, table.shape[1]), -1, jnp.int32))
    carry, slots = rollout_lib.unroll(step, carry, key,
                                      self.turns.turn_tokens)
    return carry.text, slots

  def _observe(self, params: Params, text: TextState, response: Response
               ) -> tuple[TextState, StreamSlots]:
    """Appends each row's observation to its stream in one pass."""
    # Rows whose episode is over (EOS, or the responder ended it) see none.
    mask = response.mask & ~(text.done | response.done)[:, None]
    tokens = jnp.where(mask, response.tokens, self.pad_id)
    positions = text.position[:, None] + jnp.cumsum(mask, axis=1) - 1
    hidden, cache = self.policy.extend(params, tokens, positions, mask,
                                       text.cache)
    # Right-aligned: the last slot is the last observation token, if any.
    seen = mask[:, -1:]
    last = hidden[:, -1]
    text = TextState(
        cache=cache,
        logits=jnp.where(seen, self.lm_logits(params, last), text.logits),
        position=text.position + jnp.sum(mask, axis=1, dtype=jnp.int32),
        done=text.done | response.done, hidden=jnp.where(seen, last,
                                                         text.hidden))
    zeros = jnp.zeros(mask.shape, jnp.float32)
    return text, StreamSlots(token=tokens, logp=zeros,
                             valid=jnp.zeros_like(mask), attend=mask)

  def rollout(self, params: Params, batch, key: jax.Array) -> Rollout:
    """G multi-turn episodes of each of N prompts.

    Args:
      params: policy parameters.
      batch: per-prompt data with `prompt` i32[N, P] (left-padded),
        `prompt_mask` bool[N, P] and whatever the responder reads.
      key: PRNG key.
    Returns:
      A Rollout of B = N G episodes and T = `turns.length` slots (see the
      module docstring), with `context` = {'tokens', 'mask'} (the prompt),
      'attend' bool[B, T], 'turn_rewards' f32[B, K], 'stats' and, with
      `place_turn_rewards`, 'step_rewards' f32[B, T].
    """
    prompt, prompt_mask = batch['prompt'], batch['prompt_mask']
    g, k_turns = self.num_samples, self.turns.max_turns
    text = self.reset(params, prompt, prompt_mask)
    b = text.done.shape[0]
    responder_state = self.responder.init(rollout_lib.repeat_batch(batch, g))
    keys = jax.random.split(key, k_turns)
    zeros_b = jnp.zeros((b,), jnp.float32)
    stats0 = {name: zeros_b for name in STATS}

    def turn(carry, inputs):
      text, responder_state, stats = carry
      index, turn_key = inputs
      playing = ~text.done
      text, spoken = self._model_turn(params, text, turn_key)
      responder_state, response = self.responder.respond(
          responder_state, index, spoken.token, spoken.valid)
      reward = jnp.where(playing, response.reward.astype(jnp.float32), 0.0)
      text, heard = self._observe(params, text, response)
      stats = {
          'turns': stats['turns'] + playing,
          'observation_tokens': stats['observation_tokens'] + jnp.sum(
              heard.attend, axis=1),
          'failures': stats['failures'] + (playing & response.failed),
          'truncated': stats['truncated'] + (playing & response.truncated)}
      block = jax.tree.map(lambda a, c: jnp.concatenate([a, c], axis=1),
                           spoken, heard)
      return (text, responder_state, stats), (block, reward)

    carry = (text, responder_state, stats0)
    blocks = None
    turn_rewards = jnp.zeros((b, 0), jnp.float32)
    if k_turns > 1:  # Turns with an observation after them, then the last.
      carry, (blocks, turn_rewards) = jax.lax.scan(
          turn, carry, (jnp.arange(k_turns - 1), keys[:-1]))
      # [K - 1, B, M + O] -> [B, (K - 1)(M + O)].
      blocks = jax.tree.map(
          lambda x: jnp.moveaxis(x, 0, 1).reshape(b, -1), blocks)
      turn_rewards = turn_rewards.T
    text, responder_state, stats = carry
    playing = ~text.done
    text, spoken = self._model_turn(params, text, keys[-1])
    _, response = self.responder.respond(
        responder_state, jnp.asarray(k_turns - 1), spoken.token, spoken.valid)
    last_reward = jnp.where(playing, response.reward.astype(jnp.float32), 0.0)
    stats = {**stats, 'turns': stats['turns'] + playing,
             'failures': stats['failures'] + (playing & response.failed)}
    stream = spoken if blocks is None else jax.tree.map(
        lambda a, c: jnp.concatenate([a, c], axis=1), blocks, spoken)
    context = {
        'tokens': jnp.repeat(prompt, g, axis=0),
        'mask': jnp.repeat(prompt_mask, g, axis=0),
        'attend': stream.attend,
        'turn_rewards': jnp.concatenate([turn_rewards, last_reward[:, None]],
                                        axis=1),
        'stats': stats}
    if self.place_turn_rewards:
      context[rollout_lib.STEP_REWARDS] = place_turn_rewards(
          stream.valid, context['turn_rewards'], self.turns)
    return Rollout(context=context, actions=stream.token, logp=stream.logp,
                   mask=stream.valid)

  # -- Teacher forcing -----------------------------------------------------

  def stream(self, rollout: Rollout
             ) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The stream under the teacher-forced pass (`TextEnv.stream`): the
    prompt then the turns' slots, real where the cached rollout attended
    (prompt, model and observation tokens; padding slots masked), and for
    each action the last real column before it: the state it was sampled
    from."""
    prompt, prompt_mask = rollout.context['tokens'], rollout.context['mask']
    p = prompt.shape[1]
    tokens = jnp.concatenate([prompt, rollout.actions], axis=1)
    mask = jnp.concatenate([prompt_mask, rollout.context['attend']], axis=1)
    columns = jnp.arange(tokens.shape[1])
    last_real = jax.lax.cummax(jnp.where(mask, columns, -1), axis=1)
    return tokens, mask, jnp.maximum(last_real[:, p - 1:-1], 0)


def context_spec(batch_size: int, turns: Turns,
                 place_turn_rewards: bool = False) -> dict:
  """The shapes of the context fields a multi-turn rollout adds (those of
  the prompt aside), as jax.ShapeDtypeStructs."""
  spec = jax.ShapeDtypeStruct
  per_row = spec((batch_size,), jnp.float32)
  out = {'attend': spec((batch_size, turns.length), jnp.bool_),
         'turn_rewards': spec((batch_size, turns.max_turns), jnp.float32),
         'stats': {name: per_row for name in STATS}}
  if place_turn_rewards:
    out[rollout_lib.STEP_REWARDS] = spec((batch_size, turns.length),
                                         jnp.float32)
  return out


def place_turn_rewards(mask: jax.Array, turn_rewards: jax.Array,
                       turns: Turns) -> jax.Array:
  """f32[B, T]: each turn's reward at that turn's last model token, 0 elsewhere.

  Args:
    mask: bool[B, T] the stream's model tokens (`Rollout.mask`).
    turn_rewards: f32[B, K] (0 for turns that did not happen).
    turns: the stream's layout.
  """
  m, o, k = turns.turn_tokens, turns.observation_tokens, turns.max_turns
  slots = jnp.arange(turns.length)
  turn_of = slots // (m + o)
  in_turn = (turn_of[None, :] == jnp.arange(k)[:, None]) & (
      slots % (m + o) < m)[None, :]  # [K, T]: the model slots of turn k.
  spoken = mask[:, None, :] & in_turn[None]  # [B, K, T]
  last = jnp.max(jnp.where(spoken, slots, -1), axis=2)  # [B, K]
  at = slots[None, None, :] == last[:, :, None]  # [B, K, T]
  return jnp.sum(jnp.where(at, turn_rewards[:, :, None], 0.0), axis=1)


STATS = ('turns', 'observation_tokens', 'failures', 'truncated')


def turn_return(rollout: Rollout, discount: float = 1.0) -> jax.Array:
  """f32[B]: sum over turns k of discount^k x the turn's reward
  (`context['turn_rewards']`)."""
  rewards = rollout.context['turn_rewards']
  weights = discount ** jnp.arange(rewards.shape[1], dtype=jnp.float32)
  return jnp.sum(rewards * weights, axis=1)


# -- Host responders -------------------------------------------------------


class Reply(NamedTuple):
  """A host responder's answer for one row."""

  observation: str = ''
  done: bool = False
  reward: float = 0.0
  failed: bool = False


HostFn = Callable[..., Sequence[Reply]]


@dataclasses.dataclass(frozen=True, eq=False)
class HostResponder:
  """A responder in Python: `fn(turn, texts) -> replies`, one `Reply` per
  row, for the decoded text of every row's turn (rows whose episode is over
  get '' and their reply is ignored). Runs on the host through one
  `jax.pure_callback` per turn for the whole batch; observations are
  encoded with `tokenizer` (no BOS or EOS) and cut to `observation_tokens`.
  Hashed by identity (a static argument of the jitted step).

  `fields` names per-sequence batch fields (a scripted user's facts, a
  task's answer) that `fn` also gets, as `fn(turn, texts, rows)` with
  `rows[i]` a dict of row i's values as NumPy arrays (scalars for [B]
  fields).
  """

  fn: HostFn
  tokenizer: Any
  observation_tokens: int
  pad_id: int
  fields: tuple[str, ...] = ()

  def init(self, batch):
    missing = [f for f in self.fields if f not in batch]
    if missing:
      raise ValueError(
          f'HostResponder(fields={self.fields}): the batch has no field '
          f'{missing}; its fields: {sorted(batch)}.')
    return {f: batch[f] for f in self.fields}

  def _host(self, turn, tokens, mask, state):
    tokens, mask = np.asarray(tokens), np.asarray(mask, bool)
    b, o = tokens.shape[0], self.observation_tokens
    texts = [self.tokenizer.decode(tokens[i][mask[i]], stop_at_eos=False)
             if mask[i].any() else '' for i in range(b)]
    if self.fields:
      values = {f: np.asarray(v) for f, v in state.items()}
      rows = [{f: v[i] for f, v in values.items()} for i in range(b)]
      replies = list(self.fn(int(turn), texts, rows))
    else:
      replies = list(self.fn(int(turn), texts))
    if len(replies) != b:
      raise ValueError(f'The responder {self.fn!r} returned {len(replies)} '
                       f'replies for {b} rows.')
    encoded = np.full((b, o), self.pad_id, np.int32)
    lengths = np.zeros((b,), np.int32)
    truncated = np.zeros((b,), bool)
    for i, reply in enumerate(replies):
      if not mask[i].any() or reply.done or not reply.observation:
        continue
      ids = np.asarray(self.tokenizer.encode(reply.observation,
                                             add_eos=False), np.int32)
      truncated[i] = len(ids) > o
      ids = ids[:o]
      encoded[i, :len(ids)] = ids
      lengths[i] = len(ids)
    aligned, obs_mask = right_align(encoded, lengths, o, self.pad_id)
    as_array = lambda attr, dtype: np.asarray(
        [getattr(r, attr) for r in replies], dtype)
    return (aligned, obs_mask, as_array('done', bool),
            as_array('reward', np.float32), as_array('failed', bool),
            truncated)

  def respond(self, state, turn, tokens, mask):
    b, o = tokens.shape[0], self.observation_tokens
    shapes = (jax.ShapeDtypeStruct((b, o), jnp.int32),
              jax.ShapeDtypeStruct((b, o), jnp.bool_),
              jax.ShapeDtypeStruct((b,), jnp.bool_),
              jax.ShapeDtypeStruct((b,), jnp.float32),
              jax.ShapeDtypeStruct((b,), jnp.bool_),
              jax.ShapeDtypeStruct((b,), jnp.bool_))
    out = jax.pure_callback(self._host, shapes, turn, tokens, mask, state,
                            vmap_method='sequential')
    return state, Response(*out)


def answer(rollout: Rollout, turns: Turns) -> Rollout:
  """The rollout cut to each episode's last model turn, packed to the front
  ([B, M], a prefix mask): what a reward of the final answer reads (an
  exact-match or a unit-test reward), with the context kept (the prompt,
  `turn_rewards`)."""
  m, o, k = turns.turn_tokens, turns.observation_tokens, turns.max_turns
  starts = np.arange(k) * (m + o)
  spoke = jnp.stack([jnp.any(rollout.mask[:, s:s + m], axis=1)
                     for s in starts], axis=1)  # [B, K]
  last = jnp.max(jnp.where(spoke, jnp.arange(k), 0), axis=1)
  columns = jnp.asarray(starts)[last][:, None] + jnp.arange(m)[None]
  take = lambda x: jnp.take_along_axis(x, columns, axis=1)
  return Rollout(context=rollout.context, actions=take(rollout.actions),
                 logp=take(rollout.logp), mask=take(rollout.mask))


def on_answer(reward_fn, turns: Turns):
  """`reward_fn` scored on each episode's last model turn (`answer`); the
  terms that read the context (`turn_rewards`) see it whole. Keeps a host
  reward's `with_failures`."""
  def scored(rollout, batch):
    return reward_fn(answer(rollout, turns), batch)
  if hasattr(reward_fn, 'with_failures'):
    scored.with_failures = lambda rollout, batch: reward_fn.with_failures(
        answer(rollout, turns), batch)
  scored.__name__ = getattr(reward_fn, '__name__', 'reward')
  return scored


# -- The recipe's section --------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MultiTurnConfig:
  """`config.multiturn`: multi-turn episodes in the generic recipe.

  max_turns = 0 keeps single-turn generation. Otherwise the stream has
  max_turns x turn_tokens + (max_turns - 1) x observation_tokens slots, which
  `config.rl.max_new_tokens` must equal. A model turn also ends at any of
  `stop_strings` (encoded with the tokenizer) and, with responder='tools',
  at the tools' close tags (a responder given by import path gets only
  `stop_strings`: list its call's close tag there).
  `responder` is 'tools' (`config.tools`: the model calls tools; a turn
  without a call is its answer and ends the episode) or an import path of a
  factory `(turns, tokenizer, pad_id) -> Responder`. Rewards of the task
  score the last model turn (`answer`); the `turn_rewards` term adds the
  responder's per-turn rewards, discounted by `config.reward.turn_discount`.
  Or `place_turn_rewards` puts each turn's reward at the turn's last token
  (`MultiTurnEnv.place_turn_rewards`): the return counts it, and PPO, A2C
  and IMPALA credit it there, under their own gamma.
  """

  SPECIAL: ClassVar[schema.Special] = {
      'max_turns': schema.Means(zero='single-turn generation')}

  max_turns: int = 0
  turn_tokens: int = 64
  observation_tokens: int = 64
  stop_strings: tuple[str, ...] = ()
  responder: str = 'tools'
  # Turn rewards at each turn's last token (not with the turn_rewards term).
  place_turn_rewards: bool = False

  def __post_init__(self):
    schema.non_negative(self, 'max_turns')
    schema.positive(self, 'turn_tokens', 'observation_tokens')

  @property
  def enabled(self) -> bool:
    return self.max_turns > 0


def tool_replies(toolset, last_turn: int) -> HostFn:
  """The host function of a tool-calling episode: a turn with a tool call
  gets the tool's observation (errors, timeouts and cut outputs are
  observations too, and count as failures); a turn without one is the
  answer and ends the episode. On the last turn nothing runs."""
  def replies(turn: int, texts: Sequence[str]) -> list[Reply]:
    if turn >= last_turn:
      return [Reply(done=True) for _ in texts]
    results = toolset.run_calls([text if text else None for text in texts])
    out = []
    for result in results:
      if result is None or result.status == 'no_call':
        out.append(Reply(done=True))
      else:
        out.append(Reply(observation=result.observation,
                         failed=result.failed))
    return out
  return replies


def stop_sequences(strings: Sequence[str], tokenizer) -> tuple[
    tuple[int, ...], ...]:
  """Token sequences of `strings` (as the tokenizer writes them alone)."""
  seqs = []
  for text in strings:
    ids = tuple(int(i) for i in tokenizer.encode(text, add_eos=False))
    if not ids:
      raise ValueError(f'config.multiturn.stop_strings holds {text!r}, '
                       'which encodes to no tokens.')
    if ids not in seqs:
      seqs.append(ids)
  return tuple(seqs)
