"""Several RL algorithms on the digits, on several seeds, from one model per seed.

  python -m experiments.ddpo_digits.compare --workdir=/tmp/ddpo_compare \\
      --algos=ddpo_is,dpok,grpo,dr_grpo,rloo --seeds=0,1,2 \\
      [--config=experiments/ddpo_digits/config.py[:variants]] [--config.*=...]

Each (seed, algorithm) is an ordinary run of the experiment in
`<workdir>/seed<s>/<algorithm>/`, of the config with `--config.seed=<s>` and
that algorithm's `config.algo` (`config.algo_config`; `--config.*` overrides
then apply to every algorithm). Within a seed the first run trains the
reward classifier and the pretrained denoiser; the other runs start from
copies of them, so every algorithm of a seed fine-tunes the same model
against the same classifier, and the seed's spread covers the classifier,
the pretraining and the RL together. A restart resumes every unfinished run
and reads the finished ones back (`experiments/compare.py`).

Writes under `<workdir>`:
  - `compare.json`: every run's summary, and per algorithm each figure's mean,
    sample standard deviation, minimum and maximum over the seeds;
  - `compare.md`: the tables of the README (mean ± std over seeds, per seed);
  - `compare.png`: evaluation reward and class accuracy against RL steps, a
    thin line per seed and a thick one for the mean, a colour per algorithm;
  - `samples_<algorithm>.png`: the first seed's samples after RL.
"""

import shutil

from etils import epath

from experiments import compare
from experiments.ddpo_digits import config as config_lib
from experiments.ddpo_digits import recipe


def copy_samples(results: compare.Results, workdir: epath.Path) -> None:
  """The first seed's grids of samples after RL, one per algorithm."""
  first = next(iter(results))
  for name in results[first]:
    grid = workdir / f'seed{first}' / name / 'samples_after.png'
    if grid.exists():
      shutil.copyfile(grid, workdir / f'samples_{name}.png')


EXPERIMENT = compare.Experiment(
    title='Digits',
    config_file='experiments/ddpo_digits/config.py',
    get_config=config_lib.get_config,
    algorithms=config_lib.ALGORITHMS,
    default_algorithms=('ddpo_is', 'dpok', 'grpo', 'dr_grpo', 'rloo'),
    headline=(
        compare.Headline('eval/reward_before', 'eval reward before'),
        compare.Headline('eval/reward_after', 'after'),
        compare.Headline('eval/reward_gain', 'gain', signed=True),
        compare.Headline('eval/class_accuracy_before',
                         'class accuracy before'),
        compare.Headline('eval/class_accuracy_after', 'after'),
        compare.Headline('eval/class_accuracy_gain', 'change', signed=True)),
    per_seed=(
        compare.PerSeed('eval reward before -> after',
                        ('eval/reward_before', 'eval/reward_after')),
        compare.PerSeed('class accuracy before -> after',
                        ('eval/class_accuracy_before',
                         'eval/class_accuracy_after')),
        compare.PerSeed('RL time', ('time/rl_s',), '{:.0f} s')),
    curves=(('eval/reward', 'evaluation reward (log p(class))'),
            ('eval/class_accuracy', 'class accuracy')),
    stages=('classifier', 'pretrain'),  # Trained once per seed, then shared.
    check=config_lib.parse,
    run=recipe.run,
    extra_report=copy_samples)


if __name__ == '__main__':
  compare.cli(EXPERIMENT)
