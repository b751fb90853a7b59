"""Several algorithms of one experiment on several seeds: runs and reports.

An experiment's comparison driver (`experiments/<name>/compare.py`) describes
itself as an `Experiment` and calls `cli`; its command line is

  python -m experiments.<name>.compare --workdir=DIR --algos=a,b \\
      --seeds=0,1,2 \\
      [--config=experiments/<name>/config.py[:variants]] [--config.*=...]

Each (seed, algorithm) is an ordinary run of the experiment in
`<workdir>/seed<s>/<algorithm>/`: the config of `get_config('<algorithm>,
<variants>')` (the algorithm's own variant, then the other variants of
`--config`), every `--config.*` override, `config.seed=<s>` and, unless set,
one `config.data.data_dir` for all runs. Within a seed the first run trains
the experiment's `stages` (a warm start, a reward model); every later run of
the seed whose `share_key` is the same starts from copies of them, so the
algorithms of a seed fine-tune the same model and the seeds' spread covers
the stages and the RL together.

A run whose `summary.json` records the config's `total_steps` is finished:
it is read back, not run again (its figures, wall times included, stay those
of the invocation that trained it). Any other run is run or resumed.

Writes under `<workdir>`:
  - `compare.json`: every run's summary (`runs`: seed -> algorithm ->
    summary) and per algorithm each figure's mean, sample standard deviation,
    minimum and maximum over the seeds (`aggregate`, `spread.aggregate`),
    rewritten after every run so that an interrupted sweep keeps what it has;
  - `compare.md`: the tables of the README (mean ± std over seeds, per seed);
  - `compare.png`: the evaluation curves against RL steps, a panel per
    figure, a colour per algorithm, a thin line per seed and a thick one for
    their mean.
"""

import dataclasses
import json
import shutil
from typing import Any, Callable, Hashable, Mapping, Sequence

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags
import numpy as np

from experiments import spread
from jaxrlgen import recipes
from jaxrlgen.train import plots
from jaxrlgen.train import writers

Results = dict[str, dict[str, dict]]  # seed -> algorithm -> summary.


@dataclasses.dataclass(frozen=True)
class Headline:
  """A column of the mean ± std table: figure `key` of the summaries."""

  key: str
  header: str
  signed: bool = False  # '+' on positive means (gains).


@dataclasses.dataclass(frozen=True)
class PerSeed:
  """A column of the per-seed table: the figures `keys` of one run, each
  formatted with `fmt` and joined by ' -> ' (a missing one reads nan)."""

  header: str
  keys: tuple[str, ...]
  fmt: str = '{:.3f}'


@dataclasses.dataclass(frozen=True)
class Experiment:
  """What `run_all` and `report` need to know of an experiment.

  Attributes:
    title: names the experiment in the plot's title.
    config_file: its config file, relative to the repository root.
    get_config: `get_config(variants)` of that file (comma-separated).
    algorithms: the variants of `get_config` that name an algorithm.
    default_algorithms: `--algos` when not given.
    headline: columns of the mean ± std table.
    per_seed: columns of the per-seed table.
    curves: (metric key, axis label) of each panel of the plot.
    stages: directories of a run trained once per seed, then copied.
    share_key: runs of a seed share stages only with runs whose
      `share_key(config)` is equal (the stages' checkpoints must fit their
      model); None: all runs of a seed share them.
    check: every check of a config (a schema's parse), run on every
      (algorithm, override) before any compute.
    run: `run(config, workdir) -> summary`, the experiment's recipe.
    extra_report: `(results, workdir)`, more outputs of `report`.
  """

  title: str
  config_file: str
  get_config: Callable[[str], ml_collections.ConfigDict]
  algorithms: Sequence[str]
  default_algorithms: Sequence[str]
  headline: tuple[Headline, ...]
  per_seed: tuple[PerSeed, ...]
  curves: tuple[tuple[str, str], ...]
  stages: tuple[str, ...] = ()
  share_key: Callable[[ml_collections.ConfigDict], Hashable] | None = None
  check: Callable[[ml_collections.ConfigDict], Any] = lambda config: None
  run: Callable[[ml_collections.ConfigDict, str], dict] = recipes.run
  extra_report: Callable[[Results, epath.Path], None] | None = None


