"""Datasets by name: sources, the train/validation/test split, class counts.

Image folders and CSV manifests are scanned (with the scan cache of
`cfal.data.scan`), optionally split by group (`cfal.data.groups`), and
may bring an external test set (`DataConfig.test_dataset`).
`split_record(bundle)` lists every file of every split, for a run to keep.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import numpy as np
import tensorflow as tf

from cfal.data import groups as groups_lib
from cfal.data import pipeline
from cfal.data.config import (DATASETS, GROUP_COLUMN, DataConfig,
                               check_data_config, check_dataset_name,
                               compile_group_pattern, has_test_split)
from cfal.data.errors import DataError
from cfal.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from cfal.data.long_tail import long_tailed_indices
from cfal.data.scan import ScanProgress

DIGIT_CLASSES = tuple(str(d) for d in range(10))
SPLITS_FORMAT = "cfal-splits"

__all__ = ["DATASETS", "DataBundle", "DataConfig", "DIGIT_CLASSES",
           "check_data_config", "check_dataset_name", "has_test_split",
           "load_data", "split_record", "stratified_split"]

Progress = Callable[[ScanProgress], None]


@dataclasses.dataclass(frozen=True)
class DataBundle:
  """A loaded dataset, ready for `pipeline.train_dataset`/`eval_dataset`.

  Attributes:
    name: the dataset's name.
    source: the training set's examples (training and validation).
    train_indices, validation_indices: examples of `source` in each split.
    test_source: the test set (its own or `DataConfig.test_dataset`), or
      None.
    notes: lines worth showing the user (skipped files, the scan, the
      group split).
    config: the settings it was loaded with.
  """

  name: str
  source: pipeline.ImageSource
  train_indices: np.ndarray
  validation_indices: np.ndarray
  test_source: pipeline.ImageSource | None
  notes: tuple[str, ...] = ()
  config: DataConfig | None = None

  @property
  def num_classes(self) -> int:
    return self.source.num_classes

  @property
  def class_names(self) -> tuple[str, ...]:
    return self.source.class_names

  @property
  def image_shape(self) -> tuple[int, int, int]:
    return self.source.image_shape

  @property
  def class_counts(self) -> np.ndarray:
    """Training examples per class, from the data actually used."""
    return np.bincount(self.source.labels[self.train_indices],
                       minlength=self.num_classes)

  @property
  def group_counts(self) -> dict[str, int] | None:
    """Distinct groups in each split ("train", "validation", and "test"
    when its files have groups); None without groups."""
    if self.source.groups is None:
      return None
    groups = self.source.groups
    counts = {
        "train": len({groups[i] for i in self.train_indices}),
        "validation": len({groups[i] for i in self.validation_indices})}
    test = self.test_source
    if test is not None and test.groups is not None:
      counts["test"] = len({g for g in test.groups if g is not None})
    return counts


def stratified_split(labels: np.ndarray, fraction: float,
                     seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices into (rest, held_out) keeping `fraction` of each class."""
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"`validation_split` ({fraction}) must be in [0, 1).")
  rng = np.random.default_rng([seed, 1])
  held = []
  for c in np.unique(labels):
    members = rng.permutation(np.flatnonzero(labels == c))
    held.append(members[:int(round(fraction * members.size))])
  held = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
  rest = np.setdiff1d(np.arange(labels.size), held)
  return rest, held


def load_data(config: DataConfig, *,
              progress: Progress | None = None) -> DataBundle:
  """Loads `config.name` and splits it as the config says.

  Args:
    config: what to load.
    progress: called with a `scan.ScanProgress` every few seconds while
      image files are checked (`scan.print_progress()` prints it).

  Raises:
    ValueError: settings that cannot work (one line): see
      `check_data_config`; a group split that holds nothing out; a
      `cache` too large for the machine.
    DataError: missing or bad data (one line).
  """
  check_data_config(config)
  name = config.name
  notes: list[str] = []
  if name.startswith(("folder:", "csv:")):
    index = _scan(name, config, progress,
                  require_groups=config.group_by in GROUP_COLUMN)
    train = _file_source(name, index, config, notes, channels=None,
                         groups=_groups(name, index, config.group_by))
    test = None
  else:
    train, test = _load_digits_like(name, config.data_dir)
  if train.groups is not None:
    rest, validation = groups_lib.group_split(
        train.labels, train.groups, config.validation_split, config.seed)
    if config.validation_split > 0 and validation.size == 0:
      raise ValueError(
          f"--group_by={config.group_by}: no whole group fits into "
          f"--validation_split={config.validation_split:g} of {name} "
          f"({len(set(train.groups))} groups); raise --validation_split or "
          "group more finely.")
    notes.append(groups_lib.split_summary(
        train.labels, train.groups, rest, validation, train.class_names,
        config.validation_split))
  else:
    rest, validation = stratified_split(train.labels, config.validation_split,
                                        config.seed)
  if config.imbalance_ratio != 1.0:
    keep = long_tailed_indices(train.labels[rest], config.imbalance_ratio,
                               seed=config.seed)
    rest = rest[keep]
  if config.test_dataset:
    test = _load_test(config, train, progress, notes)
  if config.cache and train.load_example is not None:
    train = pipeline.cached_source(train, np.union1d(rest, validation))
    shape = "x".join(str(d) for d in train.image_shape)
    used = np.union1d(rest, validation).size
    notes.append(f"--cache: {used:,} decoded {shape} images kept in memory "
                 f"({used * np.prod(train.image_shape) * 4 / 1e6:,.0f} MB)")
  return DataBundle(name=name, source=train, train_indices=rest,
                    validation_indices=validation, test_source=test,
                    notes=tuple(notes), config=config)


