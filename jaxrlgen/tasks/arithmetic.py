"""'a+b=' -> the sum: the task of the demo and the algorithm tables."""

import dataclasses
from typing import ClassVar

from jaxrlgen import schema
from jaxrlgen.data import arithmetic
from jaxrlgen.tasks import base


@dataclasses.dataclass(frozen=True)
class ArithmeticConfig:
  """`config.task` of the arithmetic task (with `name='arithmetic'`)."""

  SPECIAL: ClassVar[schema.Special] = {
      'seed': schema.Means(zero='a seed like any other')}

  max_operand: int = 99  # Operands are drawn from 0..max_operand.
  num_train: int = 8000  # Training (a, b) pairs.
  num_test: int = 1000  # Held-out pairs, disjoint from training.
  seed: int = 0  # Seed of the dataset's pair split.

  def __post_init__(self):
    schema.positive(self, 'max_operand', 'num_train', 'num_test')
    schema.non_negative(self, 'seed')
    pairs = (self.max_operand + 1) ** 2
    if self.num_train + self.num_test > pairs:
      raise schema.FieldError(
          'num_train', f'+ num_test = {self.num_train + self.num_test} '
          f'exceeds the {pairs} distinct pairs of max_operand='
          f'{self.max_operand}.')


def load(cfg: ArithmeticConfig, data_dir: str) -> base.Splits:
  splits = arithmetic.load_arithmetic(data_dir, cfg.max_operand, cfg.num_train,
                                      cfg.num_test, seed=cfg.seed)
  return base.Splits(splits['train'], splits['test'])


SPEC = base.TaskSpec(
    config_cls=ArithmeticConfig, load=load, fields=('answer',),
    reward={'exact_match': 1.0},
    description='"a+b=" -> the sum; the integer answer is the reward field.')
