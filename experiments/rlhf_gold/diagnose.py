"""Why the proxy reward model learns on some seeds and not others.

For each seed, runs the study's first stages (warm start, pairs: cached in
`<workdir>/seed<s>/`, the layout of a study workdir, so that a study run with
`--workdir=<workdir>/seed<s>` and the same config reuses them) and then
trains the proxy reward model once per RM variant, evaluating it on the
held-out pairs every `--eval_every` steps:

  python -m experiments.rlhf_gold.diagnose \\
      --config=experiments/rlhf_gold/config.py --workdir=/tmp/rlhf_diag \\
      --seeds=0,1,2,3,4 --variants=default,lr1e-3

It writes `<workdir>/diagnosis.json` (per seed: the pairs' statistics and the
noise ceiling their labels allow; per variant: the held-out accuracy curve
against the noisy labels and the gold order) and `<workdir>/diagnosis.png`
(the curves). The statistics of a pair set:
  - `identical`: the two completions are the same tokens (no signal);
  - `gold_ties`: the two gold rewards are equal (the label is a coin flip);
  - `label_agrees_gold`: the label's agreement with the gold order over the
    pairs whose gold differs;
  - `noise_ceiling`: the accuracy on the noisy labels of a model that knows
    the gold reward, E[max(p, 1 - p)] with p the Bradley-Terry probability:
    no proxy can expect more held-out accuracy than this;
  - `distinct_completions`: distinct completions over all the set's samples.
"""

import dataclasses
import json

from absl import app
from absl import flags
from absl import logging
from etils import epath
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments.rlhf_gold import recipe
from jaxrlgen import parallel
from jaxrlgen.data.tokenizer import ByteTokenizer
from jaxrlgen.train import plots
from jaxrlgen.train import workdir as workdir_lib
from jaxrlgen.train import writers

# RM variants: changes to `config.rm` (RewardModelConfig fields; an
# `optimizer` entry replaces fields of the optimizer). 'before' is the
# proxy's training before this diagnosis; 'default' the config's own.
_BEFORE = {'steps': 600, 'trunk_steps': 0,
           'optimizer': {'learning_rate': 5e-4}}
VARIANTS = {
    'default': {},
    'before': _BEFORE,
    'lr1e-3': {**_BEFORE, 'optimizer': {'learning_rate': 1e-3}},
    'steps1800': {**_BEFORE, 'steps': 1800},
    'lr1e-3_steps1800': {**_BEFORE, 'steps': 1800,
                         'optimizer': {'learning_rate': 1e-3}},
    'trunk600': {**_BEFORE, 'trunk_steps': 600},
    'ensemble4': {'ensemble_size': 4},
}



def pair_stats(pairs, temperature: float) -> dict[str, float]:
  """Statistics of a labelled pair set (see the module docstring)."""
  a = pairs.arrays
  same = np.all((a['chosen'] == a['rejected']) | ~a['chosen_mask'], axis=1)
  same &= np.all(a['chosen_mask'] == a['rejected_mask'], axis=1)
  diff = a['gold_chosen'] - a['gold_rejected']
  differ = diff != 0
  p = 1.0 / (1.0 + np.exp(-np.abs(diff) / temperature))
  completions = np.concatenate([
      np.where(a['chosen_mask'], a['chosen'], -1),
      np.where(a['rejected_mask'], a['rejected'], -1)])
  prompts = np.concatenate([a['prompt'], a['prompt']])
  samples = np.concatenate([prompts, completions], axis=1)
  return {
      'pairs': int(len(diff)),
      'identical': float(np.mean(same)),
      'gold_ties': float(np.mean(~differ)),
      'label_agrees_gold': float(np.mean(diff[differ] > 0)),
      'noise_ceiling': float(np.mean(p)),
      'mean_gold': float(np.mean((a['gold_chosen'] + a['gold_rejected']) / 2)),
      'distinct_completions': float(
          len(np.unique(samples, axis=0)) / len(samples)),
  }


def _rm_settings(settings: recipe.Settings, name: str,
                 eval_every: int) -> recipe.RewardModelConfig:
  changes = dict(VARIANTS[name])
  rm = settings.rm
  if 'optimizer' in changes:
    changes['optimizer'] = dataclasses.replace(rm.optimizer,
                                               **changes['optimizer'])
  return dataclasses.replace(rm, eval_every=eval_every, **changes)


def seed_setup(config: ml_collections.ConfigDict, seed: int,
               workdir: epath.Path):
  """The study's settings at `seed`, checked before any compute, and its
  tokenizer, mesh and workdir `<workdir>/seed<seed>`: what every driver
  that reruns parts of the study per seed starts from."""
  config = ml_collections.ConfigDict(config)
  config.seed = seed
  settings = recipe.parse(config)
  tokenizer = ByteTokenizer()
  mesh = parallel.make_mesh(config.mesh)
  recipe.validate(settings, tokenizer, mesh)
  seed_dir = workdir_lib.prepare_workdir(str(workdir / f'seed{seed}'))
  return settings, tokenizer, mesh, seed_dir


