"""Seconds per training step on workload W (GRPO and PPO), and MFU.

  python -m experiments.benchmarks.train_step [--json]

GRPO step: W's rollout (16 prompts x 4 samples, 64 new tokens), the reward
"fraction of even token ids", group-normalised advantages, log-probs of the
policy and of a frozen reference (beta 0.04), one Adam step (lr 1e-5) over
all 64 sequences -- one jitted program with the state donated. PPO step: the
library's PPO with a value head (its default 4 epochs x 4 minibatches). MFU
counts the rollout, the reference forward and the policy forward and
backward (2x forward) against this machine's matrix-multiply peak.
"""

import dataclasses
import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from experiments.benchmarks import common
from jaxrlgen import algos
from jaxrlgen.core.types import TrainState
from jaxrlgen.train import loop
from jaxrlgen.train import step as step_lib

_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object last.')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per measurement.')


def setup(w: common.Workload, algo_name: str, **env_overrides):
  algo_cfg = algos.default_config(algo_name)
  if algo_name == 'grpo':
    algo_cfg.beta = 0.04
  algo = algos.make(algo_cfg)
  if algo_name == 'ppo':
    env_overrides['model_overrides'] = {'value_head': True}
  env = w.env(**env_overrides)
  tx = optax.adam(1e-5)
  params = env.policy.init_params(jax.random.key(0))
  if w.dtype != 'float32':
    params = jax.tree.map(lambda x: x.astype(w.dtype), params)
  state = TrainState.create(
      params, tx, ref_params=params if algo.uses_reference else None,
      algo_state=algos.init_algo_state(algo, params))
  step = functools.partial(step_lib.rl_step, env=env,
                           reward_fn=common.even_fraction, algo=algo, tx=tx)
  prompt, mask = w.prompts()
  return step, state, {'prompt': prompt, 'prompt_mask': mask}, env, algo, tx


def time_steps(w, algo_name, repeats, *, donate=True, fused=1,
               **env_overrides) -> float:
  """Seconds per step, over `repeats` calls of `fused` steps each."""
  step, state, batch, *_ = setup(w, algo_name, **env_overrides)
  holder = {'state': jax.tree.map(jnp.copy, state)}
  if fused > 1:
    fn = jax.jit(loop.fuse_steps(step, fused),
                 donate_argnums=(0,) if donate else ())
    batches = jax.tree.map(lambda x: np.stack([x] * fused), batch)
    keys = jax.random.split(jax.random.key(0), fused)
    call = lambda: fn(holder['state'], batches, keys)
  else:
    fn = jax.jit(step, donate_argnums=(0,) if donate else ())
    call = lambda: fn(holder['state'], batch, jax.random.key(0))

  def run():
    holder['state'], metrics = call()
    return metrics
  name = ' '.join([f'{algo_name} step {w.dtype}', f'fused={fused}',
                   f'donate={donate}',
                   *(f'{k}={v}' for k, v in sorted(env_overrides.items()))])
  return common.time_fn(run, repeats=repeats, name=name) / fused


def profile(w: common.Workload, repeats: int) -> dict[str, float]:
  """Seconds of the GRPO step's parts, each its own jitted program."""
  step, state, batch, env, algo, tx = setup(w, 'grpo')
  key = jax.random.key(0)
  rollout_fn = jax.jit(functools.partial(step_lib.sample, env=env,
                                         reward_fn=common.even_fraction))
  acted = rollout_fn(state.params, batch, key)
  rollout, rewards = acted.rollout, acted.rewards
  evaluate = jax.jit(lambda p, r: env.evaluate(p, r).logp)
  exp, *_ = jax.jit(functools.partial(algo.prepare, env))(
      state, rollout, rewards, key)
  grad = jax.jit(jax.grad(lambda p, e: algo.loss(env, p, e)[0]))
  grads = grad(state.params, exp)
  update = jax.jit(lambda g, o, p: optax.apply_updates(
      p, tx.update(g, o, p)[0]))
  return {
      'rollout + reward': common.time_fn(
          lambda: rollout_fn(state.params, batch, key).rollout.actions,
          repeats=repeats, name='part rollout + reward'),
      'reference log-probs (forward)': common.time_fn(
          lambda: evaluate(state.ref_params, rollout), repeats=repeats,
          name='part reference forward'),
      'policy loss forward + backward': common.time_fn(
          lambda: grad(state.params, exp), repeats=repeats,
          name='part policy loss forward + backward'),
      'Adam update': common.time_fn(
          lambda: update(grads, state.opt_state, state.params),
          repeats=repeats, name='part Adam update'),
  }


def main(argv):
  del argv
  repeats = _REPEATS.value
  w = common.W
  peak = common.peak_flops()
  grpo = time_steps(w, 'grpo', repeats)
  ppo = time_steps(w, 'ppo', repeats)
  flops = common.grpo_step_flops(w)
  mfu = flops / grpo / peak
  result = {'device': common.device_name(), 'peak_flops': peak,
            'grpo_seconds_per_step': grpo, 'grpo_mfu': mfu,
            'grpo_step_flops': flops, 'ppo_seconds_per_step': ppo}
  common.print_table(
      f'Workload W train steps on {result["device"]} (peak '
      f'{peak / 1e9:.1f} GFLOP/s f32 matmul)',
      ['step', 'seconds', 'GFLOP', 'MFU'],
      [['GRPO', grpo, flops / 1e9, f'{100 * mfu:.1f}%'],
       ['PPO (4 epochs x 4 minibatches, value head)', ppo, '', '']])

  parts = profile(w, repeats)
  rows = [[name, t] for name, t in parts.items()]
  rows.append(['sum of parts', sum(parts.values())])
  rows.append(['measured GRPO step (one program)', grpo])
  common.print_table('Where the GRPO step goes (seconds, parts timed alone)',
                     ['part', 'seconds'], rows)
  result.update({f'profile/{k}': v for k, v in parts.items()})

  variants = [
      ('W as measured (donated state, log-prob chunk 128, rollout as in '
       'rollout.py)', grpo),
      ('library-default rollout (Gumbel draws, one cache)',
       time_steps(w, 'grpo', repeats, **common.LIBRARY_DEFAULTS)),
      ('state not donated', time_steps(w, 'grpo', repeats, donate=False)),
      ('4 steps fused in one lax.scan', time_steps(w, 'grpo', repeats,
                                                   fused=4)),
      ('log-prob chunks of 16 steps', time_steps(w, 'grpo', repeats,
                                                 logprob_chunk=16)),
      ('bfloat16 compute and parameters',
       time_steps(dataclasses.replace(w, dtype='bfloat16'), 'grpo', repeats)),
  ]
  common.print_table('Techniques (seconds per GRPO step; speed relative to W '
                     'as measured, > 1: faster)',
                     ['variant', 'seconds', 'relative speed'],
                     [[n, t, grpo / t] for n, t in variants])
  result['techniques'] = {n: t for n, t in variants}
  if _JSON.value:
    common.emit_json(result)


if __name__ == '__main__':
  app.run(main)
