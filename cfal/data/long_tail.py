"""Long-tailed subsets of a balanced dataset (the CIFAR-LT protocol)."""

from __future__ import annotations

import numpy as np


def long_tailed_indices(labels: np.ndarray, imbalance_ratio: float,
                        seed: int = 0) -> np.ndarray:
  """Indices of a long-tailed subset: class c keeps `n_max * R^(-c/(C-1))`.

  `n_max` is the size of the largest class; classes are ranked by their id,
  so class 0 keeps everything and class C-1 keeps `n_max / R` (at least 1).
  Which examples a class keeps is fixed by `seed`. The returned indices are
  sorted, so the subset keeps the dataset's order.

  Args:
    labels: integer class ids `[N]`.
    imbalance_ratio: R >= 1, the ratio of the largest to the smallest class.
    seed: fixes which examples are kept.

  Returns:
    int64 indices into `labels`.
  """
  labels = np.asarray(labels).reshape(-1)
  if not imbalance_ratio >= 1.0:
    raise ValueError(f"`imbalance_ratio` ({imbalance_ratio}) must be >= 1.")
  classes = np.unique(labels)
  if classes.size < 2:
    raise ValueError("A long-tailed subset needs at least 2 classes, got "
                     f"{classes.size}.")
  n_max = np.bincount(labels).max()
  rng = np.random.default_rng(seed)
  keep = []
  for rank, c in enumerate(classes):
    members = np.flatnonzero(labels == c)
    target = n_max * imbalance_ratio ** (-rank / (classes.size - 1))
    n = max(1, min(members.size, int(round(target))))
    keep.append(rng.choice(members, size=n, replace=False))
  return np.sort(np.concatenate(keep))
