"""What the long-tail heads derive from the training class counts.

Logit adjustment and Balanced Softmax add the log class priors to the
logits; LDAM and the dynamic-margin ArcFace give each class its own margin,
larger for rarer classes. Both come from `class_counts` (training examples
per class) here, in float64, before any TensorFlow: the heads turn the
results into float32 constants.

Empty classes. A class without training examples (count 0) has prior 0 and
an infinite count margin, which would put -inf into the logits and NaN into
the gradients. It is never a training target, so only its place in the
softmax's denominator matters, and there:

* `log_priors` counts it as one example: its prior is the smallest any
  class in the data could have, and `log pi` stays finite.
* `margin_factors` gives it the largest margin (factor 1) without letting
  it set the scale: the factors are relative to the rarest class that has
  examples, so an empty class changes no other class's margin.

This module imports NumPy only.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np


def checked_counts(class_counts: Sequence[float] | None, num_classes: int, *,
                   head: str, purpose: str) -> np.ndarray:
  """`class_counts` as a float64 array `[C]`, or a one-line ValueError.

  Args:
    class_counts: training examples per class, finite and >= 0 (0 allowed:
      see the module docstring), not all 0.
    num_classes: C.
    head: the head's class name, for the message when counts are missing.
    purpose: what the head uses them for, e.g. "its class priors".

  Raises:
    ValueError: "LDAM needs `class_counts` (training examples per class)
      for its margins." and the like.
  """
  if class_counts is None:
    raise ValueError(f"{head} needs `class_counts` (training examples per "
                     f"class) for {purpose}.")
  counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
  if counts.size != num_classes:
    raise ValueError(f"`class_counts` has {counts.size} entries but "
                     f"`num_classes` is {num_classes}.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 0):
    raise ValueError("`class_counts` must be finite and >= 0 for every "
                     "class.")
  if not counts.any():
    raise ValueError("`class_counts` are all 0: there is no training data "
                     "to take priors or margins from.")
  return counts


def as_list(counts: np.ndarray) -> list[int | float]:
  """The counts for a head's `config()`: ints where they are whole."""
  return [int(c) if c == int(c) else float(c) for c in counts]


def log_priors(counts: np.ndarray) -> np.ndarray:
  """`log pi_j`, `pi_j = n_j / sum_k n_k`, with empty classes counted as 1.

  Returns:
    float64 `[C]`, finite, <= 0.
  """
  counts = np.maximum(np.asarray(counts, np.float64), 1.0)
  return np.log(counts) - np.log(counts.sum())


def margin_factors(counts: np.ndarray, power: float,
                   floor_ratio: float = 0.0) -> np.ndarray:
  """Per-class margin factors `r_c = rho + (1 - rho) (n_min / n_c)^power`.

  A head with largest margin `m` gives class c the margin `m * r_c`: `m`
  for the rarest class, shrinking towards `rho * m` as `n_c` grows. This
  is `m_c = a n_c^(-power) + b` with `b = rho m` and `a = (1 - rho) m
  n_min^power`, the dynamic margins of Ha et al. (Google Landmark
  Recognition 2020, arXiv:2010.05350), and with `power = 1/4`, `rho = 0`
  the LDAM margins of Cao et al. 2019 (`C / n_c^(1/4)`, C chosen so that
  the largest is `m`).
  `n_min` is the smallest non-zero count; empty classes get `r = 1`.

  Args:
    counts: checked counts (`checked_counts`).
    power: lambda >= 0; 0 gives every class factor 1.
    floor_ratio: rho in [0, 1].

  Returns:
    float64 `[C]` in [rho, 1].
  """
  counts = np.asarray(counts, np.float64)
  smallest = counts[counts > 0].min()
  relative = smallest / np.maximum(counts, smallest)       # in (0, 1]
  return floor_ratio + (1.0 - floor_ratio) * relative ** power
