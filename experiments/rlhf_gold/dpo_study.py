"""Why DPO barely moves the gold reward in the rlhf_gold study (issue 22).

For each seed, reuses (or runs) the study's first stages in
`<workdir>/seed<s>/` (the layout of a study workdir; `--source=<dir>` copies
the warm start, pairs and proxy of finished studies `<dir>/seed<s>/` first),
then trains one DPO-like run per variant on the same training pairs (or,
online, against the same proxy) and measures, at every evaluation:

  - the study's own figures: gold, proxy and KL(pi || pi_sft) of held-out
    samples (`recipe.make_evaluator`);
  - the accuracy of DPO's implicit reward, beta * log(pi / pi_sft) of a
    completion (Rafailov et al. 2023), on the 512 held-out pairs against
    their noisy labels and against the gold order, and on a fixed subset of
    the training pairs.

  python -m experiments.rlhf_gold.dpo_study \\
      --config=experiments/rlhf_gold/config.py --workdir=/tmp/rlhf_dpo \\
      --source=/tmp/rseeds --seeds=0,1,2 --variants=default,ipo,online

Writes under `<workdir>`: `dpo_study.json` (per seed: the held-out pairs'
statistics and noise ceiling from `diagnose.pair_stats`, the proxy's
accuracies, a check of the reference log-probs, and per variant its curves
and final figures; and their mean and spread over seeds), `dpo_study.md`
(the tables) and `dpo_study.png` (held-out implicit-reward accuracy against
steps, and gold against sqrt(KL)). Each run's last held-out and training
margins are kept in `seed<s>/dpo_study/<variant>/margins.npz` (the test
recomputes the reported accuracies from them).
"""

# The study's own private helpers (_copy, _fit, _prompts) are used as the
# study's other drivers use its public ones: this file is part of it.
# pylint: disable=protected-access

import dataclasses
import functools
import json
import math
import shutil
import time

from absl import app
from absl import flags
from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments.rlhf_gold import diagnose
from experiments.rlhf_gold import recipe
from jaxrlgen import algos
from jaxrlgen import parallel
from jaxrlgen.algos import preference
from jaxrlgen.core.types import TrainState
from jaxrlgen.data import preferences as pref_data
from jaxrlgen.envs.text import Sampling
from jaxrlgen.train import optim
from jaxrlgen.train import plots
from jaxrlgen.train import step as step_lib
from jaxrlgen.train import writers

# Variants: changes to `config.dpo` (DPOSweepConfig fields; `beta` replaces
# the betas by one; an `optimizer` entry replaces fields of the optimizer);
# `online: True` trains online DPO (`preference.make_online_dpo`) on the
# policy's own samples (config.rl's batch and group), each prompt's best and
# worst of its group under the proxy forming the pair, for `steps` steps.
VARIANTS = {
    'default': {},  # The study's run: beta 0.1, 400 steps at 1e-4.
    'beta0.03': {'beta': 0.03},
    'beta0.5': {'beta': 0.5},
    'lr1e-3': {'optimizer': {'learning_rate': 1e-3}},
    'epochs8': {'steps': 2048},
    'lr1e-3_epochs8': {'steps': 2048, 'optimizer': {'learning_rate': 1e-3}},
    'ipo': {'loss': 'ipo'},
    'ipo_lr1e-3': {'loss': 'ipo', 'optimizer': {'learning_rate': 1e-3}},
    'online': {'online': True},
    'online_lr1e-3': {'online': True, 'optimizer': {'learning_rate': 1e-3}},
}
# Stages of a study workdir that `--source` copies.
REUSED = ('data', 'sft', 'pairs', 'rm_trunk', 'rm')
# Training pairs (the first ones) whose implicit-reward accuracy is tracked.
TRAIN_SUBSET = 2048


