"""Reward-model over-optimisation in small (Gao et al. 2022, "Scaling laws
for reward model overoptimization").

A fixed, hidden "gold" reward plays the human; a proxy reward model learns it
from preference labels, and policies optimised against the proxy are scored
by the gold reward as they move away from the supervised policy:

  1. Supervised warm start on "a+b=" (`text_rl.warm_start`, under `sft/`).
  2. Pairs (`pairs/pairs.npz`): two samples of the warm-started policy per
     prompt, labelled by a Bradley-Terry draw on their gold rewards; training
     pairs from training prompts, held-out pairs from held-out prompts.
  3. Proxy reward model (`rm/`): the policy's trunk with a scalar head,
     Bradley-Terry loss on the training pairs; held-out accuracy on the
     held-out pairs. Its scores are standardised over the warm-start samples.
  4. Policies (`ppo_kl_coef<c>/`, `grpo_beta<c>/`, `dpo_beta<c>/`): PPO and
     GRPO maximise the proxy at each KL coefficient c; DPO trains on the same
     training pairs at each beta. Every `eval.every` steps, samples of the
     policy on held-out prompts give `eval/gold_reward`, `eval/proxy_reward`
     and `eval/kl`, the sequence-level KL(pi || pi_sft) (sum over tokens of
     log pi - log pi_sft of the sampled tokens, whose mean is the KL).

Outputs under the workdir: each stage's metrics.jsonl, TensorBoard events and
orbax checkpoints (a restarted run skips or resumes each stage),
`gold_vs_kl.png` (gold and proxy reward against sqrt(KL), every run) and
`summary.json` (`rm/heldout_accuracy`, `gold_reward/sft`, and per method M
`gold_reward/M`, `proxy_reward/M`, `kl/M` at the end of M's first-listed
coefficient, plus every run's end and peak figures under `run/<name>/...`).
A method whose coefficient list is empty is left out.
"""

import dataclasses
import functools
import json
import math
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import matplotlib
import ml_collections
import numpy as np

from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.algos import preference
from jaxrlgen.core import rollout as rollout_lib
from jaxrlgen.core.types import Rollout
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import pipeline
from jaxrlgen.data import preferences as pref_data
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.envs.text import Sampling
from jaxrlgen.envs.text import TextEnv
from jaxrlgen.models import reward_model as rm
from jaxrlgen.models import transformer as tfm
from jaxrlgen.rewards import learned
from jaxrlgen.rewards import text as text_rewards
from jaxrlgen.train import loop
from jaxrlgen.train import optim
from jaxrlgen.train import plots
from jaxrlgen.train import step as step_lib
from jaxrlgen.recipes import text_rl
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

matplotlib.use('Agg')  # Headless, as in train/plots.py.
# pylint: disable-next=g-import-not-at-top,wrong-import-position
import matplotlib.pyplot as plt

METHODS = ('ppo', 'grpo', 'dpo')
# The config field that holds each method's KL coefficients, and the
# algorithm field each coefficient goes to.
COEF_FIELDS = {'ppo': ('kl_coefs', 'kl_coef'), 'grpo': ('betas', 'beta'),
               'dpo': ('betas', 'beta')}
EVAL_KEYS = ('eval/gold_reward', 'eval/proxy_reward', 'eval/kl')


def gold_reward(rollout: Rollout, batch, *, eos_id: int,
                scale: float) -> jax.Array:
  """The hidden "human": f32[B] in [0, 1], exp(-|value - answer| / scale).

  A completion that is not an integer followed by EOS gets 0. Smooth in the
  answer's error, so that near misses are preferred to far ones and labels
  carry information beyond right / wrong.
  """
  value, ok = text_rewards.parse_integer(rollout.actions, rollout.mask, eos_id)
  ok = ok & text_rewards.ended_with_eos(rollout, eos_id)
  error = jnp.abs(value - batch['answer']).astype(jnp.float32)
  return jnp.where(ok, jnp.exp(-error / scale), 0.0)


def run_name(method: str, coef: float) -> str:
  return f'{method}_{COEF_FIELDS[method][1]}{coef:g}'


