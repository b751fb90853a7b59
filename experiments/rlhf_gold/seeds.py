"""The study on several seeds, and its figures as mean and spread.

  python -m experiments.rlhf_gold.seeds \\
      --config=experiments/rlhf_gold/config.py --workdir=/tmp/rlhf_seeds \\
      --seeds=0,1,2,3,4 [--config.rm.steps=... (any study field)]

Runs (or resumes) the study once per seed, `--config.seed` changed and
nothing else, in `<workdir>/seed<s>/` (each an ordinary study workdir, with
its own summary and plots), then writes under `<workdir>`:
  - `seeds.json`: every seed's summary, and for each figure its mean, sample
    standard deviation, minimum and maximum over the seeds
    (`experiments.spread.aggregate`);
  - `seeds.md`: the tables the study's README shows (mean +- std over seeds,
    and per seed);
  - `seeds_gold_vs_kl.png`: gold reward against sqrt(KL), a panel per run,
    a line per seed.
"""

import json
import math

from absl import app
from absl import flags
from etils import epath
import ml_collections
from ml_collections import config_flags

from experiments.rlhf_gold import recipe
from experiments.spread import aggregate
from jaxrlgen.train import plots
from jaxrlgen.train import writers

_CONFIG = config_flags.DEFINE_config_file(
    'config', 'experiments/rlhf_gold/config.py', 'The study config.',
    lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output directory.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3', '4'], 'Seeds.')
flags.mark_flag_as_required('workdir')

# Figures of the seeds table, in its column order (summary keys).
HEADLINE = ('rm/heldout_gold_accuracy', 'rm/heldout_accuracy',
            'gold_reward/sft')


def run_names(summary: dict) -> list[str]:
  """The study's runs in the order they ran (the summary's order)."""
  names = []
  for key in summary:
    if key.startswith('run/') and key.endswith('/gold_reward'):
      names.append(key[len('run/'):-len('/gold_reward')])
  return names


def gains(summary: dict) -> dict[str, float]:
  """Each run's final gold above the warm start's."""
  return {name: summary[f'run/{name}/gold_reward'] - summary['gold_reward/sft']
          for name in run_names(summary)}


def tables(summaries: dict[str, dict]) -> str:
  """The README's tables: runs (mean +- std over seeds), then per seed."""
  stats = aggregate(summaries)
  first = next(iter(summaries.values()))
  nan = float('nan')
  empty = {'mean': nan, 'std': nan, 'min': nan, 'max': nan}
  fmt = lambda key, d=3: (f'{stats.get(key, empty)["mean"]:.{d}f} ± '
                          f'{stats.get(key, empty)["std"]:.{d}f}')
  n = len(summaries)
  lines = [f'Mean ± sample standard deviation over {n} seeds '
           f'({", ".join(summaries)}).', '',
           '| run | final gold | final proxy | final KL (nats) | peak gold '
           '| KL at the peak | seeds with the over-optimisation peak |',
           '|---|---|---|---|---|---|---|']
  for name in run_names(first):
    peaks = sum(bool(s[f'run/{name}/overoptimised'])
                for s in summaries.values())
    lines.append(
        f'| {name} | {fmt(f"run/{name}/gold_reward")} | '
        f'{fmt(f"run/{name}/proxy_reward", 2)} | '
        f'{fmt(f"run/{name}/kl", 1)} | '
        f'{fmt(f"run/{name}/peak_gold_reward")} | '
        f'{fmt(f"run/{name}/kl_at_peak_gold", 1)} | {peaks} of {n} |')
  lines += ['', '| seed | proxy accuracy, gold order | proxy accuracy, '
            'noisy labels | gold of the warm start | best KL-regularised '
            'PPO gain | best KL-regularised GRPO gain | over-optimisation '
            'peaks | wall time | CPU time |',
            '|---|---|---|---|---|---|---|---|---|']
  for seed, s in summaries.items():
    gain = gains(s)
    best = lambda method: max(
        (g for name, g in gain.items() if name.startswith(method + '_')
         and not name.endswith(recipe.COEF_FIELDS[method][1] + '0')),
        default=float('nan'))
    peaks = [name for name in run_names(s) if s[f'run/{name}/overoptimised']]
    lines.append(
        f'| {seed} | {s.get("rm/heldout_gold_accuracy", nan):.3f} | '
        f'{s["rm/heldout_accuracy"]:.3f} | {s["gold_reward/sft"]:.3f} | '
        f'{best("ppo"):+.3f} | {best("grpo"):+.3f} | '
        f'{", ".join(peaks) or "none"} | {s["wall_time_s"] / 60:.1f} min | '
        f'{s.get("cpu_time_s", nan) / 60:.1f} min |')
  lines += ['', '| figure | ' + ' | '.join(HEADLINE) + ' |',
            '|---|' + '---|' * len(HEADLINE),
            '| mean ± std | ' + ' | '.join(fmt(k) for k in HEADLINE) + ' |',
            '| min, max | ' + ' | '.join(
                f'{stats.get(k, empty)["min"]:.3f}, '
                f'{stats.get(k, empty)["max"]:.3f}'
                for k in HEADLINE) + ' |']
  return '\n'.join(lines) + '\n'


def plot(workdirs: dict[str, epath.Path], summaries: dict[str, dict],
         path: epath.Path) -> None:
  """Gold against sqrt(KL): a panel per run, a line per seed."""
  names = run_names(next(iter(summaries.values())))
  cols = 3
  rows = math.ceil(len(names) / cols)
  fig, axes = plots.plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows),
                                 squeeze=False)
  try:
    for ax, name in zip(axes.flat, names):
      for seed, workdir in workdirs.items():
        records = [r for r in writers.read_metrics(str(workdir / name))
                   if r.get('eval/gold_reward') is not None]
        xs = [math.sqrt(max(r['eval/kl'], 0.0)) for r in records]
        line, = ax.plot(xs, [r['eval/gold_reward'] for r in records],
                        marker='.', markersize=3, label=f'seed {seed}')
        ax.axhline(summaries[seed]['gold_reward/sft'], color=line.get_color(),
                   linestyle=':', linewidth=0.8)
      ax.set_title(name)
      ax.set_xlabel('sqrt(KL(pi || pi_sft)) [sqrt nats]')
      ax.set_ylabel('gold reward (dotted: warm start)')
      ax.grid(True, alpha=0.3)
      ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(names):]:
      ax.axis('off')
    fig.suptitle('Gold reward against KL, every seed')
    fig.tight_layout()
    plots.save(fig, path)
  finally:
    plots.plt.close(fig)


