"""scikit-learn's 8x8 handwritten digits as a TFDS dataset stored as ArrayRecord.

The 1,797 images of `sklearn.datasets.load_digits` (the test set of the UCI
"Optical Recognition of Handwritten Digits" data, Alpaydin & Kaynak 1998) ship
inside scikit-learn, so building needs no download. Pixels are integers 0..16.

Two disjoint splits, stratified by class:
  train:   what the denoiser is pretrained on;
  heldout: `heldout_per_class` images of each digit, what the reward
           classifier is trained on, so that the classifier judges samples
           with knowledge the denoiser never saw (its accuracy on `train` is
           a held-out accuracy too).

Built once per setting by a `GeneratorBasedBuilder` in the `array_record`
format and read back with `tfds.data_source` (random access, no TensorFlow),
through `jaxrlgen.data.builders`; `to_arrays` turns a split
into float arrays in [-1, 1], optionally upsampled.
"""

from collections.abc import Iterator, Mapping, Sequence
import dataclasses
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds

from jaxrlgen.data import builders

NUM_CLASSES = 10
IMAGE_SIZE = 8
MAX_PIXEL = 16  # load_digits' pixel range is 0..16.
_MIN_CLASS_COUNT = 174  # The rarest digit (8) has 174 images.


@dataclasses.dataclass(eq=False, kw_only=True)
class DigitsConfig(tfds.core.BuilderConfig):
  """The split of the digits: held-out images per class and the seed.

  `name` is derived from the fields, so each setting builds into its own
  directory. (Not a frozen dataclass: `tfds.core.BuilderConfig` is not one,
  and Python forbids a frozen subclass of a non-frozen dataclass.)

  Attributes:
    heldout_per_class: images of each digit in the `heldout` split.
    seed: seeds which images go to `heldout`.
  """

  name: str = dataclasses.field(default='', init=False)
  heldout_per_class: int = 70
  seed: int = 0

  def __post_init__(self):
    if not 1 <= self.heldout_per_class < _MIN_CLASS_COUNT:
      raise ValueError(
          f'heldout_per_class={self.heldout_per_class} must be in [1, '
          f'{_MIN_CLASS_COUNT - 1}]: the rarest digit has {_MIN_CLASS_COUNT} '
          'images and the train split needs some of each.')
    if self.seed < 0:
      raise ValueError(f'seed must be >= 0, got {self.seed}.')
    self.name = f'heldout{self.heldout_per_class}_seed{self.seed}'

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, DigitsConfig):
      return NotImplemented
    return self.name == other.name

  def __hash__(self) -> int:
    return hash(self.name)


def split_indices(labels: np.ndarray, heldout_per_class: int,
                  seed: int) -> dict[str, np.ndarray]:
  """Row indices of each split, stratified by class, in a seeded random order.

  Args:
    labels: int[N] digit of each image.
    heldout_per_class: images of each class that go to `heldout`.
    seed: seeds the draw.
  Returns:
    `{'train': int64[...], 'heldout': int64[10 * heldout_per_class]}`,
    disjoint and covering range(N).
  """
  rng = np.random.default_rng(seed)
  train, heldout = [], []
  for c in range(NUM_CLASSES):
    rows = rng.permutation(np.flatnonzero(labels == c))
    heldout.append(rows[:heldout_per_class])
    train.append(rows[heldout_per_class:])
  # Shuffled across classes too, so that a prefix of a split is a fair sample.
  return {'train': rng.permutation(np.concatenate(train)),
          'heldout': rng.permutation(np.concatenate(heldout))}


class DigitsBuilder(builders.LocalBuilder, skip_registration=True):
  """TFDS builder of scikit-learn's digits; needs a `DigitsConfig`.

  Records keep the seeded order of `split_indices`.
  """

  name = 'sklearn_digits'
  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='8x8 handwritten digits from scikit-learn, pixels 0..16.',
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Tensor(shape=(IMAGE_SIZE, IMAGE_SIZE, 1),
                                          dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
            'index': np.int32,  # Row in load_digits(), for traceability.
        }),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # The data ships with scikit-learn.
    # Imported here: only building needs scikit-learn, not reading.
    from sklearn import datasets  # pylint: disable=g-import-not-at-top
    digits = datasets.load_digits()
    images = digits.images.astype(np.uint8)[..., None]
    labels = digits.target.astype(np.int64)
    cfg = self.builder_config
    rows = split_indices(labels, cfg.heldout_per_class, cfg.seed)
    return {split: self._generate_examples(images, labels, r)
            for split, r in rows.items()}

  def _generate_examples(self, images: np.ndarray, labels: np.ndarray,
                         rows: np.ndarray
                         ) -> Iterator[tuple[int, dict[str, Any]]]:
    for key, row in enumerate(rows.tolist()):
      yield key, {'image': images[row], 'label': int(labels[row]),
                  'index': row}


def load_digits(data_dir: str, heldout_per_class: int = 70,
                seed: int = 0) -> dict[str, Sequence[dict[str, Any]]]:
  """Builds the dataset if it is not there yet and opens both splits.

  Args:
    data_dir: root directory for TFDS data.
    heldout_per_class: images per digit in the classifier's `heldout` split.
    seed: seed of the split.
  Returns:
    `{'train': source, 'heldout': source}`, random-access sequences of
    records `{'image': uint8[8, 8, 1], 'label': int, 'index': int}`.
  """
  config = DigitsConfig(heldout_per_class=heldout_per_class, seed=seed)
  return builders.open_dataset(DigitsBuilder, data_dir, config)


def to_arrays(source: Sequence[Mapping[str, Any]], image_size: int = IMAGE_SIZE
              ) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as arrays (the digits are tiny: all of them fit in memory).

  Args:
    source: a split from `load_digits`.
    image_size: side of the returned images; 8 is the stored size, larger
      sizes are bilinear upsamplings.
  Returns:
    (images f32[N, image_size, image_size, 1] in [-1, 1], labels i32[N]).
  """
  if image_size < IMAGE_SIZE:
    raise ValueError(f'image_size={image_size} must be >= {IMAGE_SIZE}, the '
                     'stored size (downsampling would lose the digits).')
  records = source.__getitems__(range(len(source)))
  images = np.stack([r['image'] for r in records]).astype(np.float32)
  labels = np.array([r['label'] for r in records], np.int32)
  images = images / (MAX_PIXEL / 2) - 1.0
  if image_size != IMAGE_SIZE:
    images = np.asarray(jax.image.resize(
        images, (len(images), image_size, image_size, 1), 'bilinear'))
  return images, labels
