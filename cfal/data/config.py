"""What to train on, as plain values: known without TensorFlow.

The command line checks a dataset name and builds a `DataConfig` before
TensorFlow is imported, so a mistyped name is a usage error at once.
"""

from __future__ import annotations

import dataclasses
import re

DATASETS = ("fashion_mnist", "mnist", "folder:<path>", "csv:<path>")
# How a training batch picks its examples (`cfal.data.sampling`).
SAMPLERS = ("instance", "class_balanced", "square_root", "progressive")
# --group_by values that mean "the CSV manifest's group column".
GROUP_COLUMN = ("csv", "column")


@dataclasses.dataclass(frozen=True)
class DataConfig:
  """What to train and evaluate on.

  Attributes:
    name: "fashion_mnist", "mnist", "folder:<path>" (one subfolder per
      class) or "csv:<path>" (a manifest with columns path,label[,group],
      see `cfal.data.manifest`).
    data_dir: where to look first for the files.
    validation_split: fraction of each class of the training split held out
      for validation (before any long-tail subsampling, so validation stays
      as balanced as the source).
    imbalance_ratio: R >= 1; R > 1 makes the training set long-tailed
      (class c keeps n_max * R^(-c/(C-1))).
    image_size: side length images are resized to (folders only; None keeps
      28 for the digit sets and uses 112 for folders).
    augment: "none", "flip" or "flip_rotate".
    seed: fixes the split, the subsampling, the order and augmentation.
    max_bad_fraction: folders and manifests: unreadable (or, in a manifest,
      missing) files are skipped and reported, but more than this fraction
      of them stops the run (a broken copy, not a few bad tiles).
    group_by: folders and manifests: make the validation split of whole
      groups (slides, patients), see `cfal.data.groups`. Either a regular
      expression with a named group `(?P<group>...)`, searched anywhere in
      each file's path relative to the folder ("/" separators; a
      manifest's path as its row writes it), or "csv" (alias "column"):
      the manifest's group column. None splits file by file.
    test_dataset: an external test set, "folder:<path>" or "csv:<path>",
      for a folder or manifest training set: loaded whole (no split, no
      long tail) as the test split; it must have the training classes
      (matched by name, in any order).
    cache: keep the decoded training and validation images in memory
      after decoding them once (small sets; the training order is
      unchanged).
    sampler: how training batches pick examples, one of `SAMPLERS`:
      "instance" (every example equally likely: each epoch a fresh
      permutation), "class_balanced" (each non-empty class equally
      likely, then an example of it uniformly), "square_root" (class c
      with probability proportional to sqrt(n_c)) or "progressive"
      (from instance to class-balanced over the run: p_c(t) =
      (1 - t/T) n_c/N + (t/T)/C). An epoch is steps_per_epoch(N, B)
      steps for every sampler; see `cfal.data.sampling`.
  """

  name: str = "fashion_mnist"
  data_dir: str | None = None
  validation_split: float = 0.1
  imbalance_ratio: float = 1.0
  image_size: int | None = None
  augment: str = "none"
  seed: int = 0
  max_bad_fraction: float = 0.01
  group_by: str | None = None
  test_dataset: str | None = None
  cache: bool = False
  sampler: str = "instance"


def check_dataset_name(name: str) -> None:
  """Raises ValueError (one line) unless `name` names a known dataset.

  Whether a folder or manifest exists and holds images is the loader's to
  say (a data error); here only the form of the name is checked.
  """
  if name in ("fashion_mnist", "mnist"):
    return
  if _file_dataset(name):
    return
  raise ValueError(f"Unknown dataset {name!r}; choose one of "
                   f"{', '.join(DATASETS)}.")


def check_data_config(config: DataConfig) -> None:
  """Raises ValueError (one line) for settings that cannot work together:
  the dataset names, `group_by`, `test_dataset` and `sampler`. Reads no
  data."""
  check_dataset_name(config.name)
  if config.sampler not in SAMPLERS:
    raise ValueError(f"Unknown --sampler={config.sampler!r}; choose one of "
                     f"{', '.join(SAMPLERS)}.")
  files = _file_dataset(config.name)
  if config.test_dataset is not None:
    if not _file_dataset(config.test_dataset):
      raise ValueError(
          f"--test_dataset={config.test_dataset!r} must be folder:<path> or "
          "csv:<path>.")
    if not files:
      raise ValueError(
          f"--test_dataset is for folder: and csv: training sets; "
          f"{config.name} has its own test split.")
  if config.group_by is not None:
    if not files:
      raise ValueError(f"--group_by is for folder: and csv: datasets, not "
                       f"{config.name}.")
    if config.group_by in GROUP_COLUMN:
      if not config.name.startswith("csv:"):
        raise ValueError(
            f"--group_by={config.group_by} uses a CSV manifest's group "
            f"column; {config.name} is not a manifest: give a regular "
            "expression with (?P<group>...) instead.")
    else:
      compile_group_pattern(config.group_by)


def compile_group_pattern(pattern: str) -> re.Pattern[str]:
  """`pattern` compiled; ValueError (one line) unless it is a regular
  expression with a named group `group`."""
  example = "e.g. '(?P<group>TCGA-..-....)'"
  try:
    regex = re.compile(pattern)
  except re.error as e:
    raise ValueError(f"--group_by={pattern!r} is not a regular expression "
                     f"({e}); write one with a named group, "
                     f"{example}.") from None
  if "group" not in regex.groupindex:
    raise ValueError(f"--group_by={pattern!r} has no named group "
                     "(?P<group>...) saying which part of the path names "
                     f"the group, {example}.")
  return regex


def has_test_split(name: str, test_dataset: str | None = None) -> bool:
  """Whether dataset `name` has a test split (known without reading any
  data): the digit sets bring theirs; a folder or manifest has one only
  when `test_dataset` names an external test set."""
  return not name.startswith(("folder:", "csv:")) or bool(test_dataset)


def _file_dataset(name: str) -> bool:
  """Whether `name` is folder:<path> or csv:<path> with a path."""
  for prefix in ("folder:", "csv:"):
    if name.startswith(prefix) and name[len(prefix):].strip():
      return True
  return False
