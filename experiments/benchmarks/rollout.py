"""Rollout throughput on workload W, how it scales, and the roofline.

  python -m experiments.benchmarks.rollout [--json] [--compare=hf] [--sweep=cross|grid|none]

Generated tokens per second: 64 sequences x 64 new tokens over the wall time
of the whole rollout (the shared prefill of 16 prompts and every decode
step). MFU is model FLOPs (prefill + decode, causal attention over the real
context) per second over this machine's matrix-multiply peak, measured in the
same run. With --compare=hf the same weights (converted to a Hugging Face
checkpoint) generate the same workload with transformers' `generate`
(PyTorch, CPU).
"""

import dataclasses
import os
import tempfile
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks import common
from jaxrlgen.envs.text import Sampling
from jaxrlgen.models import hf
from jaxrlgen.models import transformer as tfm

_JSON = flags.DEFINE_bool('json', False, 'Print one JSON object last.')
_COMPARE = flags.DEFINE_enum('compare', 'none', ['none', 'hf'],
                             'Also time transformers.generate on W.')
_SWEEP = flags.DEFINE_enum('sweep', 'cross', ['none', 'cross', 'grid'],
                           'Batch x new-token sizes to time: none; batch '
                           '16..1024 at 64 tokens plus 64..1024 tokens at '
                           'batch 64 (cross); or every pair (grid).')
_REPEATS = flags.DEFINE_integer('repeats', 5, 'Timed runs per measurement.')


def rollout_fn(w: common.Workload, **env_overrides):
  """jit((params, prompt, mask, key) -> Rollout) of W's environment, and it."""
  env = w.env(**env_overrides)
  return jax.jit(lambda params, prompt, mask, key: env.rollout(
      params, {'prompt': prompt, 'prompt_mask': mask}, key)), env


def time_rollout(w: common.Workload, params, repeats: int,
                 **env_overrides) -> float:
  rollout, _ = rollout_fn(w, **env_overrides)
  prompt, mask = w.prompts()
  if env_overrides.get('num_samples') == 1:  # No sharing: G copies each.
    prompt = np.repeat(prompt, w.group_size, 0)
    mask = np.repeat(mask, w.group_size, 0)
  key = jax.random.key(0)
  name = ' '.join([f'rollout {w.batch}x{w.new_tokens} {w.dtype}',
                   *(f'{k}={v}' for k, v in sorted(env_overrides.items()))])
  return common.time_fn(lambda: rollout(params, prompt, mask, key).actions,
                        repeats=repeats, name=name)


def profile(w: common.Workload, params, repeats: int,
            seconds: float) -> dict[str, float]:
  """Seconds of the rollout's parts, from whole rollouts (timing one jitted
  step alone would add a dispatch and a cache copy per step that the scan
  does not pay): prefill = a rollout of one token; decode = the rest;
  sampling = 63 draws from [64, 1024] logits in a scan."""
  prefill = time_rollout(dataclasses.replace(w, new_tokens=1), params,
                         repeats)
  env = w.env()
  state = jax.jit(env.reset)(params, *w.prompts())
  state = state.replace(logits=jax.random.normal(
      jax.random.key(0), state.logits.shape))

  @jax.jit
  def sample(state, key):
    draw = lambda carry, key: (carry, env.choose(state, key).token)
    return jax.lax.scan(draw, None,
                        jax.random.split(key, w.new_tokens - 1))[1]

  sampling = common.time_fn(lambda: sample(state, jax.random.key(1)),
                            repeats=repeats, name='sampling')
  dense = common.dense_flops_floor(w, w.batch, w.new_tokens - 1, repeats)
  return {'prefill': prefill, 'decode': seconds - prefill,
          'decode_step': (seconds - prefill) / (w.new_tokens - 1),
          'sampling': sampling, 'decode_dense_matmuls': dense}


def early_stop_workload(w: common.Workload, params):
  """W with EOS made frequent: EOS is the token the random model samples
  most often in its first steps, so completions end early and unevenly."""
  rollout, _ = rollout_fn(w, suppress_eos=False, eos_id=w.vocab_size - 1)
  prompt, mask = w.prompts()
  actions = np.asarray(rollout(params, prompt, mask, jax.random.key(1)
                               ).actions[:, :8])
  return int(np.bincount(actions.ravel()).argmax())


def compare_hf(w: common.Workload, params, repeats: int) -> float:
  """Seconds for transformers.generate on the same weights and workload."""
  import torch  # pylint: disable=g-import-not-at-top
  import transformers  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count() or 1)
  with tempfile.TemporaryDirectory() as directory:
    hf.save(directory, w.model_config(), params, arch='LlamaForCausalLM')
    model = transformers.AutoModelForCausalLM.from_pretrained(
        directory, dtype=torch.float32).eval()
  prompt, mask = w.prompts()
  inputs = torch.from_numpy(prompt).long()
  eos = w.vocab_size - 1

  def generate():
    with torch.no_grad():
      return model.generate(
          inputs, attention_mask=torch.from_numpy(mask).long(),
          do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
          num_return_sequences=w.group_size, max_new_tokens=w.new_tokens,
          min_new_tokens=w.new_tokens, suppress_tokens=[eos],
          eos_token_id=None, pad_token_id=0)

  out = generate()
  assert out.shape == (w.batch, w.prompt_len + w.new_tokens), out.shape
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    generate()
    best = min(best, time.perf_counter() - start)
  return best