def validate(config: ml_collections.ConfigDict, tokenizer: ByteTokenizer,
             model_cfg: tfm.TransformerConfig,
             mesh: jax.sharding.Mesh) -> None:
  """Checks the config before anything is computed; errors name the field."""
  if jax.process_count() > 1:
    raise ValueError('The rlhf_gold study runs on one host (its pair-labelling '
                     'stage gathers samples there); use one process, with any '
                     'config.mesh over its devices.')
  shards = parallel.batch_size_divisor(mesh)
  if tokenizer.vocab_size > model_cfg.vocab_size:
    raise ValueError(f'The tokenizer has {tokenizer.vocab_size} tokens but '
                     f'config.model.vocab_size={model_cfg.vocab_size}; raise '
                     'config.model.vocab_size.')
  if not model_cfg.value_head:
    raise ValueError("config.model.value_head must be True: PPO's critic and "
                     'the reward model are scalar heads on the trunk.')
  need = config.data.max_prompt_len + max(config.rl.max_new_tokens,
                                          config.data.max_target_len)
  if need > model_cfg.max_seq_len:
    raise ValueError(
        f'config.data.max_prompt_len + config.rl.max_new_tokens = {need} '
        f'tokens do not fit config.model.max_seq_len={model_cfg.max_seq_len}; '
        'shorten them or raise config.model.max_seq_len.')
  positive = {
      'total_steps': config.total_steps, 'log_every': config.log_every,
      'sft.batch_size': config.sft.batch_size,
      'rl.batch_size': config.rl.batch_size,
      'rl.group_size': config.rl.group_size,
      'rl.max_new_tokens': config.rl.max_new_tokens,
      'gold.scale': config.gold.scale,
      'pairs.num_train': config.pairs.num_train,
      'pairs.num_heldout': config.pairs.num_heldout,
      'pairs.batch_size': config.pairs.batch_size,
      'pairs.temperature': config.pairs.temperature,
      'rm.steps': config.rm.steps, 'rm.batch_size': config.rm.batch_size,
      'rm.ensemble_size': config.rm.ensemble_size,
      'dpo.steps': config.dpo.steps, 'dpo.batch_size': config.dpo.batch_size,
      'eval.every': config.eval.every,
      'eval.batch_size': config.eval.batch_size,
      'eval.samples': config.eval.samples,
  }
  for name, value in positive.items():
    if not value > 0:
      raise ValueError(f'config.{name}={value} must be positive.')
  if config.rl.group_size < 2:
    raise ValueError(f'config.rl.group_size={config.rl.group_size}: GRPO needs '
                     'at least 2 samples per prompt.')
  if config.rl.batch_size % config.rl.group_size:
    raise ValueError(f'config.rl.batch_size={config.rl.batch_size} must be a '
                     'multiple of config.rl.group_size='
                     f'{config.rl.group_size}.')
  for name in ('sft.batch_size', 'eval.batch_size', 'pairs.batch_size',
               'rm.batch_size', 'dpo.batch_size'):
    section, field = name.split('.')
    if config[section][field] % shards:
      raise ValueError(f'config.{name}={config[section][field]} must be '
                       f'divisible by the {shards} batch shards (mesh data x '
                       'fsdp).')
  if (config.rl.batch_size // config.rl.group_size) % shards:
    raise ValueError('config.rl.batch_size / config.rl.group_size prompts per '
                     f'step must be divisible by the {shards} batch shards '
                     '(mesh data x fsdp).')
  if config.pairs.label not in pref_data.LABELS:
    raise ValueError(f'config.pairs.label={config.pairs.label!r}; known: '
                     f'{pref_data.LABELS}.')
  if config.rm.std_coef and config.rm.ensemble_size < 2:
    raise ValueError(f'config.rm.std_coef={config.rm.std_coef} needs an '
                     'ensemble: set config.rm.ensemble_size >= 2.')
  for name in ('pairs.num_train', 'pairs.num_heldout'):
    value = config.pairs[name.split('.')[1]]
    if value % config.pairs.batch_size:
      raise ValueError(f'config.{name}={value} must be a multiple of '
                       f'config.pairs.batch_size={config.pairs.batch_size}.')
  for name, value in (('pairs.num_heldout', config.pairs.num_heldout),
                      ('eval.batch_size', config.eval.batch_size)):
    if value > config.data.num_test:
      raise ValueError(f'config.{name}={value} needs as many held-out '
                       f'prompts; config.data.num_test={config.data.num_test}.')
  for method in METHODS:
    field, _ = COEF_FIELDS[method]
    coefs = list(config[method][field])
    if any(c < 0 or (method == 'dpo' and c == 0) for c in coefs):
      raise ValueError(f'config.{method}.{field}={coefs} must be '
                       f'{"> 0" if method == "dpo" else ">= 0"}.')
    if len(set(coefs)) != len(coefs):
      raise ValueError(f'config.{method}.{field}={coefs} repeats a value.')
    if method != 'dpo':
      if config[method].algo.name != method:
        raise ValueError(f'config.{method}.algo.name='
                         f'{config[method].algo.name!r} must be {method!r}.')
      algos.make(config[method].algo)  # Unknown or bad fields fail here.
  if not any(config[m][COEF_FIELDS[m][0]] for m in METHODS):
    raise ValueError('config.ppo.kl_coefs, config.grpo.betas and '
                     'config.dpo.betas are all empty: give at least one run.')
  try:
    preference.PreferenceConfig(loss=config.dpo.loss,
                                beta=min(config.dpo.betas, default=1.0),
                                label_smoothing=config.dpo.label_smoothing)
  except ValueError as e:
    raise ValueError(str(e).replace('config.algo.', 'config.dpo.')) from e


def _policy_env(config, model, num_samples: int) -> TextEnv:
  tok = ByteTokenizer()
  return TextEnv(model, max_new_tokens=config.rl.max_new_tokens,
                 sampling=Sampling(temperature=config.rl.temperature,
                                   top_k=config.rl.top_k,
                                   top_p=config.rl.top_p,
                                   method=config.rl.sampling_method),
                 eos_id=tok.eos_id, pad_id=tok.pad_id, num_samples=num_samples,
                 logprob_chunk=config.rl.logprob_chunk,
                 cache_segments=config.rl.cache_segments)


def _rl_fields(batch):
  return {k: batch[k] for k in ('prompt', 'prompt_mask', 'answer')}


def _prompts(task: text_rl.Task, split: str, start: int, n: int):
  records = task.train if split == 'train' else task.test
  return _rl_fields(task.collate(pipeline.get_batch(records,
                                                    range(start, start + n))))


def _copy(tree):
  # A new buffer per leaf: a state built from the warm start's parameters is
  # donated to its steps, and the warm start's own buffers must survive it.
  return jax.tree.map(jnp.copy, tree)


# --- Stage 2: preference pairs ----------------------------------------------

def make_pairs(config, workdir: epath.Path, task: text_rl.Task, env: TextEnv,
               sft_params, gold_fn, layout: parallel.Layout):
  """Training and held-out triples labelled by the gold reward (cached)."""
  path = workdir / 'pairs' / 'pairs.npz'
  if path.exists():
    with path.open('rb') as f:
      saved = dict(np.load(f))
    split = lambda prefix: {k[len(prefix):]: v for k, v in saved.items()
                            if k.startswith(prefix)}
    return (pref_data.PreferenceData(split('train/')),
            pref_data.PreferenceData(split('heldout/')))
  pair_env = dataclasses.replace(env, num_samples=2)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def sample(params, batch, key):
    rollout = pair_env.rollout(params, batch['prompt'], batch['prompt_mask'],
                               key)
    gold = gold_fn(rollout, rollout_lib.repeat_batch(batch, 2))
    return rollout.actions, rollout.mask, gold

  rng = np.random.default_rng([config.seed, 3])
  key = jax.random.fold_in(jax.random.key(config.seed), 3)
  out = {}
  n = config.pairs.batch_size
  for split, num, records in (('train', config.pairs.num_train, task.train),
                              ('heldout', config.pairs.num_heldout, task.test)):
    parts = []
    for start in range(0, num, n):
      # Training prompts cycle when there are more pairs than prompts, each
      # time with fresh samples.
      batch = _rl_fields(task.collate(pipeline.get_batch(
          records, [(start + i) % len(records) for i in range(n)])))
      key, sub = jax.random.split(key)
      actions, mask, gold = jax.device_get(
          sample(sft_params, layout.batch(batch), sub))
      t = actions.shape[1]
      gold = gold.reshape(n, 2)
      chosen, rejected = pref_data.pairs_from_samples(
          gold, rng, strategy='random', label=config.pairs.label,
          temperature=config.pairs.temperature)
      triples = pref_data.triples_from_samples(
          batch['prompt'], batch['prompt_mask'], actions.reshape(n, 2, t),
          mask.reshape(n, 2, t), chosen, rejected)
      rows = np.arange(n)
      triples['gold_chosen'] = gold[rows, chosen]
      triples['gold_rejected'] = gold[rows, rejected]
      parts.append(triples)
    out[split] = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
  path.parent.mkdir(parents=True, exist_ok=True)
  flat = {f'{s}/{k}': v for s, d in out.items() for k, v in d.items()}
  with path.open('wb') as f:
    np.savez(f, **flat)
  return (pref_data.PreferenceData(out['train']),
          pref_data.PreferenceData(out['heldout']))


def _pair_fields(batch):
  return {k: batch[k] for k in pref_data.FIELDS}


def _fit(name: str, workdir: epath.Path, state, *, step_fn, batch_fn, key,
         total_steps: int, log_every: int, eval_every: int, eval_fn,
         checkpoint_every: int, max_checkpoints: int, show=('reward/mean',),
         plot_keys=('reward/mean', 'loss', 'kl', *EVAL_KEYS)):
  """One stage's run under `workdir/name` with the shared loop.

  A finished run is restored and left as it is (its plot too).
  Returns:
    (final state, run directory, whether any step ran now).
  """
  run_dir = workdir / name
  state, trained = loop.run_stage(
      run_dir, state, step_fn=step_fn, batch_fn=batch_fn, key=key,
      config=loop.LoopConfig(total_steps=total_steps, log_every=log_every,
                             eval_every=eval_every,
                             checkpoint_every=checkpoint_every,
                             progress_desc=name, progress_show=show),
      eval_fn=eval_fn, max_checkpoints=max_checkpoints,
      plot=(plot_keys, 'training.png', name))
  return state, run_dir, trained


# --- Stage 3: the proxy reward model -----------------------------------------

def train_reward_model(config, workdir: epath.Path, model_cfg, sft_params,
                       train_pairs, heldout_pairs, layout: parallel.Layout):
  """Trains the proxy (stage 3); returns its model, params, held-out metrics."""
  rm_cfg = rm.reward_model_config(model_cfg)
  model = tfm.Transformer(rm_cfg)
  k = config.rm.ensemble_size
  init_key = jax.random.fold_in(jax.random.key(config.seed), 4)
  tx = optim.make(config.rm.optimizer, config.rm.steps)

  def build_state(lm_params):
    members = [rm.init_from_lm(lm_params, rm_cfg,
                               jax.random.fold_in(init_key, i))
               for i in range(k)]
    params = members[0] if k == 1 else rm.stack(members)
    opt_state = tx.init(params) if k == 1 else jax.vmap(tx.init)(params)
    return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                      opt_state=opt_state)

  state = layout.init(build_state, sft_params)
  score_fn = functools.partial(rm.score_completions, model)
  step_fn = layout.jit_step(functools.partial(
      preference.reward_model_step, score_fn=score_fn, tx=tx,
      ensemble_size=k), state)
  heldout = layout.batch(_pair_fields(heldout_pairs.arrays))
  gold_chosen = heldout_pairs.arrays['gold_chosen']
  gold_rejected = heldout_pairs.arrays['gold_rejected']
  differ = gold_chosen != gold_rejected
  gold_order = np.where(gold_chosen > gold_rejected, 1.0, -1.0)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def scores(params, batch):
    fn = functools.partial(preference.pair_scores, score_fn)
    if k == 1:
      return fn(params, batch)
    chosen, rejected = jax.vmap(fn, in_axes=(0, None))(params, batch)
    return jnp.mean(chosen, axis=0), jnp.mean(rejected, axis=0)

  def evaluate(state):
    chosen, rejected = jax.device_get(scores(state.params, heldout))
    margin = chosen - rejected
    metrics = {'rm/heldout_accuracy': float(np.mean(margin > 0)),
               'rm/heldout_loss': float(np.mean(np.logaddexp(0.0, -margin)))}
    # Against the noise-free gold order too, of the pairs whose gold rewards
    # differ (undefined when they all tie).
    if differ.any():
      metrics['rm/heldout_gold_accuracy'] = float(np.mean(
          (margin * gold_order > 0)[differ]))
    return metrics

  state, run_dir, _ = _fit(
      'rm', workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(_pair_fields(train_pairs.batch(
          s, config.rm.batch_size, seed=config.seed + 4))),
      key=jax.random.fold_in(jax.random.key(config.seed), 5),
      total_steps=config.rm.steps, log_every=config.rm.log_every,
      eval_every=config.rm.eval_every, eval_fn=evaluate,
      checkpoint_every=config.rm.steps, max_checkpoints=1,
      show=('loss', 'accuracy'),
      plot_keys=('loss', 'accuracy', 'rm/heldout_accuracy',
                 'rm/heldout_gold_accuracy'))
  # The loop evaluated the final model last.
  final = [r for r in writers.read_metrics(str(run_dir))
           if 'rm/heldout_accuracy' in r][-1]
  return model, state.params, {k: v for k, v in final.items()
                               if k.startswith('rm/') and v is not None}


