"""Small multi-turn games with known optimal policies (`envs.multiturn`
responders written in JAX), for tests and sanity checks of multi-turn
training.
"""

import dataclasses

import jax.numpy as jnp

from jaxrlgen.envs import multiturn


@dataclasses.dataclass(frozen=True)
class CopyGame:
  """Repeat what you were told.

  Turn 1: whatever the model says, the environment answers with `prefix`
  and then the episode's secret token (`batch['secret']` i32[B]). Turn 2:
  the reward is 1 if the model's first token is the secret, else 0, and the
  episode ends. The prompt does not hold the secret, so only a policy that
  reads the observation wins: the optimal one (copy it) earns 1, one that
  ignores it 1 / (number of secrets) at best.

  Attributes:
    observation_tokens: O, the observation block's width.
    pad_id: the padding token.
    prefix: tokens the environment says before the secret (its control
      tokens, e.g. a "user:" tag), never trained on.
  """

  observation_tokens: int
  pad_id: int
  prefix: tuple[int, ...] = ()

  def __post_init__(self):
    if len(self.prefix) + 1 > self.observation_tokens:
      raise ValueError(
          f'CopyGame says {len(self.prefix) + 1} tokens; observation_tokens='
          f'{self.observation_tokens} must hold them.')

  def init(self, batch):
    return batch['secret'].astype(jnp.int32)

  def respond(self, secret, turn, tokens, mask):
    b, o = secret.shape[0], self.observation_tokens
    said = jnp.concatenate(
        [jnp.broadcast_to(jnp.asarray(self.prefix, jnp.int32),
                          (b, len(self.prefix))), secret[:, None]], axis=1)
    n = said.shape[1]
    obs = jnp.concatenate(
        [jnp.full((b, o - n), self.pad_id, jnp.int32), said], axis=1)
    obs_mask = jnp.broadcast_to(jnp.arange(o) >= o - n, (b, o))
    won = mask[:, 0] & (tokens[:, 0] == secret)
    last = turn >= 1
    false = jnp.zeros((b,), jnp.bool_)
    return secret, multiturn.Response(
        tokens=obs, mask=obs_mask, done=jnp.broadcast_to(last, (b,)),
        reward=jnp.where(last, won.astype(jnp.float32), 0.0), failed=false,
        truncated=false)
