"""Datasets by name: sources, the train/validation/test split, class counts."""

from __future__ import annotations

import dataclasses

import numpy as np
import tensorflow as tf

from cfal.data import pipeline
from cfal.data.config import (DATASETS, DataConfig, check_dataset_name,
                               has_test_split)
from cfal.data.errors import DataError
from cfal.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from cfal.data.long_tail import long_tailed_indices

DIGIT_CLASSES = tuple(str(d) for d in range(10))

__all__ = ["DATASETS", "DataBundle", "DataConfig", "DIGIT_CLASSES",
           "check_dataset_name", "has_test_split", "load_data",
           "stratified_split"]


@dataclasses.dataclass(frozen=True)
class DataBundle:
  """A loaded dataset, ready for `pipeline.train_dataset`/`eval_dataset`."""

  name: str
  source: pipeline.ImageSource
  train_indices: np.ndarray
  validation_indices: np.ndarray
  test_source: pipeline.ImageSource | None
  notes: tuple[str, ...] = ()

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


def load_data(config: DataConfig) -> DataBundle:
  """Loads `config.name` and splits it as the config says."""
  name = config.name
  check_dataset_name(name)
  if name.startswith("folder:"):
    train, test, notes = _load_folder(name[len("folder:"):], config)
  else:
    train, test, notes = _load_digits_like(name, config.data_dir)
  rest, validation = stratified_split(train.labels, config.validation_split,
                                      config.seed)
  if config.imbalance_ratio != 1.0:
    keep = long_tailed_indices(train.labels[rest], config.imbalance_ratio,
                               seed=config.seed)
    rest = rest[keep]
  return DataBundle(name=name, source=train, train_indices=rest,
                    validation_indices=validation, test_source=test,
                    notes=tuple(notes))


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
          pipeline.array_source(tx, ty, classes), [])


def _load_folder(root, config):
  from cfal.data import folder  # pylint: disable=import-outside-toplevel
  index = folder.scan_image_folder(root)
  size = config.image_size or 112
  notes = []
  if index.bad_files:
    total = len(index.bad_files) + len(index.paths)
    fraction = len(index.bad_files) / total
    if fraction > config.max_bad_fraction:
      path, why = index.bad_files[0]
      raise DataError(
          f"{root}: {len(index.bad_files)} of {total} image files "
          f"({fraction:.1%}) are unreadable, more than --max_bad_fraction="
          f"{config.max_bad_fraction:g} (e.g. {path}: {why}); repair or "
          f"remove them, or raise --max_bad_fraction.")
    shown = "; ".join(f"{p} ({why})" for p, why in index.bad_files[:5])
    more = len(index.bad_files) - 5
    notes.append(f"skipped {len(index.bad_files)} unreadable file(s): {shown}"
                 + (f" and {more} more" if more > 0 else ""))
  if index.mixed_channels:
    notes.append(f"images had different channel counts; all were converted "
                 f"to {index.channels} channel(s)")
  paths = tf.constant(list(index.paths))

  def load_example(i):
    return folder.decode_image(tf.gather(paths, i), image_size=(size, size),
                               channels=index.channels)

  source = pipeline.ImageSource(
      labels=np.asarray(index.labels, np.int32), class_names=index.class_names,
      image_shape=(size, size, index.channels), load_example=load_example)
  if len(source) == 0:
    raise DataError(f"No readable images under {root}.")
  return source, None, notes