def proxy_reward_fn(config, workdir: epath.Path, model, params, train_pairs,
                    layout: parallel.Layout):
  """The proxy as a reward, standardised over the warm start's samples (the
  training pairs' completions); the statistics are kept in
  `rm/proxy_stats.json`."""
  ensemble = config.rm.ensemble_size > 1
  raw = learned.reward_model_reward(model, params, ensemble=ensemble,
                                    std_coef=config.rm.std_coef)
  path = workdir / 'rm' / 'proxy_stats.json'
  if path.exists():
    stats = json.loads(path.read_text())
  else:
    score = jax.jit(lambda batch: raw(preference.completion_rollout(
        batch['prompt'], batch['prompt_mask'], batch['completion'],
        batch['completion_mask']), None),
                    out_shardings=parallel.replicated(layout.mesh))
    arrays = train_pairs.arrays
    values = []
    n = config.pairs.batch_size
    for name in ('chosen', 'rejected'):
      for i in range(0, len(train_pairs), n):
        batch = {'prompt': arrays['prompt'][i:i + n],
                 'prompt_mask': arrays['prompt_mask'][i:i + n],
                 'completion': arrays[name][i:i + n],
                 'completion_mask': arrays[f'{name}_mask'][i:i + n]}
        values.append(jax.device_get(score(layout.batch(batch))))
    values = np.concatenate(values)
    stats = {'offset': float(np.mean(values)),
             'scale': float(np.std(values) + 1e-6)}
    path.write_text(json.dumps(stats))
  return learned.reward_model_reward(model, params, ensemble=ensemble,
                                     std_coef=config.rm.std_coef, **stats)


