"""What the benchmarks share: workload W, FLOP counts, the machine's peak,
timing, traces (`--profile`), and the output format (a table, and with
--json one JSON object on the last line).

Workload W (README, "Throughput"): a Llama-architecture model with vocabulary
1024, hidden 256, MLP 1024, 4 layers, 4 heads, 4 KV heads, float32, random
init; 16 prompts x 4 samples = 64 sequences; prompts of 16 tokens; exactly 64
new tokens (EOS suppressed); temperature 1, no top-k or top-p.
"""

import collections
import contextlib
import dataclasses
import json
import os
import re
import time
from typing import Any, Callable, Sequence

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import transformer as tfm
from jaxrlgen.policies import LMPolicy


# Rollout settings the benchmarks run with. Both are exact and off by
# default in the library (the first changes the random stream that recorded
# runs were drawn with; the second compiles one decode loop per segment):
# inverse-CDF sampling draws one random number per sequence instead of V
# Gumbels, and a cache grown in 8 segments spares early decode steps from
# attending over the whole budget.
FAST = dict(sampling=Sampling(method='inverse_cdf'), cache_segments=8)
LIBRARY_DEFAULTS = dict(sampling=Sampling(), cache_segments=1)

_PROFILE = flags.DEFINE_string(
    'profile', None,
    'Directory to write a trace of each measurement into, one subdirectory '
    'per measurement: one more call after the timed ones, for TensorBoard\'s '
    'profile plugin (tensorboard --logdir DIR) or Perfetto '
    '(ui.perfetto.dev opens each perfetto_trace.json.gz).')
_traces = collections.Counter()  # Traces written per name, this process.


@dataclasses.dataclass(frozen=True)
class Workload:
  vocab_size: int = 1024
  hidden_dim: int = 256
  mlp_dim: int = 1024
  num_layers: int = 4
  num_heads: int = 4
  num_kv_heads: int = 4
  num_prompts: int = 16
  group_size: int = 4
  prompt_len: int = 16
  new_tokens: int = 64
  dtype: str = 'float32'
  # Teacher-forced attention: cuDNN's fused kernel on an NVIDIA GPU in
  # bfloat16, the einsum elsewhere (`TransformerConfig.attention`).
  attention: str = 'auto'

  @property
  def batch(self) -> int:
    return self.num_prompts * self.group_size

  def model_config(self, **overrides) -> tfm.TransformerConfig:
    return tfm.TransformerConfig(
        vocab_size=self.vocab_size, hidden_dim=self.hidden_dim,
        mlp_dim=self.mlp_dim, num_layers=self.num_layers,
        num_heads=self.num_heads, num_kv_heads=self.num_kv_heads,
        max_seq_len=self.prompt_len + self.new_tokens, dtype=self.dtype,
        attention=self.attention, **overrides)

  def env(self, **overrides) -> TextEnv:
    """W's environment with the fastest exact settings (`FAST`); overrides
    switch them back (the techniques tables)."""
    fields = dict(max_new_tokens=self.new_tokens,
                  eos_id=self.vocab_size - 1, pad_id=0,
                  num_samples=self.group_size, suppress_eos=True, **FAST)
    fields.update(overrides)
    model_overrides = fields.pop('model_overrides', {})
    model = tfm.Transformer(self.model_config(**model_overrides))
    return TextEnv(LMPolicy(model), **fields)

  def prompts(self, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, self.vocab_size - 1,
                          (self.num_prompts, self.prompt_len)).astype(np.int32)
    return tokens, np.ones_like(tokens, bool)


W = Workload()


def even_fraction(rollout, batch):
  """W's reward: the fraction of generated tokens with an even id, f32[B]."""
  del batch
  even = (rollout.actions % 2 == 0) & rollout.mask
  return jnp.sum(even, 1) / jnp.maximum(jnp.sum(rollout.mask, 1), 1)


# ---------------------------------------------------------------------------
# Model FLOPs (multiply-adds count 2). Attention counts the context each query
# actually attends to (causal), not the padded cache.


def _matmul_flops_per_token(w: Workload) -> float:
  d = w.hidden_dim // w.num_heads
  per_layer = 2 * w.hidden_dim * d * (w.num_heads + 2 * w.num_kv_heads)
  per_layer += 2 * w.num_heads * d * w.hidden_dim
  per_layer += 2 * 3 * w.hidden_dim * w.mlp_dim
  return w.num_layers * per_layer + 2 * w.hidden_dim * w.vocab_size


def _attention_flops(w: Workload, context: float) -> float:
  """Scores and weighted values of one query over `context` keys."""
  d = w.hidden_dim // w.num_heads
  return w.num_layers * 2 * 2 * w.num_heads * d * context


def forward_flops(w: Workload, num_seqs: int, length: int,
                  logits_positions: int | None = None) -> float:
  """A causal forward over `num_seqs` sequences of `length` tokens;
  `logits_positions`: how many positions need the vocabulary projection."""
  logits_positions = length if logits_positions is None else logits_positions
  per_token = _matmul_flops_per_token(w) - 2 * w.hidden_dim * w.vocab_size
  attention = sum(_attention_flops(w, t + 1) for t in range(length))
  return num_seqs * (length * per_token + attention
                     + logits_positions * 2 * w.hidden_dim * w.vocab_size)