def split_record(bundle: DataBundle) -> dict:
  """Every file of every split, as JSON-able values, for `splits.json`.

  Returns:
    `{"format": "cfal-splits", "version": 1, "dataset", "test_dataset",
    "group_by", "seed", "validation_split", "imbalance_ratio",
    "class_names", "columns": ["file", "class", "group"], "splits":
    {split: {"files": count, "groups": count or None, "entries": [[file,
    class, group], ...]}}}` with the splits "train", "validation",
    "unused" (left out by the long tail; only if any) and "test" (if
    any). A file is its path relative to its folder (as a manifest
    writes it), or its index for in-memory sets; the group is None
    without groups.
  """
  config = bundle.config or DataConfig(name=bundle.name)
  source = bundle.source
  used = np.union1d(bundle.train_indices, bundle.validation_indices)
  unused = np.setdiff1d(np.arange(len(source)), used)
  splits = {"train": _entries(source, np.sort(bundle.train_indices)),
            "validation": _entries(source, np.sort(bundle.validation_indices))}
  if unused.size:
    splits["unused"] = _entries(source, unused)
  if bundle.test_source is not None:
    splits["test"] = _entries(bundle.test_source,
                              np.arange(len(bundle.test_source)))
  return {
      "format": SPLITS_FORMAT, "version": 1, "dataset": bundle.name,
      "test_dataset": config.test_dataset, "group_by": config.group_by,
      "seed": config.seed, "validation_split": config.validation_split,
      "imbalance_ratio": config.imbalance_ratio,
      "class_names": list(bundle.class_names),
      "columns": ["file", "class", "group"], "splits": splits}


def _entries(source: pipeline.ImageSource, indices: np.ndarray) -> dict:
  names, paths, groups = source.class_names, source.paths, source.groups
  entries = [[paths[i] if paths is not None else int(i),
              names[int(source.labels[i])],
              groups[i] if groups is not None else None]
             for i in indices.tolist()]
  distinct = ({e[2] for e in entries if e[2] is not None}
              if groups is not None else None)
  return {"files": len(entries),
          "groups": len(distinct) if distinct is not None else None,
          "entries": entries}


def _load_digits_like(name, data_dir):
  if name == "fashion_mnist":
    x, y = load_fashion_mnist("train", data_dir)
    tx, ty = load_fashion_mnist("test", data_dir)
    classes = FASHION_MNIST_CLASSES
  else:
    from cfal.data.mnist import load_mnist  # pylint: disable=import-outside-toplevel
    x, y = load_mnist("train", data_dir)
    tx, ty = load_mnist("test", data_dir)
    classes = DIGIT_CLASSES
  return (pipeline.array_source(x, y, classes),
          pipeline.array_source(tx, ty, classes))


def _scan(name: str, config: DataConfig, progress: Progress | None, *,
          require_groups: bool = False):
  """The `FolderIndex` of folder:<path> or csv:<path>."""
  kind, _, path = name.partition(":")
  if kind == "folder":
    from cfal.data import folder  # pylint: disable=import-outside-toplevel
    return folder.scan_image_folder(path, progress=progress)
  from cfal.data import manifest  # pylint: disable=import-outside-toplevel
  return manifest.read_manifest(path, require_groups=require_groups,
                                progress=progress)