# --- Stage 4: policies against the proxy -------------------------------------

def make_evaluator(config, task, env: TextEnv, ref_params, gold_fn, proxy_fn,
                   layout: parallel.Layout):
  """params -> gold, proxy and KL(pi || pi_sft) of held-out samples."""
  eval_env = dataclasses.replace(env, sampling=Sampling(),
                                 num_samples=config.eval.samples)
  batch = layout.batch(_prompts(task, 'test', 0, config.eval.batch_size))
  key = jax.random.fold_in(jax.random.key(config.seed), 6)

  @functools.partial(jax.jit, out_shardings=parallel.replicated(layout.mesh))
  def measure(params, ref_params, batch, key):
    rollout = eval_env.rollout(params, batch['prompt'], batch['prompt_mask'],
                               key)
    per_seq = rollout_lib.repeat_batch(batch, eval_env.num_samples)
    ref_logp = eval_env.evaluate(ref_params, rollout).logp
    # Samples at temperature 1 carry pi's own log-probs: sum_t log pi -
    # log pi_sft is an unbiased estimate of the sequence-level KL.
    kl = jnp.sum(learned.per_token_kl(rollout.logp, ref_logp, rollout.mask),
                 axis=1)
    return {'eval/gold_reward': jnp.mean(gold_fn(rollout, per_seq)),
            'eval/proxy_reward': jnp.mean(proxy_fn(rollout, per_seq)),
            'eval/kl': jnp.mean(kl),
            'eval/exact_match': jnp.mean(text_rewards.exact_match(
                rollout, per_seq, eos_id=env.eos_id)),
            'eval/mean_length': jnp.mean(jnp.sum(rollout.mask, axis=1))}

  def evaluate(params) -> dict[str, float]:
    metrics = loop.to_python(measure(params, ref_params, batch, key))
    metrics['eval/sqrt_kl'] = math.sqrt(max(metrics['eval/kl'], 0.0))
    return metrics

  return evaluate


