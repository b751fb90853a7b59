"""Runs an experiment from an ml_collections config file.

  python -m experiments.main --config=experiments/configs/arithmetic_grpo.py \
      --workdir=/tmp/arithmetic_grpo [--config.total_steps=20 ...]

Restarting with the same --workdir resumes from its newest checkpoint.

A preemption notice (SIGTERM; SIGUSR1, which SLURM's --signal=USR1@SECONDS
sends) saves the checkpoint of the current step, prints where, and exits
with status 75 (EX_TEMPFAIL): start the same command again to resume.
"""

import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from jaxrlgen import recipes
from jaxrlgen.train import preemption

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, '
                               'metrics, summary and plots.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if not flags.FLAGS['verbosity'].present:
    # Library INFO logs (orbax's, mostly) drown the progress bar;
    # --verbosity=0 brings them back.
    logging.set_verbosity(logging.WARNING)
  try:
    with preemption.listen():
      recipes.run(_CONFIG.value, _WORKDIR.value)
  except preemption.Preempted as e:
    print(e, file=sys.stderr, flush=True)
    sys.exit(preemption.EXIT_CODE)


if __name__ == '__main__':
  app.run(main)
