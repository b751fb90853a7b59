"""What jaxrlgen's datasets share: a TFDS builder that lives outside TFDS's
registry and writes `array_record` files, and building-then-opening them.

Each dataset (`arithmetic`, `digits`) is a `LocalBuilder` with a config per
setting; `prepare_and_open` builds a setting once into
`{data_dir}/{name}/{config.name}/{version}` and returns random-access
`tfds.data_source`s of its splits (no TensorFlow needed). Building is
deterministic given the config, so hosts with local disks may each build
their own copy, and a concurrent build into a shared directory is tolerated.
"""

from collections.abc import Sequence
import inspect
from typing import Any

from etils import epath
import tensorflow_datasets as tfds


class LocalBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A `GeneratorBasedBuilder` read through its files, not TFDS's registry.

  The generic names (`arithmetic`, `digits`) would collide in the global
  registry, and reading by explicit version does not need it. Records keep
  the order the generator yields them in, so record i of a split is the
  i-th one drawn.
  """

  disable_shuffling = True

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path:
    # TFDS's own lookup, for a builder inside any package, evaluates
    # `isinstance(path, importlib_resources.abc.Traversable)` and so needs
    # the `importlib_resources` backport, which is not a TFDS dependency; its
    # fallback (the file defining the builder) is what this returns.
    return epath.Path(inspect.getfile(cls))


def prepare_and_open(builder: LocalBuilder
                     ) -> dict[str, Sequence[dict[str, Any]]]:
  """Builds `builder`'s setting unless it is there, and opens every split.

  Returns:
    `{split: source}`; sources support `len`, `source[i]` and
    `source.__getitems__(indices)`.
  """
  try:
    builder.download_and_prepare()  # A no-op when the data is there.
  except OSError:
    # Another process building the same config into a shared data_dir can
    # win the final rename of the temporary directory. The data is
    # deterministic in the config, so its copy is as good as ours.
    if not builder.is_prepared():
      raise
  # An explicit version makes TFDS read the prepared files directly instead
  # of looking the name up among registered builders.
  return tfds.data_source(
      f'{builder.name}/{builder.builder_config.name}:{builder.VERSION}',
      split=None, data_dir=builder.data_dir_root, download=False)