def implicit_accuracy(margin, gold_chosen, gold_rejected) -> dict:
  """Accuracies of pair margins (chosen minus rejected score, f32[N]).

  `accuracy`: against the labels; `gold_accuracy`: against the gold order,
  over the pairs whose gold rewards differ. A zero margin (identical
  completions; every pair before the first step) counts half, as a coin
  flip would, the convention of the noise ceiling and of the DPO loss's own
  `accuracy` metric.
  """
  margin = np.asarray(margin, np.float64)
  right = lambda m: np.where(m > 0, 1.0, np.where(m == 0, 0.5, 0.0))
  diff = np.asarray(gold_chosen, np.float64) - np.asarray(gold_rejected,
                                                          np.float64)
  differ = diff != 0
  return {'accuracy': float(np.mean(right(margin))),
          'gold_accuracy': float(np.mean(right(margin * np.sign(diff))[differ]))
                           if differ.any() else float('nan'),
          'margin': float(np.mean(margin))}


@dataclasses.dataclass(frozen=True)
class Variant:
  """One run of the study: a DPO section and whether it samples online."""

  dpo: recipe.DPOSweepConfig
  online: bool

  @property
  def beta(self) -> float:
    return self.dpo.betas[0]


def make_variant(dpo: recipe.DPOSweepConfig, name: str) -> Variant:
  changes = dict(VARIANTS[name])
  online = changes.pop('online', False)
  if 'beta' in changes:
    changes['betas'] = (changes.pop('beta'),)
  else:
    changes['betas'] = dpo.betas[:1]
  if 'optimizer' in changes:
    changes['optimizer'] = dataclasses.replace(dpo.optimizer,
                                               **changes['optimizer'])
  return Variant(dataclasses.replace(dpo, **changes), online)


def copy_stages(source: epath.Path, seed_dir: epath.Path) -> None:
  """The finished stages of a study workdir, copied where missing."""
  for name in REUSED:
    if (source / name).exists() and not (seed_dir / name).exists():
      shutil.copytree(source / name, seed_dir / name)


def online_run(settings: recipe.Settings, workdir: epath.Path, cfg, dpo,
               task, env, sft_params, proxy_fn, evaluate,
               layout: parallel.Layout):
  """Online DPO against the proxy, the study's RL loop (`recipe.rl_run`)
  with `preference.make_online_dpo` and `dpo`'s steps and optimizer."""
  run_cfg = settings.run
  algo = preference.make_online_dpo(cfg)
  tx = optim.make(dpo.optimizer, dpo.steps)

  def build_state(sft_params):
    params = recipe._copy(sft_params)
    return TrainState.create(params, tx, ref_params=recipe._copy(sft_params),
                             algo_state=algos.init_algo_state(algo, params))

  state = layout.init(build_state, sft_params)
  step_fn = layout.jit_step(functools.partial(
      step_lib.rl_step, env=env, reward_fn=proxy_fn, algo=algo, tx=tx), state)
  num_prompts = settings.rl.num_prompts
  _, run_dir, trained = recipe._fit(
      f'online_dpo_beta{cfg.beta:g}', workdir, state, step_fn=step_fn,
      batch_fn=lambda s: layout.batch(task.rl_fields(task.batch(
          s, num_prompts))),
      key=jax.random.fold_in(jax.random.key(run_cfg.seed), 8),
      total_steps=dpo.steps, log_every=run_cfg.log_every,
      eval_every=settings.eval.every, eval_fn=lambda s: evaluate(s.params),
      checkpoint_every=run_cfg.checkpoint_every,
      max_checkpoints=run_cfg.max_checkpoints, show=('reward/mean', 'loss'))
  return run_dir, trained


class ImplicitReward:
  """Margins of DPO's implicit reward on fixed pairs, against the warm
  start's log-prob sums (computed once)."""

  def __init__(self, env, sft_params, pairs, layout: parallel.Layout,
               n: int | None = None):
    arrays = pairs.arrays if n is None else pairs.take(np.arange(n))
    self.gold_chosen = arrays['gold_chosen']
    self.gold_rejected = arrays['gold_rejected']
    self._batch = layout.batch({k: arrays[k] for k in pref_data.FIELDS})
    self._logp = jax.jit(
        lambda params, batch: preference.pair_logp(env, params, batch),
        out_shardings=parallel.replicated(layout.mesh))
    self._ref = [np.asarray(x) for x in jax.device_get(
        self._logp(sft_params, self._batch))]

  def margins(self, params, beta: float) -> np.ndarray:
    """f32[N] beta * [log-ratio of chosen - log-ratio of rejected]."""
    chosen, rejected = jax.device_get(self._logp(params, self._batch))
    return beta * ((np.asarray(chosen) - self._ref[0])
                   - (np.asarray(rejected) - self._ref[1]))


