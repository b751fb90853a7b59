"""The "a+b=" addition task as a TFDS dataset stored as ArrayRecord.

Each example is a prompt such as "17+5=" and its completion "22". Train and
test hold disjoint sets of (a, b) pairs, so test accuracy measures
generalisation rather than recall.

The data is written once per setting by `tfds`'s `GeneratorBasedBuilder` in
the `array_record` file format and read back with `tfds.data_source`, which
gives random access by index without TensorFlow. Each setting of
`ArithmeticConfig` builds into its own directory,
`{data_dir}/arithmetic/{config.name}/{version}`; loading the same setting
again reuses it.

Building is deterministic given the config, so hosts with local disks may each
build their own copy and hold identical records; on a shared filesystem a
concurrent build by another process is tolerated, a damaged copy rebuilt or
reported (`builders.open_dataset`).
"""

from collections.abc import Iterator, Sequence
import dataclasses
from typing import Any

import numpy as np
import tensorflow_datasets as tfds

from jaxrlgen.data import builders

# Keeps a + b inside int32, the dtype of the `answer` feature.
_MAX_OPERAND_LIMIT = 2**30 - 1


@dataclasses.dataclass(eq=False, kw_only=True)
class ArithmeticConfig(tfds.core.BuilderConfig):
  """What to build: operand range, split sizes and the sampling seed.

  `name` is derived from the fields, so equal settings share a directory and
  different settings never overwrite each other.

  The instance is read-only after construction and compares and hashes by its
  fields. (It cannot be a `frozen=True` dataclass: `tfds.core.BuilderConfig`
  is a non-frozen dataclass and Python forbids a frozen subclass of one, so
  immutability is enforced by `__setattr__` instead.)

  Attributes:
    max_operand: operands a and b are drawn from 0..max_operand inclusive.
    num_train: number of training examples.
    num_test: number of test examples.
    seed: seeds the draw of the (a, b) pairs.
  """

  name: str = dataclasses.field(default='', init=False)
  max_operand: int
  num_train: int
  num_test: int
  seed: int = 0

  def __post_init__(self):
    for field in ('max_operand', 'num_train', 'num_test', 'seed'):
      value = getattr(self, field)
      if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
        raise TypeError(f'ArithmeticConfig.{field} must be an int, got '
                        f'{value!r}.')
    if not 0 <= self.max_operand <= _MAX_OPERAND_LIMIT:
      raise ValueError(f'max_operand must be in [0, {_MAX_OPERAND_LIMIT}] so '
                       f'a + b fits in int32, got {self.max_operand}.')
    if self.num_train < 1 or self.num_test < 1:
      raise ValueError('num_train and num_test must both be >= 1, got '
                       f'num_train={self.num_train}, num_test={self.num_test}.')
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {self.seed}.')
    num_pairs = self.num_pairs
    if self.num_train + self.num_test > num_pairs:
      raise ValueError(
          f'num_train + num_test = {self.num_train + self.num_test} exceeds '
          f'the {num_pairs} distinct (a, b) pairs with operands in '
          f'0..{self.max_operand}; train and test must be disjoint, so raise '
          'max_operand or ask for fewer examples.')
    object.__setattr__(
        self, 'name',
        f'max{self.max_operand}_train{self.num_train}_test{self.num_test}'
        f'_seed{self.seed}')
    object.__setattr__(self, '_frozen', True)

  def __setattr__(self, attr: str, value: Any):
    if getattr(self, '_frozen', False):
      raise dataclasses.FrozenInstanceError(
          f'cannot assign to field {attr!r} of a frozen ArithmeticConfig; '
          'use dataclasses.replace.')
    super().__setattr__(attr, value)

  def __delattr__(self, attr: str):
    raise dataclasses.FrozenInstanceError(
        f'cannot delete field {attr!r} of a frozen ArithmeticConfig.')

  def _key(self) -> tuple[int, int, int, int]:
    return (self.max_operand, self.num_train, self.num_test, self.seed)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, ArithmeticConfig):
      return NotImplemented
    return self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key())

  @property
  def num_pairs(self) -> int:
    """How many distinct (a, b) pairs the operand range allows."""
    return (self.max_operand + 1)**2


def draw_pairs(config: ArithmeticConfig) -> dict[str, np.ndarray]:
  """Draws the distinct (a, b) pairs of each split.

  Pairs are drawn without replacement from the `num_pairs` flattened indices
  (`Generator.choice` samples without materialising the whole range, so a huge
  `max_operand` is cheap), then cut into train and test, which makes the
  splits disjoint by construction.

  Args:
    config: the dataset setting.

  Returns:
    `{'train': int64[num_train, 2], 'test': int64[num_test, 2]}`, columns
    (a, b).
  """
  rng = np.random.default_rng(config.seed)
  flat = rng.choice(config.num_pairs, size=config.num_train + config.num_test,
                    replace=False)
  pairs = np.stack(np.divmod(flat, config.max_operand + 1), axis=1)
  return {'train': pairs[:config.num_train], 'test': pairs[config.num_train:]}


class ArithmeticBuilder(builders.LocalBuilder, skip_registration=True):
  """TFDS builder for the addition task; needs an `ArithmeticConfig`.

  Its generator yields the pairs in their random draw order.
  """

  name = 'arithmetic'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    # `tfds.core.DatasetInfo(builder=self, ...)` rather than
    # `self.dataset_info_from_configs`, which needs the builder to live in a
    # registered dataset package.
    return tfds.core.DatasetInfo(
        builder=self,
        description='Addition prompts "a+b=" with the sum as completion.',
        features=tfds.features.FeaturesDict({
            'prompt': tfds.features.Text(),
            'completion': tfds.features.Text(),
            'answer': np.int32,
            'a': np.int32,
            'b': np.int32,
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # Nothing to download.
    pairs = draw_pairs(self.builder_config)
    return {split: self._generate_examples(p) for split, p in pairs.items()}

  def _generate_examples(self, pairs: np.ndarray
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    for i, (a, b) in enumerate(pairs.tolist()):
      yield i, {
          'prompt': f'{a}+{b}=',
          'completion': str(a + b),
          'answer': a + b,
          'a': a,
          'b': b,
      }


def load_arithmetic(
    data_dir: str,
    max_operand: int,
    num_train: int,
    num_test: int,
    seed: int = 0,
) -> dict[str, Sequence[dict[str, Any]]]:
  """Builds the dataset if it is not there yet and opens both splits.

  Records are dicts `{'prompt': bytes, 'completion': bytes, 'answer': int,
  'a': int, 'b': int}` (stored as int32); the sources support `len`, `source[i]` and
  `source.__getitems__(indices)`. Every host opens the whole split and reads
  only the indices `pipeline.batch_indices` gives it.

  Args:
    data_dir: root directory for TFDS data.
    max_operand: operands are drawn from 0..max_operand inclusive.
    num_train: number of training examples.
    num_test: number of test examples.
    seed: seed of the draw.

  Returns:
    `{'train': source, 'test': source}`, random-access sequences of records.
  """
  config = ArithmeticConfig(max_operand=max_operand, num_train=num_train,
                            num_test=num_test, seed=seed)
  return builders.open_dataset(ArithmeticBuilder, data_dir, config)
