"""Several RL algorithms on the digits, on several seeds, from one model per seed.

  python -m experiments.ddpo_digits.compare --workdir=/tmp/ddpo_compare \\
      --algos=ddpo_is,dpok,grpo,dr_grpo,rloo --seeds=0,1,2 \\
      [--config=experiments/ddpo_digits/config.py[:variants]] [--config.*=...]

Each (seed, algorithm) is an ordinary run of the experiment in
`<workdir>/seed<s>/<algorithm>/`, of the config with `--config.seed=<s>` and
that algorithm's `config.algo` (`config.algo_config`; `--config.algo.*`
overrides then apply to every algorithm). Within a seed the first run trains
the reward classifier and the pretrained denoiser; the other runs start
from copies of them, so every algorithm of a seed fine-tunes the same model
against the same classifier, and the seed's spread covers the classifier,
the pretraining and the RL together. A restart resumes every unfinished run
and skips the finished ones.

Writes under `<workdir>`:
  - `compare.json`: every run's summary, and per algorithm each figure's mean,
    sample standard deviation, minimum and maximum over the seeds;
  - `compare.md`: the tables of the README (mean ± std over seeds, per seed);
  - `compare.png`: evaluation reward and class accuracy against RL steps, a
    thin line per seed and a thick one for the mean, a colour per algorithm;
  - `samples_<algorithm>.png`: the first seed's samples after RL.
"""

import json
import shutil

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import spread
from experiments.ddpo_digits import config as config_lib
from experiments.ddpo_digits import recipe
from jaxrlgen.train import plots
from jaxrlgen.train import writers

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/ddpo_digits/config.py',
    'The experiment config; its algorithm is replaced by each of --algos.',
    lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_ALGOS = flags.DEFINE_list(
    'algos', ['ddpo_is', 'dpok', 'grpo', 'dr_grpo', 'rloo'],
    f'Algorithms, each one run per seed; known: {config_lib.ALGORITHMS}.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
flags.mark_flag_as_required('workdir')

STAGES = ('classifier', 'pretrain')  # Trained once per seed, then shared.
CURVES = (('eval/reward', 'evaluation reward (log p(class))'),
          ('eval/class_accuracy', 'class accuracy'))


def configs(base: ml_collections.ConfigDict, algorithms, variants: str,
            algo_overrides) -> dict[str, ml_collections.ConfigDict]:
  """algorithm -> `base` with that algorithm's `config.algo`.

  Args:
    base: the experiment config (any variant and override applied).
    algorithms: names from `config.ALGORITHMS`.
    variants: the config file's variants (after ':'), those of the
      algorithm ignored: each algorithm gets its own.
    algo_overrides: {field: value} set on every algorithm's `config.algo`.
  """
  unknown = [a for a in algorithms if a not in config_lib.ALGORITHMS]
  if unknown:
    raise ValueError(f'--algos: unknown {unknown}; known: '
                     f'{config_lib.ALGORITHMS}.')
  kept = [v for v in variants.split(',')
          if v.strip() and v.strip() not in config_lib.ALGORITHMS]
  out = {}
  for name in algorithms:
    config = ml_collections.ConfigDict(base)
    config.algo = config_lib.get_config(','.join([name] + kept)).algo
    config.algo.update(algo_overrides)
    config_lib.parse(config)  # Every run's checks, before any compute.
    out[name] = config
  return out


def share_stages(source: epath.Path, target: epath.Path) -> None:
  """Copies the trained stages of `source`'s run into `target`'s (once)."""
  for stage in STAGES:
    if (source / stage).exists() and not (target / stage).exists():
      shutil.copytree(source / stage, target / stage)


def run_all(by_algo: dict[str, ml_collections.ConfigDict], seeds,
            workdir: epath.Path) -> dict[str, dict[str, dict]]:
  """Runs (or resumes) every (seed, algorithm); seed -> algorithm -> summary.

  `compare.json` is rewritten after every run, so an interrupted sweep keeps
  what it has.
  """
  results: dict[str, dict[str, dict]] = {}
  for seed in seeds:
    first = None
    for name, config in by_algo.items():
      config = ml_collections.ConfigDict(config)
      config.seed = int(seed)
      if not config.data.data_dir:  # One copy of the digits for all runs.
        config.data.data_dir = str(workdir / 'data')
      run_dir = workdir / f'seed{seed}' / name
      run_dir.mkdir(parents=True, exist_ok=True)
      if first is not None:
        share_stages(first, run_dir)
      summary = recipe.run(config, str(run_dir))
      # The times of the invocation that trained (a finished run found again
      # takes seconds).
      saved = writers.read_summary(str(run_dir))
      summary.update({k: v for k, v in saved.items() if k.startswith('time')
                      or k == 'wall_time_s'})
      results.setdefault(str(seed), {})[name] = summary
      first = first or run_dir
      write_json(results, workdir)
  return results


def by_algorithm(results) -> dict[str, dict[str, dict]]:
  """algorithm -> seed -> summary."""
  out: dict[str, dict[str, dict]] = {}
  for seed, runs in results.items():
    for name, summary in runs.items():
      out.setdefault(name, {})[seed] = summary
  return out


def write_json(results, workdir: epath.Path) -> None:
  stats = {name: spread.aggregate(seeds)
           for name, seeds in by_algorithm(results).items()}
  (workdir / 'compare.json').write_text(json.dumps(
      {'runs': results, 'aggregate': stats}, indent=1))


def tables(results) -> str:
  """The README's tables: per algorithm (mean ± std over seeds), per seed."""
  per_algo = by_algorithm(results)
  seeds = list(results)
  lines = [f'Mean ± sample standard deviation over {len(seeds)} seeds '
           f'({", ".join(seeds)}).', '',
           '| algorithm | eval reward before | after | gain | class accuracy '
           'before | after | change |', '|---|---|---|---|---|---|---|']
  for name, runs in per_algo.items():
    stats = spread.aggregate(runs)
    cells = [spread.mean_std(stats, 'eval/reward_before'),
             spread.mean_std(stats, 'eval/reward_after'),
             spread.mean_std(stats, 'eval/reward_gain', signed=True),
             spread.mean_std(stats, 'eval/class_accuracy_before'),
             spread.mean_std(stats, 'eval/class_accuracy_after'),
             spread.mean_std(stats, 'eval/class_accuracy_gain', signed=True)]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', '| seed | algorithm | eval reward before -> after | class '
            'accuracy before -> after | RL time |', '|---|---|---|---|---|']
  for seed, runs in results.items():
    for name, s in runs.items():
      lines.append(
          f'| {seed} | {name} | {s["eval/reward_before"]:.3f} -> '
          f'{s["eval/reward_after"]:.3f} | '
          f'{s["eval/class_accuracy_before"]:.3f} -> '
          f'{s["eval/class_accuracy_after"]:.3f} | '
          f'{s.get("time/rl_s", float("nan")):.0f} s |')
  return '\n'.join(lines) + '\n'