def check_reference_logp(env, params, task, layout: parallel.Layout,
                         seed: int, n: int) -> float:
  """Max |sampled - teacher-forced| log-prob sum of completions scored the
  way DPO scores its pairs (`preference.completion_rollout`), over `n`
  held-out prompts: the reference sums DPO subtracts are those of the
  policy that sampled the pairs."""
  sample_env = dataclasses.replace(env, sampling=Sampling(), num_samples=1)
  batch = layout.batch(recipe._prompts(task, 'test', 0, n))

  @jax.jit
  def both(params, batch, key):
    rollout = sample_env.rollout(params, batch, key)
    sampled = jnp.sum(jnp.where(rollout.mask, rollout.logp, 0.0), axis=1)
    forced = preference.sequence_logp(sample_env, params,
                                      preference.completion_rollout(
                                          batch['prompt'],
                                          batch['prompt_mask'],
                                          rollout.actions, rollout.mask))
    return sampled, forced

  sampled, forced = jax.device_get(both(params, batch,
                                        jax.random.key(seed + 100)))
  return float(np.max(np.abs(sampled - forced)))


def _curve(run_dir: epath.Path) -> dict[str, list]:
  records = [r for r in writers.read_metrics(str(run_dir))
             if r.get('eval/gold_reward') is not None]
  keys = ('eval/gold_reward', 'eval/proxy_reward', 'eval/kl',
          'eval/mean_length', 'implicit/heldout_accuracy',
          'implicit/heldout_gold_accuracy', 'implicit/train_accuracy',
          'implicit/train_gold_accuracy', 'implicit/heldout_margin')
  out = {'step': [r['step'] for r in records]}
  for key in keys:
    out[key] = [r.get(key) for r in records]
  return out


