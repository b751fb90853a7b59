"""What jaxrlgen's datasets share: a TFDS builder that lives outside TFDS's
registry and writes `array_record` files, and building-then-opening them.

Each dataset (`arithmetic`, `digits`) is a `LocalBuilder` with a config per
setting; `prepare_and_open` builds a setting once into
`{data_dir}/{name}/{config.name}/{version}` and returns random-access
`tfds.data_source`s of its splits (no TensorFlow needed). Building is
deterministic given the config, so hosts with local disks may each build
their own copy, and a concurrent build into a shared directory is tolerated.

`open_dataset` also reads every shard back before anything is computed: a
truncated, garbled or missing `array_record` shard, or a damaged
`dataset_info.json` / `features.json`, is a `DataFileError` naming the file
-- after one automatic rebuild on a single-process run, where the damaged
directory is moved aside to `{version}.corrupt` and built again (cheap, and
deterministic in the config).
"""

from collections.abc import Sequence
import inspect
from typing import Any

from absl import logging
from array_record.python import array_record_module
from etils import epath
import jax
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


class DataFileError(ValueError):
  """A prepared dataset's file that does not read back whole."""


def verify(builder: LocalBuilder) -> None:
  """Reads every record of every shard of a prepared `builder` back.

  Each shard must hold the records `dataset_info.json` counts, and every
  chunk must match its stored hash (array_record checks it on reading).
  Reading undecoded records is fast (~10 ms per 10,000 short records).

  Raises:
    DataFileError: naming the shard and what is wrong with it.
  """
  for name, split in builder.info.splits.items():
    for path, expected in zip(split.filepaths, split.shard_lengths):
      try:
        reader = array_record_module.ArrayRecordReader(
            str(path), 'readahead_buffer_size:0')
        try:
          count, records = reader.num_records(), reader.read_all()
        finally:
          reader.close()
      except Exception as e:  # pylint: disable=broad-except
        # array_record raises RuntimeError, sometimes with no message.
        raise DataFileError(
            f'{path} ({name} split) does not read: {type(e).__name__}: '
            f'{e or "truncated or damaged"}') from e
      if count != expected or len(records) != expected:
        raise DataFileError(
            f'{path} ({name} split) holds {len(records)} records; its '
            f'dataset_info.json counts {expected}.')


def open_dataset(builder_cls: type[LocalBuilder], data_dir: str,
                 config: tfds.core.BuilderConfig
                 ) -> dict[str, Sequence[dict[str, Any]]]:
  """`prepare_and_open` of `builder_cls(data_dir, config)`, every shard
  verified; a damaged prepared copy is rebuilt once (single process) or
  reported.

  Returns:
    `{split: source}` as `prepare_and_open`.
  Raises:
    DataFileError: the prepared copy under `data_dir` is damaged (and, on
      one process, stays damaged after a rebuild); the message names the
      file and the fix.
  """
  version_dir = (epath.Path(data_dir) / builder_cls.name / config.name /
                 str(builder_cls.VERSION))
  for attempt in range(2):
    existed = version_dir.exists()
    try:
      # Reads dataset_info.json and features.json of a prepared copy.
      builder = builder_cls(data_dir=data_dir, config=config,
                            file_format='array_record')
      sources = prepare_and_open(builder)
      verify(builder)
      for source in sources.values():
        if len(source):
          source[0]  # pylint: disable=pointless-statement  # Decodes.
      return sources
    except Exception as e:  # pylint: disable=broad-except
      if not existed and not isinstance(e, DataFileError):
        raise  # A build that failed; no file of ours was damaged.
      problem = f'{type(e).__name__}: {e}'
      if attempt == 0 and jax.process_count() == 1 and version_dir.exists():
        aside = _set_aside(version_dir)
        logging.warning('The prepared dataset %s is damaged (%s); moved to '
                        '%s, building it again.', version_dir, problem, aside)
        continue
      raise DataFileError(
          f'The prepared dataset {version_dir} is damaged: {problem[:1000]}\n'
          f'Delete {version_dir} (on every host that has a copy) and run '
          'again to rebuild it: building is deterministic in the config.'
      ) from e
  raise AssertionError('unreachable')


def _set_aside(directory: epath.Path) -> epath.Path:
  """Renames `directory` to `<name>.corrupt` (or `.corrupt-N`); the path."""
  target = directory.parent / f'{directory.name}.corrupt'
  n = 0
  while target.exists():
    n += 1
    target = directory.parent / f'{directory.name}.corrupt-{n}'
  directory.rename(target)
  return target
