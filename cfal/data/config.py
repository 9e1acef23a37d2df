"""What to train on, as plain values: known without TensorFlow.

The command line checks a dataset name and builds a `DataConfig` before
TensorFlow is imported, so a mistyped name is a usage error at once.
"""

from __future__ import annotations

import dataclasses

DATASETS = ("fashion_mnist", "mnist", "folder:<path>")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train and evaluate on.

  Attributes:
    name: "fashion_mnist", "mnist" or "folder:<path>".
    data_dir: where to look first for the files.
    validation_split: fraction of each class of the training split held out
      for validation (before any long-tail subsampling, so validation stays
      as balanced as the source).
    imbalance_ratio: R >= 1; R > 1 makes the training set long-tailed
      (class c keeps n_max * R^(-c/(C-1)) examples).
    image_size: side length images are resized to (folders only; None keeps
      28 for the digit sets and uses 112 for folders).
    augment: "none", "flip" or "flip_rotate".
    seed: fixes the split, the subsampling, the order and augmentation.
    max_bad_fraction: folders only: unreadable files are skipped and
      reported, but more than this fraction of them stops the run (a broken
      copy, not a few bad tiles).
  """

  name: str = "fashion_mnist"
  data_dir: str | None = None
  validation_split: float = 0.1
  imbalance_ratio: float = 1.0
  image_size: int | None = None
  augment: str = "none"
  seed: int = 0
  max_bad_fraction: float = 0.01


def check_dataset_name(name: str) -> None:
  """Raises ValueError (one line) unless `name` names a known dataset.

  Whether a folder exists and holds images is the loader's to say (a data
  error); here only the form of the name is checked.
  """
  if name in ("fashion_mnist", "mnist"):
    return
  if name.startswith("folder:") and name[len("folder:"):].strip():
    return
  raise ValueError(f"Unknown dataset {name!r}; choose one of "
                   f"{', '.join(DATASETS)}.")


def has_test_split(name: str) -> bool:
  """Whether dataset `name` brings its own test split (known without
  reading any data): the digit sets do, an image folder does not."""
  return not name.startswith("folder:")