def study_seed(config: ml_collections.ConfigDict, seed: int,
               workdir: epath.Path, variants: list[str],
               source: epath.Path | None) -> dict:
  """The variants of one seed; returns its entry of dpo_study.json."""
  settings, tokenizer, mesh, seed_dir = diagnose.seed_setup(config, seed,
                                                            workdir)
  if source is not None:
    copy_stages(source / f'seed{seed}', seed_dir)
  out = {'variants': {}}
  with parallel.activate(mesh):
    layout = parallel.Layout(
        mesh, recipe.text_rl.model_logical_axes(settings.model))
    begun = recipe.start(settings, seed_dir, tokenizer, layout)
    temperature = settings.pairs.temperature
    out['heldout_pairs'] = diagnose.pair_stats(begun.heldout_pairs,
                                               temperature)
    out['train_pairs'] = diagnose.pair_stats(begun.train_pairs, temperature)
    rm_model, rm_params, rm_metrics = recipe.train_reward_model(
        settings.rm, seed, seed_dir, settings.model,
        recipe.rm_trunk(settings, settings.rm, seed_dir, begun, layout),
        begun.train_pairs, begun.heldout_pairs, layout)
    out['proxy'] = rm_metrics
    proxy_fn = recipe.proxy_reward_fn(
        settings.rm, settings.pairs.batch_size, seed_dir, rm_model, rm_params,
        begun.train_pairs, layout)
    evaluate = recipe.make_evaluator(settings.eval, seed, begun.task,
                                     begun.env, begun.sft_params,
                                     begun.gold_fn, proxy_fn, layout)
    score_env = dataclasses.replace(begun.env, sampling=Sampling(),
                                    num_samples=1)
    heldout = ImplicitReward(score_env, begun.sft_params, begun.heldout_pairs,
                             layout)
    train = ImplicitReward(score_env, begun.sft_params, begun.train_pairs,
                           layout, n=min(TRAIN_SUBSET, len(begun.train_pairs)))
    out['check/max_abs_sampled_minus_teacher_forced_logp'] = (
        check_reference_logp(score_env, begun.sft_params, begun.task, layout,
                             seed, settings.eval.batch_size))
    for name in variants:
      variant = make_variant(settings.dpo, name)
      variant_dir = seed_dir / 'dpo_study' / name
      variant_dir.mkdir(parents=True, exist_ok=True)
      margins_path = variant_dir / 'margins.npz'

      def measure(params, variant=variant, margins_path=margins_path):
        metrics = evaluate(params)
        h = heldout.margins(params, variant.beta)
        t = train.margins(params, variant.beta)
        for split, m, pairs in (('heldout', h, heldout), ('train', t, train)):
          acc = implicit_accuracy(m, pairs.gold_chosen, pairs.gold_rejected)
          metrics[f'implicit/{split}_accuracy'] = acc['accuracy']
          metrics[f'implicit/{split}_gold_accuracy'] = acc['gold_accuracy']
          metrics[f'implicit/{split}_margin'] = acc['margin']
        with margins_path.open('wb') as f:  # The latest evaluation's.
          np.savez(f, heldout=h, train=t)
        return metrics

      start = time.time()
      if variant.online:
        cfg = variant.dpo.preference_config(variant.beta)
        run_dir, _ = online_run(settings, variant_dir, cfg, variant.dpo,
                                begun.task, begun.env, begun.sft_params,
                                proxy_fn, measure, layout)
      else:
        run_dir, _ = recipe.dpo_run(
            dataclasses.replace(settings, dpo=variant.dpo), variant_dir,
            variant.beta, begun.env, begun.sft_params, begun.train_pairs,
            measure, layout)
      curve = _curve(run_dir)
      pairs_per_step = (settings.rl.num_prompts if variant.online
                        else variant.dpo.batch_size)
      last = {k: v[-1] for k, v in curve.items()}
      out['variants'][name] = {
          'loss': variant.dpo.loss, 'beta': variant.beta,
          'online': variant.online, 'steps': variant.dpo.steps,
          'learning_rate': variant.dpo.optimizer.learning_rate,
          'epochs': (None if variant.online else variant.dpo.steps
                     * variant.dpo.batch_size / len(begun.train_pairs)),
          'pairs_seen': variant.dpo.steps * pairs_per_step,
          'wall_time_s': time.time() - start,
          'final': last,
          'peak_gold_reward': max(curve['eval/gold_reward']),
          'curve': curve}
      logging.warning(
          'seed %d %s: gold %.3f -> %.3f, KL %.2f, implicit accuracy %.3f '
          '(gold order %.3f)', seed, name, curve['eval/gold_reward'][0],
          last['eval/gold_reward'], last['eval/kl'],
          last['implicit/heldout_accuracy'],
          last['implicit/heldout_gold_accuracy'])
    out['gold_reward/sft'] = next(iter(out['variants'].values()))[
        'curve']['eval/gold_reward'][0] if out['variants'] else None
  return out


def _stats(values) -> dict[str, float]:
  values = np.asarray([v for v in values if v is not None], np.float64)
  values = values[np.isfinite(values)]
  if not len(values):  # e.g. no pair whose gold rewards differ.
    return dict.fromkeys(('mean', 'std', 'min', 'max'), float('nan'))
  return {'mean': float(np.mean(values)),
          'std': float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
          'min': float(np.min(values)), 'max': float(np.max(values))}


# Figures of a variant, as (name, function of (seed entry, variant entry)).
FIGURES = {
    'gold': lambda s, v: v['final']['eval/gold_reward'],
    'gain': lambda s, v: v['final']['eval/gold_reward'] - s['gold_reward/sft'],
    'peak_gold': lambda s, v: v['peak_gold_reward'],
    'kl': lambda s, v: v['final']['eval/kl'],
    'proxy': lambda s, v: v['final']['eval/proxy_reward'],
    'heldout_accuracy': lambda s, v: v['final']['implicit/heldout_accuracy'],
    'heldout_gold_accuracy':
        lambda s, v: v['final']['implicit/heldout_gold_accuracy'],
    'train_accuracy': lambda s, v: v['final']['implicit/train_accuracy'],
}


