"""Validation splits made of whole groups (slides, patients).

Tiles of one slide look alike; a validation split that shares slides
with training measures memory of slides, not generalisation. With a group
per file (from `--group_by`), :func:`group_split` holds out whole groups
and no group is ever on both sides.

The algorithm, deterministic in the seed:

1. Count each group's files per class; the target of class c is
   `fraction * n_c` validation files.
2. Visit the groups in an order drawn from the seed. First pass: hold a
   group out when it fits, i.e. no class goes more than half a file
   beyond its target. Second pass, for what is still missing (groups too
   big to fit anywhere): hold a group out when that brings the
   validation split closer to the targets, measured as the sum over
   classes of |held_c - target_c| / n_c (so small classes count as much
   as large ones).
3. Never hold out a group that would leave a class without training files.

With one file per group this is the per-class stratified split; with
few large groups the fractions per class come out as close as whole
groups allow, which `split_summary` reports.

NumPy only.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cfal.data.config import compile_group_pattern
from cfal.data.errors import DataError

__all__ = ["group_split", "groups_from_pattern", "split_summary"]


def groups_from_pattern(relative_paths: Sequence[str], pattern: str,
                        source: str) -> tuple[str, ...]:
  """The group of each path: `re.search(pattern, path).group("group")`.

  Args:
    relative_paths: paths as the user names them (relative to an image
      folder with "/" separators, or as a manifest writes them).
    pattern: a regular expression with a named group `(?P<group>...)`,
      searched anywhere in each path.
    source: the dataset, for the error message.

  Raises:
    ValueError: if `pattern` is not such a regular expression.
    DataError: if some path does not match (or matches with an empty
      group); the message shows one such path.
  """
  regex = compile_group_pattern(pattern)
  groups = []
  misses = []
  for path in relative_paths:
    match = regex.search(path)
    group = match.group("group") if match else None
    if not group:
      misses.append(path)
    groups.append(group)
  if misses:
    raise DataError(
        f"{source}: {len(misses):,} of {len(relative_paths):,} file paths do "
        f"not match --group_by={pattern!r} or give it an empty group (e.g. "
        f"{misses[0]}); the pattern is searched in each path relative to "
        "the folder (a CSV: as its row writes it), so fix the pattern or "
        "the file names")
  return tuple(groups)


def group_split(labels: np.ndarray, groups: Sequence[str] | np.ndarray,
                fraction: float, seed: int
                ) -> tuple[np.ndarray, np.ndarray]:
  """Splits indices into (rest, held_out) by whole groups.

  Args:
    labels: int class of each file `[N]`.
    groups: group name of each file `[N]`.
    fraction: the share of each class to hold out, in [0, 1).
    seed: fixes the order groups are considered in.

  Returns:
    Sorted int64 index arrays; every index is in exactly one, and every
    group's files are all in the same one.

  Raises:
    ValueError: if `fraction` is outside [0, 1) or the lengths differ.
  """
  if not 0.0 <= fraction < 1.0:
    raise ValueError(f"`validation_split` ({fraction}) must be in [0, 1).")
  labels = np.asarray(labels, np.int64)
  if len(groups) != labels.size:
    raise ValueError(f"{len(groups)} groups for {labels.size} labels")
  if labels.size == 0:
    empty = np.zeros(0, np.int64)
    return empty, empty
  names, inverse = np.unique(np.asarray(groups, dtype=str),
                             return_inverse=True)
  inverse = inverse.reshape(-1)
  num_classes = int(labels.max()) + 1
  counts = np.zeros((names.size, num_classes), np.int64)
  np.add.at(counts, (inverse, labels), 1)
  totals = counts.sum(axis=0)
  target = fraction * totals
  weight = 1.0 / np.maximum(totals, 1)
  held = np.zeros(num_classes, np.int64)
  taken = np.zeros(names.size, bool)
  order = np.random.default_rng([seed, 2]).permutation(names.size)

  def leaves_training_classes(g):
    v = counts[g]
    return np.all(totals - held - v > 0, where=v > 0)

  if fraction > 0:
    for g in order:                      # groups that fit
      if (np.all(held + counts[g] <= target + 0.5)
          and leaves_training_classes(g)):
        held += counts[g]
        taken[g] = True
    for g in order:                      # what still brings it closer
      if taken[g] or not leaves_training_classes(g):
        continue
      before = np.sum(np.abs(held - target) * weight)
      after = np.sum(np.abs(held + counts[g] - target) * weight)
      if after < before - 1e-12:
        held += counts[g]
        taken[g] = True
  in_held = taken[inverse]
  return np.flatnonzero(~in_held), np.flatnonzero(in_held)


def split_summary(labels: np.ndarray, groups: Sequence[str],
                  rest: np.ndarray, held: np.ndarray,
                  class_names: Sequence[str], fraction: float) -> str:
  """One line: groups and files on each side, and how close each class
  came to `fraction`."""
  groups = np.asarray(groups, dtype=str)
  labels = np.asarray(labels)
  totals = np.bincount(labels, minlength=len(class_names))
  in_held = np.bincount(labels[held], minlength=len(class_names))
  shares = in_held / np.maximum(totals, 1)
  low, high = int(shares.argmin()), int(shares.argmax())
  missing = [class_names[c] for c in range(len(class_names))
             if totals[c] and not in_held[c]]
  line = (f"validation split by group: {np.unique(groups[held]).size:,} "
          f"groups, {held.size:,} files; training: "
          f"{np.unique(groups[rest]).size:,} groups, {rest.size:,} files; "
          f"validation holds {shares[low]:.1%} ({class_names[low]}) to "
          f"{shares[high]:.1%} ({class_names[high]}) of a class, target "
          f"{fraction:.1%}")
  if missing:
    line += (f"; no validation files of {', '.join(missing)} (their groups "
             "are all needed for training or too large)")
  return line