def rl_run(config, workdir, method: str, coef: float, task, env, sft_params,
           proxy_fn, evaluate, layout: parallel.Layout):
  """PPO or GRPO against the proxy at one KL coefficient.

  Returns:
    (run directory, whether any step ran now).
  """
  algo_cfg = ml_collections.ConfigDict(config[method].algo.to_dict())
  algo_cfg[COEF_FIELDS[method][1]] = coef
  algo = algos.make(algo_cfg)
  tx = optim.make(config.rl.optimizer, config.total_steps)
  init_key = jax.random.fold_in(jax.random.key(config.seed), 7)

  def build_state(sft_params):
    params = algo.init_params(env, _copy(sft_params), init_key)
    return TrainState.create(
        params, tx,
        ref_params=_copy(sft_params) if algo.uses_reference else None,
        algo_state=algos.init_algo_state(algo, params))

  state = layout.init(build_state, sft_params)
  step_fn = layout.jit_step(functools.partial(
      step_lib.rl_step, env=env, reward_fn=proxy_fn, algo=algo, tx=tx), state)
  num_prompts = config.rl.batch_size // config.rl.group_size
  _, run_dir, trained = _fit(
      run_name(method, coef), workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(_rl_fields(task.batch(s, num_prompts))),
      key=jax.random.fold_in(jax.random.key(config.seed), 8),
      total_steps=config.total_steps, log_every=config.log_every,
      eval_every=config.eval.every,
      eval_fn=lambda s: evaluate(algo.policy_params(s.params)),
      checkpoint_every=config.checkpoint_every,
      max_checkpoints=config.max_checkpoints)
  return run_dir, trained