def rollout_flops(w: Workload, *, shared_prefill: bool = True) -> float:
  """Prefill (once per prompt, or once per sample) + decode of every sample."""
  prefills = w.num_prompts if shared_prefill else w.batch
  prefill = forward_flops(w, prefills, w.prompt_len, logits_positions=1)
  decode = 0.0
  for t in range(w.new_tokens - 1):  # The last token needs no decode step.
    decode += (_matmul_flops_per_token(w)
               + _attention_flops(w, w.prompt_len + t + 1))
  return prefill + w.batch * decode


def grpo_step_flops(w: Workload) -> float:
  """Rollout + reference forward + policy forward and backward (2x)."""
  length = w.prompt_len + w.new_tokens
  teacher = forward_flops(w, w.batch, length, logits_positions=w.new_tokens)
  return rollout_flops(w) + teacher + 3 * teacher


# ---------------------------------------------------------------------------
# Measuring.


def profile_dir() -> str | None:
  """--profile's directory, or None (also when flags are not parsed)."""
  return _PROFILE.value if flags.FLAGS.is_parsed() else None


@contextlib.contextmanager
def trace(name: str):
  """With --profile, traces the block into `<profile>/<name>` (a second
  trace of one name gets `_2`, `_3`...); without, does nothing."""
  directory = profile_dir()
  if directory is None:
    yield
    return
  _traces[name] += 1
  run = re.sub(r'[^A-Za-z0-9.=-]+', '_', name).strip('_') or 'call'
  if _traces[name] > 1:
    run += f'_{_traces[name]}'
  with jax.profiler.trace(os.path.join(directory, run),
                          create_perfetto_trace=True):
    with jax.profiler.TraceAnnotation(name):
      yield


def time_fn(fn: Callable[[], Any], *, repeats: int = 5,
            min_time: float = 0.0, name: str = 'call') -> float:
  """Best wall time of `fn()` (blocked on its outputs), after one warm-up;
  with --profile, one more call is traced under `name` (`trace`)."""
  jax.block_until_ready(fn())
  best, total, n = float('inf'), 0.0, 0
  while n < repeats or total < min_time:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    elapsed = time.perf_counter() - start
    best, total, n = min(best, elapsed), total + elapsed, n + 1
  if profile_dir() is not None:
    with trace(name):
      jax.block_until_ready(fn())
  return best


def peak_flops(dtype=jnp.float32,
               shapes: Sequence[tuple[int, int, int]] = (
                   (2048, 2048, 2048), (1024, 1024, 1024), (512, 512, 512),
                   (256, 256, 1024), (1024, 256, 1024))) -> float:
  """This machine's matrix-multiply FLOP/s: the best over square products
  and products of the shapes small models use ([M, 256] x [256, 1024] fits
  in cache and runs faster on a CPU than a 2048^2 product)."""
  best = 0.0
  for m, k, n in shapes:
    key1, key2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(key1, (m, k), dtype)
    b = jax.random.normal(key2, (k, n), dtype)
    matmul = jax.jit(jnp.matmul)
    seconds = time_fn(lambda: matmul(a, b), repeats=10,
                      name=f'matmul {m}x{k}x{n} {jnp.dtype(dtype).name}')
    best = max(best, 2 * m * k * n / seconds)
  return best


def dense_flops_floor(w: Workload, rows: int, steps: int,
                      repeats: int = 3) -> float:
  """Seconds for just the dense layers of `steps` decode steps of `rows`
  sequences (q/k/v/o, MLP, vocabulary projection) as a scan of matmuls: the
  floor under the decode step, without attention, norms or sampling."""
  d = w.hidden_dim // w.num_heads
  e = w.hidden_dim
  keys = jax.random.split(jax.random.key(0), 5)
  qkv = jax.random.normal(keys[0], (w.num_layers, e, d * (w.num_heads + 2 * w.num_kv_heads))) / 16
  o = jax.random.normal(keys[1], (w.num_layers, w.num_heads * d, e)) / 16
  up = jax.random.normal(keys[2], (w.num_layers, e, 2 * w.mlp_dim)) / 16
  down = jax.random.normal(keys[3], (w.num_layers, w.mlp_dim, e)) / 32
  unembed = jax.random.normal(keys[4], (e, w.vocab_size)) / 16

  @jax.jit
  def run(x):
    def step(x, _):
      def layer(x, weights):
        qkv_l, o_l, up_l, down_l = weights
        h = (x @ qkv_l)[:, :w.num_heads * d] @ o_l
        g = (x + h) @ up_l
        return x + h + g[:, :w.mlp_dim] @ down_l, None
      x, _ = jax.lax.scan(layer, x, (qkv, o, up, down))
      return x / (1 + jnp.abs(x)), (x @ unembed)[:, 0]
    return jax.lax.scan(step, x, None, length=steps)[1]

  x = jax.random.normal(keys[0], (rows, e))
  return time_fn(lambda: run(x), repeats=repeats,
                 name=f'dense floor {rows} rows x {steps} steps')


def device_name() -> str:
  device = jax.devices()[0]
  return f'{device.platform}:{device.device_kind} x{jax.device_count()}'


def print_table(title: str, header: Sequence[str],
                rows: Sequence[Sequence[Any]]) -> None:
  cells = [[str(h) for h in header]] + [
      [f'{c:.4g}' if isinstance(c, float) else str(c) for c in row]
      for row in rows]
  widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
  print(f'\n{title}')
  for i, row in enumerate(cells):
    print('  '.join(c.rjust(w) for c, w in zip(row, widths)))
    if i == 0:
      print('  '.join('-' * w for w in widths))


def emit_json(result: dict) -> None:
  print(json.dumps(result, sort_keys=True))
