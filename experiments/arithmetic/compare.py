"""Policy-gradient algorithms on arithmetic, on several seeds, from one warm
start per seed.

  python -m experiments.arithmetic.compare --workdir=/tmp/arith_cmp \\
      --algos=grpo,dr_grpo,rloo,ppo,reinforce --seeds=0,1,2 \\
      --config.total_steps=400 \\
      [--config=experiments/arithmetic/config.py[:variants]] [--config.*=...]

Each (seed, algorithm) is an ordinary run of the experiment in
`<workdir>/seed<s>/<algorithm>/`, of `config.py:<algorithm>[,variants]` with
`--config.seed=<s>` and every `--config.*` override. The data are built once
under `<workdir>/data`. Within a seed the first run trains the supervised warm
start (`sft/`); the other runs start from copies of it, so every algorithm of
a seed fine-tunes the same model and the seed's spread covers the warm start
and the RL together. Algorithms whose model differs (a value head: `ppo`,
`a2c`, `impala`, `mcts`) cannot restore the others' checkpoint and share a
warm start of their own, trained from the same initialisation and data (the
head starts at zero and takes no gradient from the likelihood). A restart
resumes every unfinished run and reads the finished ones back
(`experiments/compare.py`).

Writes under `<workdir>`: `compare.json` (every run's summary, and per
algorithm each figure's mean, sample standard deviation, minimum and maximum
over the seeds), `compare.md` (the README's tables: mean ± std over seeds,
per seed) and `compare.png` (held-out accuracy against RL steps, a thin line
per seed and a thick one for the mean, a colour per algorithm).
"""

import ml_collections

from experiments import compare
from experiments.arithmetic import config as config_lib
from jaxrlgen import algos
from jaxrlgen.recipes import text_rl


def check(config: ml_collections.ConfigDict) -> None:
  """The recipe's checks of the sections and the algorithm's."""
  text_rl.parse(config)
  algos.make(config.algo)


def warm_start_key(config: ml_collections.ConfigDict) -> str:
  """What the warm start's checkpoint depends on besides the seed."""
  return '\n'.join(config[name].to_json()
                   for name in ('model', 'task', 'data', 'sft'))


EXPERIMENT = compare.Experiment(
    title='Arithmetic',
    config_file='experiments/arithmetic/config.py',
    get_config=config_lib.get_config,
    algorithms=tuple(config_lib.ALGORITHMS),
    default_algorithms=('grpo', 'dr_grpo', 'rloo', 'ppo', 'reinforce'),
    headline=(
        compare.Headline('eval/accuracy_before', 'accuracy before'),
        compare.Headline('eval/accuracy_after', 'after'),
        compare.Headline('eval/accuracy_gain', 'gain', signed=True)),
    per_seed=(
        compare.PerSeed('accuracy before -> after',
                        ('eval/accuracy_before', 'eval/accuracy_after')),
        compare.PerSeed('gain', ('eval/accuracy_gain',), '{:+.3f}'),
        compare.PerSeed('wall time', ('wall_time_s',), '{:.0f} s')),
    curves=(('eval/accuracy', 'held-out accuracy (greedy exact match)'),),
    stages=('sft',),  # The warm start, trained once per seed (and model).
    share_key=warm_start_key,
    check=check)


if __name__ == '__main__':
  compare.cli(EXPERIMENT)