def dpo_run(config, workdir, beta: float, env, sft_params, train_pairs,
            evaluate, layout: parallel.Layout):
  """Offline DPO (or `config.dpo.loss`) on the training pairs.

  Returns:
    (run directory, whether any step ran now).
  """
  cfg = preference.PreferenceConfig(loss=config.dpo.loss, beta=beta,
                                    label_smoothing=config.dpo.label_smoothing)
  tx = optim.make(config.dpo.optimizer, config.dpo.steps)

  def build_state(sft_params):
    params = _copy(sft_params)
    return TrainState.create(
        params, tx,
        ref_params=_copy(sft_params) if cfg.uses_reference else None)

  state = layout.init(build_state, sft_params)
  dpo_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
  step_fn = layout.jit_step(functools.partial(
      preference.offline_step, cfg=cfg, env=dpo_env, tx=tx), state)
  _, run_dir, trained = _fit(
      run_name('dpo', beta), workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(_pair_fields(train_pairs.batch(
          s, config.dpo.batch_size, seed=config.seed + 9))),
      key=jax.random.fold_in(jax.random.key(config.seed), 9),
      total_steps=config.dpo.steps, log_every=config.log_every,
      eval_every=config.eval.every, eval_fn=lambda s: evaluate(s.params),
      checkpoint_every=config.checkpoint_every,
      max_checkpoints=config.max_checkpoints, show=('loss', 'accuracy'))
  return run_dir, trained


# --- Summary and plot --------------------------------------------------------

def _eval_records(run_dir) -> list[dict]:
  return [r for r in writers.read_metrics(str(run_dir))
          if all(r.get(k) is not None for k in EVAL_KEYS)]


def plot_gold_vs_kl(curves: dict, sft: dict, path) -> None:
  """Gold and proxy reward against sqrt(KL), a row per method run."""
  methods = [m for m in METHODS if any(n.startswith(m + '_') for n in curves)]
  fig, axes = plt.subplots(len(methods), 2, figsize=(10, 3.2 * len(methods)),
                           squeeze=False)
  try:
    for row, method in enumerate(methods):
      for col, (key, label) in enumerate((('eval/gold_reward', 'gold reward'),
                                          ('eval/proxy_reward',
                                           'proxy reward (standardised)'))):
        ax = axes[row, col]
        for name, records in curves.items():
          if not name.startswith(method + '_'):
            continue
          xs = [math.sqrt(max(r['eval/kl'], 0.0)) for r in records]
          ax.plot(xs, [r[key] for r in records], marker='.', label=name)
        ax.axhline(sft[key], color='gray', linestyle=':', linewidth=1,
                   label='sft')
        ax.set_title(f'{method}: {label}')
        ax.set_xlabel('sqrt(KL(pi || pi_sft)) [sqrt nats]')
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle('Reward over-optimisation (Gao et al. 2022) in small')
    fig.tight_layout()
    path = epath.Path(path)
    with path.open('wb') as f:
      fig.savefig(f, format='png', dpi=100)
  finally:
    plt.close(fig)