def aggregate(results: dict, variants: list[str]) -> dict:
  """Mean, sample std, min and max over seeds of each variant's figures,
  and of the pairs' and the proxy's."""
  out = {'pairs': {
      'noise_ceiling': _stats(r['heldout_pairs']['noise_ceiling']
                              for r in results.values()),
      'label_agrees_gold': _stats(r['heldout_pairs']['label_agrees_gold']
                                  for r in results.values()),
      'proxy_accuracy': _stats(r['proxy']['rm/heldout_accuracy']
                               for r in results.values()),
      'proxy_gold_accuracy': _stats(r['proxy'].get('rm/heldout_gold_accuracy')
                                    for r in results.values()),
      'gold_reward/sft': _stats(r['gold_reward/sft']
                                for r in results.values())}}
  for name in variants:
    out[name] = {fig: _stats(fn(r, r['variants'][name])
                             for r in results.values())
                 for fig, fn in FIGURES.items()}
  return out


def tables(results: dict, variants: list[str]) -> str:
  """Markdown: variants (mean +- std over seeds), then per seed."""
  stats = aggregate(results, variants)
  fmt = lambda d, p=3: f'{d["mean"]:.{p}f} ± {d["std"]:.{p}f}'
  seeds = list(results)
  first = results[seeds[0]]['variants']
  lines = [f'Mean ± sample standard deviation over {len(seeds)} seeds '
           f'({", ".join(seeds)}). Implicit-reward accuracy: '
           'beta * log(pi / pi_sft), held-out pairs, at the end of the run.',
           '',
           '| variant | loss | beta | lr | steps | epochs | final gold | '
           'gain over the warm start | peak gold | final KL | implicit acc., '
           'noisy labels | implicit acc., gold order | implicit acc., '
           'training pairs |',
           '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for name in variants:
    v, s = first[name], stats[name]
    epochs = 'online' if v['online'] else f'{v["epochs"]:.1f}'
    lines.append(
        f'| {name} | {v["loss"]} | {v["beta"]:g} | {v["learning_rate"]:g} | '
        f'{v["steps"]} | {epochs} | {fmt(s["gold"])} | '
        f'{s["gain"]["mean"]:+.3f} ± {s["gain"]["std"]:.3f} | '
        f'{fmt(s["peak_gold"])} | {fmt(s["kl"], 2)} | '
        f'{fmt(s["heldout_accuracy"])} | {fmt(s["heldout_gold_accuracy"])} | '
        f'{fmt(s["train_accuracy"])} |')
  p = stats['pairs']
  lines += ['', '| seed | warm start gold | noise ceiling | labels agreeing '
            'with gold | proxy acc., noisy labels | proxy acc., gold order | '
            + ' | '.join(f'{n}: gold (implicit acc. gold order)'
                         for n in variants) + ' |',
            '|---|---|---|---|---|---|' + '---|' * len(variants)]
  for seed, r in results.items():
    finals = [r['variants'][n]['final'] for n in variants]
    cells = [f'{f["eval/gold_reward"]:.3f} '
             f'({f["implicit/heldout_gold_accuracy"]:.3f})' for f in finals]
    lines.append(
        f'| {seed} | {r["gold_reward/sft"]:.3f} | '
        f'{r["heldout_pairs"]["noise_ceiling"]:.3f} | '
        f'{r["heldout_pairs"]["label_agrees_gold"]:.3f} | '
        f'{r["proxy"]["rm/heldout_accuracy"]:.3f} | '
        f'{r["proxy"].get("rm/heldout_gold_accuracy", float("nan")):.3f} | '
        + ' | '.join(cells) + ' |')
  lines += ['', f'Over seeds: noise ceiling {fmt(p["noise_ceiling"])}, '
            f'proxy {fmt(p["proxy_accuracy"])} (noisy labels) and '
            f'{fmt(p["proxy_gold_accuracy"])} (gold order), warm start gold '
            f'{fmt(p["gold_reward/sft"])}.']
  return '\n'.join(lines) + '\n'


def plot(results: dict, variants: list[str], path: epath.Path) -> None:
  """Implicit-reward accuracy (gold order) against steps; gold against
  sqrt(KL); a line per variant and seed."""
  fig, axes = plots.plt.subplots(1, 3, figsize=(16, 4.5))
  colors = plots.plt.rcParams['axes.prop_cycle'].by_key()['color']
  try:
    for i, name in enumerate(variants):
      color = colors[i % len(colors)]
      for j, r in enumerate(results.values()):
        c = r['variants'][name]['curve']
        label = name if j == 0 else None
        axes[0].plot(c['step'], c['implicit/heldout_gold_accuracy'],
                     color=color, marker='.', markersize=3, label=label)
        axes[1].plot(c['step'], c['implicit/heldout_accuracy'], color=color,
                     marker='.', markersize=3, label=label)
        axes[2].plot([math.sqrt(max(k, 0.0)) for k in c['eval/kl']],
                     c['eval/gold_reward'], color=color, marker='.',
                     markersize=3, label=label)
    proxy_gold = np.mean([r['proxy'].get('rm/heldout_gold_accuracy', np.nan)
                          for r in results.values()])
    proxy = np.mean([r['proxy']['rm/heldout_accuracy']
                     for r in results.values()])
    ceiling = np.mean([r['heldout_pairs']['noise_ceiling']
                       for r in results.values()])
    axes[0].axhline(proxy_gold, color='k', linestyle='--', linewidth=1,
                    label='proxy RM (mean)')
    axes[1].axhline(proxy, color='k', linestyle='--', linewidth=1,
                    label='proxy RM (mean)')
    axes[1].axhline(ceiling, color='gray', linestyle=':', linewidth=1,
                    label='noise ceiling (mean)')
    sft = np.mean([r['gold_reward/sft'] for r in results.values()])
    axes[2].axhline(sft, color='gray', linestyle=':', linewidth=1,
                    label='warm start (mean)')
    for ax, title, xlabel in (
        (axes[0], 'implicit reward, held-out pairs: gold order', 'step'),
        (axes[1], 'implicit reward, held-out pairs: noisy labels', 'step'),
        (axes[2], 'gold reward of held-out samples',
         'sqrt(KL(pi || pi_sft)) [sqrt nats]')):
      ax.set_title(title)
      ax.set_xlabel(xlabel)
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
    fig.suptitle(f'DPO variants, seeds {", ".join(results)}')
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


def run_study(config: ml_collections.ConfigDict, workdir: str,
              seeds: list[int], variants: list[str],
              source: str | None = None) -> dict:
  """Every seed's variants; writes dpo_study.{json,md,png}; returns the
  results by seed."""
  unknown = set(variants) - set(VARIANTS)
  if unknown:
    raise ValueError(f'--variants: unknown {sorted(unknown)}; known: '
                     f'{sorted(VARIANTS)}.')
  root = epath.Path(workdir)
  root.mkdir(parents=True, exist_ok=True)
  if source is not None:
    for seed in seeds:
      if not (epath.Path(source) / f'seed{seed}').exists():
        raise ValueError(f'--source={source} has no seed{seed}/; give a '
                         'seeds.py workdir or leave --source out.')
  results = {}
  for seed in seeds:
    results[str(seed)] = study_seed(config, seed, root, variants,
                                    epath.Path(source) if source else None)
    # Written after every seed: an interrupted study keeps what it has.
    (root / 'dpo_study.json').write_text(json.dumps(
        {'seeds': results}, indent=1))
  (root / 'dpo_study.json').write_text(json.dumps(
      {'seeds': results, 'aggregate': aggregate(results, variants)},
      indent=1))
  (root / 'dpo_study.md').write_text(tables(results, variants))
  plot(results, variants, root / 'dpo_study.png')
  return results


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  results = run_study(FLAGS.config, FLAGS.workdir,
                      [int(s) for s in FLAGS.seeds], FLAGS.variants,
                      FLAGS.source)
  print(tables(results, FLAGS.variants))


def _define_flags() -> None:
  # Only when run as a script: tests import this module beside others that
  # define flags of the same names.
  config_flags.DEFINE_config_file(
      'config', 'experiments/rlhf_gold/config.py', 'The study config.',
      lock_config=False)
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_string('source', None,
                      'A seeds.py workdir whose seed<s>/ stages to reuse.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
  flags.DEFINE_list('variants', ['default'],
                    f'DPO variants, of {sorted(VARIANTS)}.')
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
