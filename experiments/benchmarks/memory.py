"""Peak memory of the log-prob computation and of a rollout.

  python -m experiments.benchmarks.memory [--json]

Peaks are XLA's own accounting of each compiled program (arguments, outputs
and temporaries; `Compiled.memory_analysis()`), so nothing needs to run at
the full size. Log-probs: batch 8, length 1024, vocabulary 128k, hidden
256 -- a float32 [B, T, V] array alone would be 4 GiB; jaxrlgen gathers the
taken token's log-prob chunk by chunk (`core/logprob.py`), in the forward and
(rematerialised per chunk) in the backward pass. Rollout: workload W with its
KV cache.
"""

import functools

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from experiments.benchmarks import common
from jaxrlgen.core import logprob
from jaxrlgen.models import transformer as tfm

_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object last.')

B, T, V, E = 8, 1024, 128 * 1024, 256
GIB = 1 << 30


def peak_bytes(fn, *args) -> int:
  """Arguments + outputs + temporaries of the compiled `fn(*args)`."""
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return (stats.argument_size_in_bytes + stats.output_size_in_bytes
          + stats.temp_size_in_bytes - stats.alias_size_in_bytes)


def logprob_programs(chunk: int):
  hidden = jax.ShapeDtypeStruct((B, T, E), jnp.float32)
  kernel = jax.ShapeDtypeStruct((E, V), jnp.float32)
  tokens = jax.ShapeDtypeStruct((B, T), jnp.int32)

  def logp(hidden, kernel, tokens):
    out, _ = logprob.chunked_token_logprobs(
        lambda h: h @ kernel, hidden, tokens, chunk_size=chunk)
    return out

  def loss(hidden, kernel, tokens):  # Training: gradient of the sum.
    return jax.grad(lambda h, k: jnp.sum(logp(h, k, tokens)),
                    argnums=(0, 1))(hidden, kernel)

  return (peak_bytes(logp, hidden, kernel, tokens),
          peak_bytes(loss, hidden, kernel, tokens))


def main(argv):
  del argv
  rows, result = [], {'device': common.device_name()}
  inputs = (B * T * E + E * V + B * T) * 4
  for chunk in (128, 32, T):
    forward, backward = logprob_programs(chunk)
    name = 'whole sequence (no chunking)' if chunk == T else f'chunks of {chunk}'
    rows.append([name, forward / GIB, backward / GIB])
    if chunk == 128:
      result['logprob_peak_bytes'] = forward
      result['logprob_grad_peak_bytes'] = backward
  common.print_table(
      f'Log-probs of B={B}, T={T}, V={V} (hidden {E}): peak GiB '
      f'(inputs alone {inputs / GIB:.2f} GiB; a f32 [B, T, V] array is '
      f'{B * T * V * 4 / GIB:.0f} GiB)',
      ['log-softmax gather', 'forward', 'forward + backward'], rows)

  w = common.W
  env = w.env()
  params = jax.eval_shape(functools.partial(tfm.init_params, w.model_config()),
                          jax.random.key(0))
  batch = {
      'prompt': jax.ShapeDtypeStruct((w.num_prompts, w.prompt_len), jnp.int32),
      'prompt_mask': jax.ShapeDtypeStruct((w.num_prompts, w.prompt_len),
                                          jnp.bool_)}
  key = jax.eval_shape(lambda: jax.random.key(0))
  rollout = peak_bytes(env.rollout, params, batch, key)
  cache = jax.eval_shape(functools.partial(
      tfm.init_cache, w.model_config(), w.batch, w.prompt_len + w.new_tokens))
  cache_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(cache))
  param_bytes = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(params))
  common.print_table('Rollout of workload W: peak MiB',
                     ['program', 'peak', 'parameters', 'KV cache'],
                     [['rollout', rollout / 2**20, param_bytes / 2**20,
                       cache_bytes / 2**20]])
  result.update(rollout_peak_bytes=rollout, kv_cache_bytes=cache_bytes,
                param_bytes=param_bytes)
  if _JSON.value:
    common.emit_json(result)


if __name__ == '__main__':
  app.run(main)