def main(argv):
  del argv
  workdir = epath.Path(_WORKDIR.value)
  workdir.mkdir(parents=True, exist_ok=True)
  summaries, workdirs = {}, {}
  for seed in _SEEDS.value:
    config = ml_collections.ConfigDict(_CONFIG.value)
    config.seed = int(seed)
    workdirs[seed] = workdir / f'seed{seed}'
    summaries[seed] = recipe.run(config, str(workdirs[seed]))
    # The times of the invocation that trained (a finished study found
    # again takes seconds).
    saved = writers.read_summary(workdirs[seed])
    for key in ('wall_time_s', 'cpu_time_s'):
      if key in saved:
        summaries[seed][key] = saved[key]
    # Written after every seed: an interrupted sweep keeps what it has.
    (workdir / 'seeds.json').write_text(json.dumps(
        {'seeds': summaries, 'aggregate': aggregate(summaries)}, indent=1))
  summaries = dict(sorted(summaries.items(), key=lambda kv: int(kv[0])))
  (workdir / 'seeds.json').write_text(json.dumps(
      {'seeds': summaries, 'aggregate': aggregate(summaries)}, indent=1))
  (workdir / 'seeds.md').write_text(tables(summaries))
  plot(workdirs, summaries, workdir / 'seeds_gold_vs_kl.png')
  print(tables(summaries))


if __name__ == '__main__':
  app.run(main)