def summarize(config, rm_metrics: dict, sft: dict, curves: dict,
              wall_time: float) -> dict:
  summary = {'wall_time_s': wall_time, **rm_metrics,
             'gold_reward/sft': sft['eval/gold_reward'],
             'proxy_reward/sft': sft['eval/proxy_reward'],
             'exact_match/sft': sft['eval/exact_match']}
  for name, records in curves.items():
    last = records[-1]
    peak = max(records, key=lambda r: r['eval/gold_reward'])
    summary[f'run/{name}/gold_reward'] = last['eval/gold_reward']
    summary[f'run/{name}/proxy_reward'] = last['eval/proxy_reward']
    summary[f'run/{name}/kl'] = last['eval/kl']
    summary[f'run/{name}/exact_match'] = last['eval/exact_match']
    summary[f'run/{name}/peak_gold_reward'] = peak['eval/gold_reward']
    summary[f'run/{name}/kl_at_peak_gold'] = peak['eval/kl']
  for method in METHODS:
    coefs = config[method][COEF_FIELDS[method][0]]
    if not coefs:  # The method was left out.
      continue
    main = curves[run_name(method, coefs[0])][-1]
    summary[f'gold_reward/{method}'] = main['eval/gold_reward']
    summary[f'proxy_reward/{method}'] = main['eval/proxy_reward']
    summary[f'kl/{method}'] = main['eval/kl']
  return summary


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs (or resumes) the whole study; returns the summary."""
  start_time = time.time()
  workdir = workdir_lib.prepare_workdir(workdir)
  tokenizer = ByteTokenizer()
  model_cfg = tfm.TransformerConfig(**config.model)
  mesh = parallel.make_mesh(config.mesh)
  validate(config, tokenizer, model_cfg, mesh)
  with parallel.activate(mesh):
    return _run(config, workdir, tokenizer, model_cfg,
                parallel.Layout(mesh, text_rl.model_logical_axes(model_cfg)),
                start_time)


def _run(config, workdir, tokenizer, model_cfg, layout: parallel.Layout,
         start_time: float) -> dict:
  model = tfm.Transformer(model_cfg)
  env = _policy_env(config, model, config.rl.group_size)
  gold_fn = functools.partial(gold_reward, eos_id=tokenizer.eos_id,
                              scale=config.gold.scale)
  task = text_rl.load_task(config, workdir, tokenizer)

  params = layout.init(functools.partial(tfm.init_params, model_cfg),
                       jax.random.key(config.seed))
  if config.sft.steps:
    sft_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
    params = text_rl.warm_start(config, workdir, task, sft_env, params, layout)
  sft_params = params

  train_pairs, heldout_pairs = make_pairs(config, workdir, task, env,
                                          sft_params, gold_fn, layout)
  rm_model, rm_params, rm_metrics = train_reward_model(
      config, workdir, model_cfg, sft_params, train_pairs, heldout_pairs,
      layout)
  logging.warning('Proxy reward model: held-out accuracy %.3f (gold order '
                  '%.3f).', rm_metrics['rm/heldout_accuracy'],
                  rm_metrics.get('rm/heldout_gold_accuracy', float('nan')))
  proxy_fn = proxy_reward_fn(config, workdir, rm_model, rm_params,
                             train_pairs, layout)
  evaluate = make_evaluator(config, task, env, sft_params, gold_fn, proxy_fn,
                            layout)

  runs = {}
  for method in ('ppo', 'grpo'):
    for coef in config[method][COEF_FIELDS[method][0]]:
      runs[run_name(method, coef)] = rl_run(
          config, workdir, method, coef, task, env, sft_params, proxy_fn,
          evaluate, layout)
  for beta in config.dpo.betas:
    runs[run_name('dpo', beta)] = dpo_run(
        config, workdir, beta, env, sft_params, train_pairs, evaluate, layout)
  run_dirs = {name: run_dir for name, (run_dir, _) in runs.items()}
  curves = {name: _eval_records(d) for name, d in run_dirs.items()}
  # Every run starts from the warm start, measured with the same samples
  # (fixed key and prompts): their step-0 point is the warm start's.
  sft = curves[next(iter(curves))][0]
  summary = summarize(config, rm_metrics, sft, curves,
                      time.time() - start_time)
  plot_path = workdir / 'gold_vs_kl.png'
  if parallel.is_primary() and (
      not plot_path.exists() or any(trained for _, trained in runs.values())):
    plot_gold_vs_kl(curves, sft, plot_path)
    writers.write_summary(str(workdir), summary)
  return summary