def _groups(name: str, index, group_by: str | None
            ) -> tuple[str, ...] | None:
  """The group of each file of `index`, or None without `group_by`."""
  if group_by is None:
    return None
  if group_by in GROUP_COLUMN:
    return index.groups
  return groups_lib.groups_from_pattern(index.relative_paths, group_by, name)


def _file_source(name: str, index, config: DataConfig, notes: list[str], *,
                 channels: int | None, groups,
                 test: bool = False) -> pipeline.ImageSource:
  """An ImageSource decoding the files of `index` (bad files checked
  against `max_bad_fraction`); notes what the scan found (about the test
  set: notes start with "test set <path>: ")."""
  from cfal.data import folder  # pylint: disable=import-outside-toplevel
  where = name.partition(":")[2]
  about = f"test set {where}: " if test else ""
  if index.bad_files:
    total = len(index.bad_files) + len(index.paths)
    fraction = len(index.bad_files) / total
    if fraction > config.max_bad_fraction:
      path, why = index.bad_files[0]
      raise DataError(
          f"{where}: {len(index.bad_files)} of {total} image files "
          f"({fraction:.1%}) are unreadable, more than --max_bad_fraction="
          f"{config.max_bad_fraction:g} (e.g. {path}: {why}); repair or "
          f"remove them, or raise --max_bad_fraction.")
    shown = "; ".join(f"{p} ({why})" for p, why in index.bad_files[:5])
    more = len(index.bad_files) - 5
    notes.append(f"{about}skipped {len(index.bad_files)} unreadable "
                 f"file(s): {shown}" + (f" and {more} more" if more > 0
                                         else ""))
  if channels is None:
    channels = index.channels
    if index.mixed_channels:
      notes.append(f"images had different channel counts; all were "
                   f"converted to {channels} channel(s)")
  if index.reused:
    cache = (f"the scan cache {index.cache_file}" if index.cache_file
             else "the scan cache")
    notes.append(f"{about or where + ': '}"
                 f"{len(index.paths) + len(index.bad_files):,} "
                 f"image files, {index.reused:,} unchanged since checked "
                 f"({cache}), {index.verified:,} checked now")
  size = config.image_size or 112
  paths = tf.constant(list(index.paths))

  def load_example(i):
    return folder.decode_image(tf.gather(paths, i), image_size=(size, size),
                               channels=channels)

  source = pipeline.ImageSource(
      labels=np.asarray(index.labels, np.int32), class_names=index.class_names,
      image_shape=(size, size, channels), load_example=load_example,
      paths=tuple(index.relative_paths), groups=groups)
  if len(source) == 0:
    raise DataError(f"No readable images under {where}.")
  return source


def _load_test(config: DataConfig, train: pipeline.ImageSource,
               progress: Progress | None,
               notes: list[str]) -> pipeline.ImageSource:
  """The external test set: every readable file, labelled by the training
  classes' names, decoded like the training images."""
  name = config.test_dataset
  index = _scan(name, config, progress)
  missing = sorted(set(train.class_names) - set(index.class_names))
  extra = sorted(set(index.class_names) - set(train.class_names))
  if missing or extra:
    parts = []
    if missing:
      parts.append(f"lacks the training class(es) {', '.join(missing)}")
    if extra:
      parts.append(f"has class(es) {', '.join(extra)} that training lacks")
    raise DataError(
        f"{name.partition(':')[2]}: the test set {' and '.join(parts)}; "
        "it needs the same classes as the training set, by name.")
  groups = _lenient_groups(index, config.group_by)
  test = _file_source(name, index, config, notes,
                      channels=train.image_shape[2], groups=groups, test=True)
  order = {c: i for i, c in enumerate(train.class_names)}
  relabel = np.array([order[c] for c in index.class_names], np.int32)
  test = dataclasses.replace(test, labels=relabel[test.labels],
                             class_names=train.class_names)
  if groups is not None and train.groups is not None:
    shared = sorted(set(train.groups) & {g for g in groups if g})
    if shared:
      notes.append(
          f"{len(shared)} group(s) are in both the training set and the "
          f"test set (e.g. {shared[0]}): the test set is not independent "
          "of training")
  return test


def _lenient_groups(index, group_by: str | None):
  """The test files' groups where `group_by` finds one (None elsewhere):
  only to record them and report groups shared with training."""
  if group_by is None:
    return None
  if group_by in GROUP_COLUMN:
    return (tuple(g or None for g in index.groups)
            if index.groups is not None else None)
  regex = compile_group_pattern(group_by)
  found = []
  for path in index.relative_paths:
    match = regex.search(path)
    found.append((match.group("group") or None) if match else None)
  return tuple(found) if any(found) else None