def configs(experiment: Experiment, algorithms: Sequence[str], variants: str,
            overrides: Mapping[str, Any]
            ) -> dict[str, ml_collections.ConfigDict]:
  """algorithm -> its config, every check run.

  Args:
    experiment: the experiment.
    algorithms: names from `experiment.algorithms`.
    variants: the config file's variants (after ':'); those naming an
      algorithm are dropped, each algorithm getting its own.
    overrides: {'dotted.field': value}, the `--config.*` flags, set on
      every algorithm's config.
  """
  unknown = [a for a in algorithms if a not in experiment.algorithms]
  if unknown or not algorithms:
    raise ValueError(f'--algos: unknown {unknown} (or none given); known: '
                     f'{list(experiment.algorithms)}.')
  kept = [v.strip() for v in variants.split(',')
          if v.strip() and v.strip() not in experiment.algorithms]
  out = {}
  for name in algorithms:
    config = experiment.get_config(','.join([name] + kept))
    for field, value in overrides.items():
      try:
        config.update_from_flattened_dict({field: value})
      except (KeyError, AttributeError, TypeError) as e:
        raise ValueError(f'--config.{field}={value!r} does not apply to the '
                         f'config of {name}: {e}') from e
    experiment.check(config)  # Every run's checks, before any compute.
    out[name] = config
  return out


def share_stages(experiment: Experiment, source: epath.Path,
                 target: epath.Path) -> None:
  """Copies the trained stages of `source`'s run into `target`'s (once)."""
  for stage in experiment.stages:
    if (source / stage).exists() and not (target / stage).exists():
      shutil.copytree(source / stage, target / stage)


def finished_summary(config: ml_collections.ConfigDict,
                     run_dir: epath.Path) -> dict | None:
  """The run's saved summary if it finished `config.total_steps`, else None."""
  if not (run_dir / writers.SUMMARY_FILE).exists():
    return None
  summary = writers.read_summary(str(run_dir))
  if summary.get('final_step', 0) < config.total_steps:
    return None
  return summary


def run_all(experiment: Experiment,
            by_algo: Mapping[str, ml_collections.ConfigDict],
            seeds: Sequence[str], workdir: epath.Path) -> Results:
  """Runs (or resumes, or reads back) every (seed, algorithm).

  `compare.json` is rewritten after every run, so an interrupted sweep keeps
  what it has.
  """
  results: Results = {}
  for seed in seeds:
    first: dict[Hashable, epath.Path] = {}  # share key -> the stages' run.
    for name, config in by_algo.items():
      config = ml_collections.ConfigDict(config)
      config.seed = int(seed)
      if 'data' in config and 'data_dir' in config.data and \
          not config.data.data_dir:  # One copy of the data for all runs.
        config.data.data_dir = str(workdir / 'data')
      run_dir = workdir / f'seed{seed}' / name
      run_dir.mkdir(parents=True, exist_ok=True)
      key = experiment.share_key(config) if experiment.share_key else None
      if key in first:
        share_stages(experiment, first[key], run_dir)
      summary = finished_summary(config, run_dir)
      if summary is None:
        summary = experiment.run(config, str(run_dir))
      results.setdefault(str(seed), {})[name] = summary
      first.setdefault(key, run_dir)
      write_json(results, workdir)
  return results


def by_algorithm(results: Results) -> dict[str, dict[str, dict]]:
  """algorithm -> seed -> summary."""
  out: dict[str, dict[str, dict]] = {}
  for seed, runs in results.items():
    for name, summary in runs.items():
      out.setdefault(name, {})[seed] = summary
  return out


def write_json(results: Results, workdir: epath.Path) -> None:
  stats = {name: spread.aggregate(seeds)
           for name, seeds in by_algorithm(results).items()}
  (workdir / 'compare.json').write_text(json.dumps(
      {'runs': results, 'aggregate': stats}, indent=1))


def _cell(summary: Mapping, column: PerSeed) -> str:
  values = [summary.get(key) for key in column.keys]
  return ' -> '.join(column.fmt.format(float('nan') if v is None else v)
                     for v in values)


