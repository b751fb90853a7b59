"""What stitching turns costs: multi-turn rollouts, four ways.

  python -m experiments.benchmarks.multiturn [--json]

Workload W's model and batch (64 sequences), episodes of K = 4 model turns
of 16 tokens and 3 observations of 16 tokens (T = 112 slots; EOS
suppressed, no stop sequences, so every episode does the same work). The
environment answers every turn with the same 16 tokens. Seconds per rollout
of:

  jax       `MultiTurnEnv`, the responder in JAX: one program, no host.
  callback  `MultiTurnEnv` with a `HostResponder`: one program, one
            `jax.pure_callback` per turn boundary (the library's way for
            tools and scripted users).
  segments  each model turn and each observation a jitted program of its
            own, the responder in Python between them (the other way a
            library can stitch turns).
  single    one single-turn rollout of 112 sampled tokens, for scale.
"""

import dataclasses
import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
from jaxrlgen.envs import multiturn

_JSON = flags.DEFINE_bool('json', False, 'Print one JSON line at the end.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed rollouts per way.')

TURNS = multiturn.Turns(max_turns=4, turn_tokens=16, observation_tokens=16)
SAID = np.arange(3, 3 + TURNS.observation_tokens, dtype=np.int32)


@dataclasses.dataclass(frozen=True)
class Fixed:
  """Answers every turn with `SAID`; the episode ends after the last."""

  def init(self, batch):
    del batch
    return ()

  def respond(self, state, turn, tokens, mask):
    b, o = tokens.shape[0], TURNS.observation_tokens
    false = jnp.zeros((b,), jnp.bool_)
    return state, multiturn.Response(
        tokens=jnp.broadcast_to(jnp.asarray(SAID), (b, o)),
        mask=jnp.ones((b, o), jnp.bool_),
        done=jnp.broadcast_to(turn >= TURNS.max_turns - 1, (b,)),
        reward=jnp.zeros((b,), jnp.float32), failed=false, truncated=false)


class _Ids:
  """A tokenizer of space-separated ids (the host responder's text)."""

  def decode(self, ids, stop_at_eos=False):
    del stop_at_eos
    return ' '.join(str(int(i)) for i in ids)

  def encode(self, text, add_eos=False):
    del add_eos
    return [int(t) for t in text.split()]


def _host_fixed(turn, texts):
  text = ' '.join(str(int(i)) for i in SAID)
  return [multiturn.Reply(observation=text,
                          done=turn >= TURNS.max_turns - 1) for _ in texts]


def _segments(env: multiturn.MultiTurnEnv, host: multiturn.HostResponder):
  """The rollout as 2K - 1 jitted programs with Python between them."""
  reset = jax.jit(env.reset)
  speak = jax.jit(env._model_turn)  # pylint: disable=protected-access
  hear = jax.jit(env._observe)  # pylint: disable=protected-access

  def rollout(params, batch, key):
    text = reset(params, batch['prompt'], batch['prompt_mask'])
    keys = jax.random.split(key, TURNS.max_turns)
    for k in range(TURNS.max_turns):
      text, spoken = speak(params, text, keys[k])
      if k == TURNS.max_turns - 1:
        break
      out = host._host(k, spoken.token, spoken.valid)  # pylint: disable=protected-access
      text, _ = hear(params, text, multiturn.Response(
          *(jnp.asarray(x) for x in out)))
    return text.logits

  return rollout


def main(argv):
  del argv
  w = dataclasses.replace(common.W, new_tokens=TURNS.length)
  base = w.env(cache_segments=1)
  params = jax.jit(base.policy.init_params)(jax.random.key(0))
  tokens, mask = w.prompts()
  batch = {'prompt': jnp.asarray(tokens), 'prompt_mask': jnp.asarray(mask)}
  host = multiturn.HostResponder(_host_fixed, _Ids(),
                                 TURNS.observation_tokens, pad_id=0)
  in_jax = multiturn.MultiTurnEnv.wrap(base, TURNS, Fixed())
  by_callback = multiturn.MultiTurnEnv.wrap(base, TURNS, host)
  key = jax.random.key(1)
  ways = {
      'jax': jax.jit(in_jax.rollout),
      'callback': jax.jit(by_callback.rollout),
      'segments': _segments(in_jax, host),
      'single': jax.jit(base.rollout),
  }
  # Interleaved, best of each: a shared machine's load hits every way alike.
  seconds = {name: float('inf') for name in ways}
  for f in ways.values():
    jax.block_until_ready(f(params, batch, key))
  for _ in range(_REPEATS.value):
    for name, f in ways.items():
      start = time.perf_counter()
      jax.block_until_ready(f(params, batch, key))
      seconds[name] = min(seconds[name], time.perf_counter() - start)
  if common.profile_dir() is not None:  # One traced call of each way.
    for name, f in ways.items():
      with common.trace(f'multiturn {name}'):
        jax.block_until_ready(f(params, batch, key))
  # The same episodes either way.
  a = jax.device_get(ways['jax'](params, batch, key))
  b = jax.device_get(ways['callback'](params, batch, key))
  assert np.array_equal(a.actions, b.actions)
  model_tokens = w.batch * TURNS.max_turns * TURNS.turn_tokens
  print(f'{w.batch} episodes x {TURNS.max_turns} turns of '
        f'{TURNS.turn_tokens} tokens, observations of '
        f'{TURNS.observation_tokens} (T = {TURNS.length})')
  print(f'{"way":10s} {"s/rollout":>10s} {"model tok/s":>12s} {"vs jax":>8s}')
  for name, s in seconds.items():
    print(f'{name:10s} {s:10.4f} {model_tokens / s:12.0f} '
          f'{s / seconds["jax"]:8.3f}')
  if _JSON.value:
    print(json.dumps({f'{k}_seconds': v for k, v in seconds.items()}))


if __name__ == '__main__':
  app.run(main)