def diagnose_seed(config: ml_collections.ConfigDict, seed: int,
                  workdir: epath.Path, variants: list[str],
                  eval_every: int) -> dict:
  """Stages 1-2 of `seed`, then the proxy once per variant."""
  settings, tokenizer, mesh, seed_dir = seed_setup(config, seed, workdir)
  out = {}
  with parallel.activate(mesh):
    layout = parallel.Layout(
        mesh, recipe.text_rl.model_logical_axes(settings.model))
    begun = recipe.start(settings, seed_dir, tokenizer, layout)
    temperature = settings.pairs.temperature
    out['train_pairs'] = pair_stats(begun.train_pairs, temperature)
    out['heldout_pairs'] = pair_stats(begun.heldout_pairs, temperature)
    for name in variants:
      rm_cfg = _rm_settings(settings, name, eval_every)
      variant_dir = seed_dir / 'diag' / name
      variant_dir.mkdir(parents=True, exist_ok=True)
      trunk = recipe.rm_trunk(settings, rm_cfg, variant_dir, begun, layout)
      _, _, final = recipe.train_reward_model(
          rm_cfg, seed, variant_dir, settings.model, trunk,
          begun.train_pairs, begun.heldout_pairs, layout)
      curve = [r for r in writers.read_metrics(str(variant_dir / 'rm'))
               if 'rm/heldout_accuracy' in r]
      out[name] = {
          'final': final,
          'steps': [r['step'] for r in curve],
          'heldout_accuracy': [r['rm/heldout_accuracy'] for r in curve],
          'heldout_gold_accuracy': [r.get('rm/heldout_gold_accuracy')
                                    for r in curve],
          'train_accuracy': [r.get('accuracy') for r in curve],
      }
      logging.warning('seed %d %s: held-out accuracy %.3f, gold order %.3f',
                      seed, name, final['rm/heldout_accuracy'],
                      final.get('rm/heldout_gold_accuracy', float('nan')))
  return out


def plot(results: dict, variants: list[str], path: epath.Path) -> None:
  """Held-out gold-order accuracy against RM steps, a panel per variant."""
  fig, axes = plots.plt.subplots(1, len(variants),
                                 figsize=(4.5 * len(variants), 3.5),
                                 squeeze=False)
  try:
    for ax, name in zip(axes[0], variants):
      for seed, result in results.items():
        curve = result[name]
        ax.plot(curve['steps'], curve['heldout_gold_accuracy'], marker='.',
                label=f'seed {seed} (gold order)')
        ax.plot(curve['steps'], curve['heldout_accuracy'], linestyle=':',
                color=ax.lines[-1].get_color())
      ceiling = np.mean([r['heldout_pairs']['noise_ceiling']
                         for r in results.values()])
      ax.axhline(ceiling, color='gray', linestyle='--', linewidth=1,
                 label='noise ceiling (noisy labels)')
      ax.set_title(f'proxy RM: {name}')
      ax.set_xlabel('RM step')
      ax.set_ylabel('held-out accuracy (dotted: noisy labels)')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=7)
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  unknown = set(FLAGS.variants) - set(VARIANTS)
  if unknown:
    raise app.UsageError(f'--variants: unknown {sorted(unknown)}; known: '
                         f'{sorted(VARIANTS)}.')
  workdir = epath.Path(FLAGS.workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  path = workdir / 'diagnosis.json'
  results = json.loads(path.read_text()) if path.exists() else {}
  for seed in map(int, FLAGS.seeds):
    results[str(seed)] = {**results.get(str(seed), {}), **diagnose_seed(
        FLAGS.config, seed, workdir, FLAGS.variants, FLAGS.eval_every)}
    path.write_text(json.dumps(results, indent=1))
  shown = {s: results[s] for s in map(str, FLAGS.seeds)}
  plot(shown, FLAGS.variants, workdir / 'diagnosis.png')
  for seed, result in shown.items():
    finals = {name: result[name]['final'] for name in FLAGS.variants}
    print(f'seed {seed}: held-out pairs {result["heldout_pairs"]}')
    for name, final in finals.items():
      print(f'  {name}: held-out accuracy '
            f'{final["rm/heldout_accuracy"]:.3f} (noisy labels), '
            f'{final.get("rm/heldout_gold_accuracy", float("nan")):.3f} '
            '(gold order)')


def _define_flags() -> None:
  # Only when run as a script: tests import this module beside others that
  # define flags of the same names.
  config_flags.DEFINE_config_file(
      'config', 'experiments/rlhf_gold/config.py', 'The study config.',
      lock_config=False)
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds.')
  flags.DEFINE_list('variants', ['default'],
                    f'RM variants, of {sorted(VARIANTS)}.')
  flags.DEFINE_integer('eval_every', 50,
                       'RM steps between held-out evaluations.')
  flags.mark_flag_as_required('workdir')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
