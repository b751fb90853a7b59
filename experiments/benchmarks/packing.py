"""Training passes on uneven lengths, packed (`TextEnv.pack_rows`) against
unpacked, in the same run.

  python -m experiments.benchmarks.packing [--new_tokens=256] [--json]

W's model and batch (64 sequences of 16-token prompts), with completion
lengths drawn from a heavy-tailed law: log-normal with mean about
`--mean_length` tokens, cut to [1, new_tokens], and `--stragglers`
sequences at the whole budget. The completions are sampled by W's rollout
and cut to those lengths as EOS would. Timed, alternating packed and
unpacked, best of `--repeats`:

  - the GRPO loss's forward and backward over the rollout (the policy's
    part of a GRPO step);
  - the reference model's forward (`evaluate`).

Packed passes use the fewest rows that hold the batch (or `--rows`). The
table gives the slots each pass computes, the padded fraction of them,
the seconds and the largest difference between the packed and unpacked
losses.
"""

import dataclasses

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments.benchmarks import common
from jaxrlgen import algos
from jaxrlgen.core import packing
from jaxrlgen.core.types import TrainState

_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object last.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed runs per measurement.')
_NEW_TOKENS = flags.DEFINE_integer('new_tokens', 256, 'Completion budget T.')
_MEAN = flags.DEFINE_float('mean_length', 40.0,
                           'Mean completion length before the cut.')
_STRAGGLERS = flags.DEFINE_integer(
    'stragglers', 2, 'Sequences that use the whole budget.')
_ROWS = flags.DEFINE_integer('rows', 0, 'Packed rows; 0: the fewest that '
                             'hold the batch.')


def uneven_lengths(batch: int, budget: int, mean: float, stragglers: int,
                   seed: int = 0) -> np.ndarray:
  """i32[batch] completion lengths: log-normal (sigma 1, mean `mean`), cut
  to [1, budget], the first `stragglers` at `budget`."""
  rng = np.random.default_rng(seed)
  sigma = 1.0
  lengths = rng.lognormal(np.log(mean) - sigma ** 2 / 2, sigma, batch)
  lengths = np.clip(np.round(lengths), 1, budget).astype(np.int32)
  lengths[:stragglers] = budget
  return rng.permutation(lengths)


def fewest_rows(env, rollout) -> tuple[int, int]:
  """The fewest rows of P + T slots that the rollout's sequences fit, and
  the real tokens they hold."""
  tokens, real, _ = env.packed_tokens(rollout)
  real = np.asarray(real)
  fits = jax.jit(lambda r, rows: packing.pack(tokens, r, rows,
                                              tokens.shape[1]).fits,
                 static_argnums=1)
  low = max(1, -(-int(real.sum()) // tokens.shape[1]))
  return next(rows for rows in range(low, rollout.batch_size + 1)
              if bool(fits(jnp.asarray(real), rows))), int(real.sum())


def main(argv):
  del argv
  w = dataclasses.replace(common.W, new_tokens=_NEW_TOKENS.value)
  env = w.env()
  params = env.policy.init_params(jax.random.key(0))
  prompt, mask = w.prompts()
  rollout = jax.jit(env.rollout)(params, {'prompt': prompt,
                                          'prompt_mask': mask},
                                 jax.random.key(1))
  lengths = uneven_lengths(w.batch, w.new_tokens, _MEAN.value,
                           _STRAGGLERS.value)
  rollout = rollout.replace(mask=jnp.asarray(
      np.arange(w.new_tokens)[None] < lengths[:, None]))
  rows_needed, real = fewest_rows(env, rollout)
  rows = _ROWS.value or rows_needed
  packed_env = dataclasses.replace(env, pack_rows=rows)

  algo_cfg = algos.default_config('grpo')
  algo_cfg.beta = 0.0  # The policy's pass alone; the reference is timed apart.
  algo = algos.make(algo_cfg)
  rewards = common.even_fraction(rollout, None)
  train_state = TrainState.create(params, optax.identity())
  exp, _, _ = jax.jit(lambda s, r, x: algo.prepare(env, s, r, x,
                                                   jax.random.key(2)))(
      train_state, rollout, rewards)

  def loss_grad(e):
    return jax.jit(jax.value_and_grad(lambda p, x: algo.loss(e, p, x)[0]))

  def forward(e):
    return jax.jit(lambda p, r: e.evaluate(p, r).logp)

  passes = {}
  for name, e in (('unpacked', env), ('packed', packed_env)):
    passes[name] = (loss_grad(e), forward(e))
  losses = {name: float(fns[0](params, exp)[0])
            for name, fns in passes.items()}
  times = {name: {'loss_grad': [], 'forward': []} for name in passes}
  for _ in range(_REPEATS.value):  # Alternating, so load hits both alike.
    for name, (grad_fn, fwd_fn) in passes.items():
      times[name]['loss_grad'].append(common.time_fn(
          lambda: grad_fn(params, exp), repeats=1,
          name=f'{name} loss forward + backward'))
      times[name]['forward'].append(common.time_fn(
          lambda: fwd_fn(params, rollout), repeats=1,
          name=f'{name} forward'))
  best = {name: {k: min(v) for k, v in t.items()}
          for name, t in times.items()}
  width = w.prompt_len + w.new_tokens
  slots = {'unpacked': w.batch * width, 'packed': rows * width}
  result = {
      'device': common.device_name(), 'new_tokens': w.new_tokens,
      'batch': w.batch, 'rows': rows, 'real_tokens': real,
      'lengths': {'mean': float(lengths.mean()),
                  'median': float(np.median(lengths)),
                  'p90': float(np.percentile(lengths, 90)),
                  'max': int(lengths.max())},
      'max_abs_loss_difference': abs(losses['packed'] - losses['unpacked']),
  }
  for name in passes:
    result[name] = {'slots': slots[name],
                    'padded_fraction': 1 - real / slots[name],
                    'loss_grad_seconds': best[name]['loss_grad'],
                    'forward_seconds': best[name]['forward']}
  common.print_table(
      f'Uneven lengths on {result["device"]}: {w.batch} sequences, prompts '
      f'of {w.prompt_len}, completions of mean {lengths.mean():.0f} '
      f'(median {np.median(lengths):.0f}, max {lengths.max()}) of '
      f'{w.new_tokens}; {real} real tokens',
      ['pass', 'rows', 'slots', 'padded', 'loss fwd+bwd s', 'forward s'],
      [[name, rows if name == 'packed' else w.batch, slots[name],
        f'{100 * result[name]["padded_fraction"]:.0f}%',
        best[name]['loss_grad'], best[name]['forward']] for name in passes])
  print(f'speed-up, loss forward + backward: '
        f'{best["unpacked"]["loss_grad"] / best["packed"]["loss_grad"]:.2f}x;'
        f' forward: {best["unpacked"]["forward"] / best["packed"]["forward"]:.2f}x;'
        f' |loss difference| {result["max_abs_loss_difference"]:.2e}')
  if _JSON.value:
    common.emit_json(result)


if __name__ == '__main__':
  app.run(main)