def plot(results, workdir: epath.Path, path: epath.Path) -> None:
  """Evaluation curves: a panel per figure, a colour per algorithm, a thin
  line per seed and a thick one for their mean."""
  fig, axes = plots.plt.subplots(1, len(CURVES),
                                 figsize=(5.5 * len(CURVES), 4))
  try:
    for i, name in enumerate(by_algorithm(results)):
      colour = f'C{i}'
      for ax, (key, label) in zip(axes, CURVES):
        curves = []
        for seed in results:
          records = [r for r in writers.read_metrics(
              str(workdir / f'seed{seed}' / name)) if key in r]
          steps = [r['step'] for r in records]
          curves.append([r[key] for r in records])
          ax.plot(steps, curves[-1], color=colour, alpha=0.35, linewidth=0.8)
        if len({len(c) for c in curves}) == 1:  # Same evaluation steps.
          ax.plot(steps, np.mean(curves, axis=0), color=colour, linewidth=2,
                  label=name)
        ax.set_xlabel('RL step')
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for ax in axes:
      ax.legend(fontsize=8)
    fig.suptitle(f'Digits, seeds {", ".join(results)}: thin lines per seed, '
                 'thick their mean', fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


def report(results, workdir: epath.Path) -> str:
  """Writes compare.json, compare.md, compare.png and the sample grids."""
  write_json(results, workdir)
  text = tables(results)
  (workdir / 'compare.md').write_text(text)
  plot(results, workdir, workdir / 'compare.png')
  first = next(iter(results))
  for name in results[first]:
    grid = workdir / f'seed{first}' / name / 'samples_after.png'
    if grid.exists():
      shutil.copyfile(grid, workdir / f'samples_{name}.png')
  return text


def main(argv):
  del argv
  workdir = epath.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  config_file = config_flags.get_config_filename(flags.FLAGS['config'])
  variants = config_file.partition(':')[2]
  overrides = config_flags.get_override_values(flags.FLAGS['config'])
  algo_overrides = {k[len('algo.'):]: v for k, v in overrides.items()
                    if k.startswith('algo.')}
  by_algo = configs(_CONFIG.value, _ALGOS.value, variants, algo_overrides)
  print(report(run_all(by_algo, _SEEDS.value, workdir), workdir))


if __name__ == '__main__':
  app.run(main)