def main(argv):
  del argv
  repeats = _REPEATS.value
  w = common.W
  peak = common.peak_flops()
  params = tfm.init_params(w.model_config(), jax.random.key(0))
  seconds = time_rollout(w, params, repeats)
  tokens = w.batch * w.new_tokens
  flops = common.rollout_flops(w)
  result = {'device': common.device_name(), 'peak_flops': peak,
            'rollout_seconds': seconds, 'tokens_per_s': tokens / seconds,
            'mfu': flops / seconds / peak, 'rollout_flops': flops}
  common.print_table(
      f'Workload W rollout on {result["device"]} (peak {peak / 1e9:.1f} '
      'GFLOP/s f32 matmul)',
      ['seconds', 'tokens/s', 'GFLOP', 'GFLOP/s', 'MFU'],
      [[seconds, tokens / seconds, flops / 1e9, flops / seconds / 1e9,
        f'{100 * result["mfu"]:.1f}%']])

  parts = profile(w, params, repeats, seconds)
  decode_flops = flops - common.rollout_flops(
      dataclasses.replace(w, new_tokens=1))
  rows = [['prefill (16 prompts x 16 tokens) + 1 draw', parts['prefill'],
           f'{100 * (flops - decode_flops) / parts["prefill"] / peak:.1f}%'],
          [f'decode ({w.new_tokens - 1} steps)', parts['decode'],
           f'{100 * decode_flops / parts["decode"] / peak:.1f}%'],
          ['  its dense matmuls alone (floor)', parts['decode_dense_matmuls'],
           ''],
          ['  sampling alone (softmax + draw)', parts['sampling'], ''],
          ['  the rest: attention over the cache, norms, rotary, cache '
           'writes', max(parts['decode'] - parts['decode_dense_matmuls']
                         - parts['sampling'], 0.0), ''],
          ['rollout', seconds, f'{100 * result["mfu"]:.1f}%']]
  common.print_table('Where the rollout time goes',
                     ['part', 'seconds', 'MFU'], rows)
  result.update({f'profile/{k}_seconds': v for k, v in parts.items()})

  # Techniques, each against the default.
  techniques = [
      ('W as measured (inverse-CDF draws, 8 cache segments, shared '
       'prefill, f32)', seconds),
      ('Gumbel draws (sampling.method default)',
       time_rollout(w, params, repeats, sampling=Sampling())),
      ('one cache of P + T slots (cache_segments=1, default)',
       time_rollout(w, params, repeats, cache_segments=1)),
      ('library defaults (Gumbel draws, one cache)',
       time_rollout(w, params, repeats, **common.LIBRARY_DEFAULTS)),
      ('no shared prefill (each sample prefills)',
       time_rollout(w, params, repeats, num_samples=1)),
  ]
  bf16 = dataclasses.replace(w, dtype='bfloat16')
  techniques.append(('bfloat16 compute',
                     time_rollout(bf16, jax.tree.map(
                         lambda x: x.astype(jnp.bfloat16), params), repeats)))
  eos = early_stop_workload(w, params)
  scan_eos = time_rollout(w, params, repeats, suppress_eos=False, eos_id=eos)
  early_eos = time_rollout(w, params, repeats, suppress_eos=False, eos_id=eos,
                           early_stop=True)
  rows = [[name, t, seconds / t] for name, t in techniques]
  rows += [[f'frequent EOS (id {eos}), full scan', scan_eos, seconds / scan_eos],
           [f'frequent EOS (id {eos}), early stop', early_eos,
            seconds / early_eos]]
  common.print_table('Techniques (rollout seconds; speed relative to W as '
                     'measured, > 1: faster)',
                     ['variant', 'seconds', 'relative speed'], rows)
  result['early_stop_speedup'] = scan_eos / early_eos
  result['shared_prefill_speedup'] = techniques[4][1] / seconds
  result['inverse_cdf_speedup'] = techniques[1][1] / seconds
  result['cache_segments_speedup'] = techniques[2][1] / seconds
  result['library_defaults_seconds'] = techniques[3][1]

  if _SWEEP.value != 'none':
    batches, lengths = (16, 64, 256, 1024), (64, 256, 1024)
    if _SWEEP.value == 'grid':
      pairs = [(b, n) for b in batches for n in lengths]
    else:
      pairs = [(b, 64) for b in batches] + [(64, n) for n in lengths[1:]]
    rows = []
    for batch, new_tokens in pairs:
      sized = dataclasses.replace(w, num_prompts=batch // w.group_size,
                                  new_tokens=new_tokens)
      p = tfm.init_params(sized.model_config(), jax.random.key(0))
      t = time_rollout(sized, p, max(1, repeats // 2))
      f = common.rollout_flops(sized)
      rows.append([batch, new_tokens, t, batch * new_tokens / t,
                   f'{100 * f / t / peak:.1f}%'])
    common.print_table('Scaling (batch = sequences; MFU)',
                       ['batch', 'new tokens', 'seconds', 'tokens/s', 'MFU'],
                       rows)
    result['sweep'] = [dict(zip(('batch', 'new_tokens', 'seconds',
                                 'tokens_per_s'), r[:4])) for r in rows]

  if _COMPARE.value == 'hf':
    hf_seconds = compare_hf(w, params, max(1, repeats // 2))
    common.print_table(
        'Side by side on W (same weights)',
        ['implementation', 'seconds', 'tokens/s'],
        [['jaxrlgen', seconds, tokens / seconds],
         ['transformers generate (PyTorch CPU)', hf_seconds,
          tokens / hf_seconds]])
    print(f'jaxrlgen is {hf_seconds / seconds:.1f}x faster')
    result.update({'hf_seconds': hf_seconds,
                   'hf_tokens_per_s': tokens / hf_seconds,
                   'speedup_vs_hf': hf_seconds / seconds})
  if _JSON.value:
    common.emit_json(result)


if __name__ == '__main__':
  app.run(main)