def tables(experiment: Experiment, results: Results) -> str:
  """The README's tables: per algorithm (mean ± std over seeds), per seed."""
  seeds = list(results)
  lines = [f'Mean ± sample standard deviation over {len(seeds)} seeds '
           f'({", ".join(seeds)}).', '',
           '| algorithm | ' + ' | '.join(c.header for c in experiment.headline)
           + ' |', '|---' * (1 + len(experiment.headline)) + '|']
  for name, runs in by_algorithm(results).items():
    stats = spread.aggregate(runs)
    cells = [spread.mean_std(stats, c.key, signed=c.signed)
             for c in experiment.headline]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  lines += ['', '| seed | algorithm | '
            + ' | '.join(c.header for c in experiment.per_seed) + ' |',
            '|---' * (2 + len(experiment.per_seed)) + '|']
  for seed, runs in results.items():
    for name, summary in runs.items():
      lines.append(f'| {seed} | {name} | ' + ' | '.join(
          _cell(summary, c) for c in experiment.per_seed) + ' |')
  return '\n'.join(lines) + '\n'


def plot(experiment: Experiment, results: Results, workdir: epath.Path,
         path: epath.Path) -> None:
  """Evaluation curves: a panel per figure, a colour per algorithm, a thin
  line per seed and a thick one for their mean (where every seed evaluated
  at the same steps)."""
  curves_ = experiment.curves
  fig, axes = plots.plt.subplots(1, len(curves_),
                                 figsize=(5.5 * len(curves_), 4),
                                 squeeze=False)
  axes = axes[0]
  try:
    names = list(by_algorithm(results))
    # The default cycle repeats after ten colours; tab20 has twenty.
    cmap = plots.plt.get_cmap('tab10' if len(names) <= 10 else 'tab20')
    for i, name in enumerate(names):
      colour = cmap(i % cmap.N)
      for ax, (key, label) in zip(axes, curves_):
        curves, all_steps = [], []
        for seed in results:
          records = [r for r in writers.read_metrics(
              str(workdir / f'seed{seed}' / name)) if key in r]
          all_steps.append([r['step'] for r in records])
          curves.append([r[key] for r in records])
          ax.plot(all_steps[-1], curves[-1], color=colour, alpha=0.35,
                  linewidth=0.8)
        if all(s == all_steps[0] for s in all_steps):
          ax.plot(all_steps[0], np.mean(curves, axis=0), color=colour,
                  linewidth=2, label=name)
        ax.set_xlabel('RL step')
        ax.set_ylabel(label)
        ax.grid(True, alpha=0.3)
    for ax in axes:
      ax.legend(fontsize=8)
    fig.suptitle(f'{experiment.title}, seeds {", ".join(results)}: thin '
                 'lines per seed, thick their mean', fontsize=10)
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


def report(experiment: Experiment, results: Results,
           workdir: epath.Path) -> str:
  """Writes compare.json, compare.md, compare.png (and the experiment's
  extra outputs); returns the tables."""
  write_json(results, workdir)
  text = tables(experiment, results)
  (workdir / 'compare.md').write_text(text)
  plot(experiment, results, workdir, workdir / 'compare.png')
  if experiment.extra_report is not None:
    experiment.extra_report(results, workdir)
  return text


def compare(experiment: Experiment, workdir: str, algorithms: Sequence[str],
            seeds: Sequence[str], variants: str = '',
            overrides: Mapping[str, Any] | None = None) -> str:
  """Checks every config, runs what is not finished, writes the reports;
  returns the tables."""
  by_algo = configs(experiment, algorithms, variants, overrides or {})
  workdir = epath.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  return report(experiment, run_all(experiment, by_algo, seeds, workdir),
                workdir)


def cli(experiment: Experiment) -> None:
  """Defines the driver's flags and runs `compare` with them (the driver's
  `if __name__ == '__main__':`; flags are defined here so that tests can
  import several drivers)."""
  flags.DEFINE_string('workdir', None, 'Output directory.')
  flags.DEFINE_list(
      'algos', list(experiment.default_algorithms),
      'Algorithms, each one run per seed; known: '
      f'{list(experiment.algorithms)}.')
  flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds.')
  config_flags.DEFINE_config_file(
      'config', experiment.config_file,
      'The experiment config; its algorithm is replaced by each of --algos.',
      lock_config=False)
  flags.mark_flag_as_required('workdir')

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}.')
    config_flag = flags.FLAGS['config']
    path, _, variants = config_flags.get_config_filename(
        config_flag).partition(':')
    if epath.Path(path).resolve() != epath.Path(
        experiment.config_file).resolve():
      raise app.UsageError(
          f'--config={path}: this driver builds its configs from '
          f'{experiment.config_file} (give its variants after ":").')
    print(compare(experiment, flags.FLAGS.workdir, flags.FLAGS.algos,
                  flags.FLAGS.seeds, variants,
                  config_flags.get_override_values(config_flag)))

  app.run(main)
