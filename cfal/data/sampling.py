"""Class-aware sampling: which example each position of a batch reads.

With `n_c` training examples in class c, `N` in all and `C` non-empty
classes, a sampler draws every example of a batch independently: first a
class with probability `p_c`, then one of that class's examples uniformly.

- "class_balanced": `p_c = 1/C`.
- "square_root": `p_c ∝ sqrt(n_c)` (Mahajan et al. 2018; Kang et al.,
  "Decoupling Representation and Classifier for Long-Tailed Recognition",
  ICLR 2020: `p_c ∝ n_c^q` with `q = 1/2`).
- "progressive" (Kang et al. 2020): `p_c(t) = (1 - t/T) n_c/N + (t/T)/C`,
  from instance-balanced at step 0 towards class-balanced at the run's
  last step `T` (t/T stops at 1 past it).

A class without training examples has probability 0 under every scheme
(the others are renormalised), so it is never drawn. "instance", every
example equally likely, is the pipeline's own per-epoch shuffle
(`cfal.data.pipeline`) and needs nothing here.

The draws of a whole global batch come from one stateless call keyed by
the seed and the step, and each input pipeline keeps its own rows: the
batch at step t is a pure function of (seed, t), whatever the replica
layout, and a resumed run draws what an uninterrupted one would. The
key's first word is the seed XOR `_SALT`, so the draws are independent of
the augmentation's, which are keyed by (seed, step) itself.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import tensorflow as tf

from cfal.data.config import SAMPLERS

# Positions [b] (int64, one batch's or one replica's rows) -> example ids.
PositionSampler = Callable[[tf.Tensor], tf.Tensor]

# Separates the sampler's random stream from the augmentation's.
_SALT = 0x5A3C96E1


def class_probabilities(counts: np.ndarray, sampler: str,
                        progress: float = 0.0) -> np.ndarray:
  """float64 `p_c` of `sampler` for class counts `counts` (zero where a
  class is empty); `progress` is t/T, read by "progressive" only."""
  counts = np.asarray(counts, np.float64)
  present = counts > 0
  instance = counts / counts.sum()
  balanced = present / present.sum()
  if sampler == "instance":
    return instance
  if sampler == "class_balanced":
    return balanced
  if sampler == "square_root":
    root = np.sqrt(counts)
    return root / root.sum()
  if sampler == "progressive":
    share = min(max(progress, 0.0), 1.0)
    return (1.0 - share) * instance + share * balanced
  raise ValueError(f"`sampler` ({sampler!r}) must be one of "
                   f"{', '.join(SAMPLERS)}.")


def class_sampler(labels: np.ndarray, indices: np.ndarray, num_classes: int,
                  *, sampler: str, seed: int, global_batch_size: int,
                  total_steps: int | None = None) -> PositionSampler:
  """The function that maps a batch's positions to the examples they read.

  Args:
    labels: int class ids of every example of the source.
    indices: the examples that form the training set.
    num_classes: C, classes of the source (some may have no examples).
    sampler: "class_balanced", "square_root" or "progressive".
    seed: keys the draws with the step.
    global_batch_size: B; position p is row p mod B of step p // B.
    total_steps: T, the run's length ("progressive" only).

  Raises:
    ValueError: an unknown sampler, no training examples at all, or
      "progressive" without a positive `total_steps`.
  """
  if sampler not in SAMPLERS or sampler == "instance":
    raise ValueError(f"`sampler` ({sampler!r}) must be one of "
                     f"{', '.join(SAMPLERS[1:])} (instance is the "
                     f"pipeline's own shuffle).")
  if sampler == "progressive" and not (total_steps and total_steps > 0):
    raise ValueError("sampler='progressive' needs the run's length: pass "
                     f"`total_steps` >= 1 (got {total_steps}).")
  indices = np.asarray(indices, np.int64)
  train_labels = np.asarray(labels)[indices]
  counts = np.bincount(train_labels, minlength=num_classes)
  if not counts.any():
    raise ValueError(f"sampler={sampler!r} has no training example to draw: "
                     "every class is empty.")
  # Examples grouped by class: class c's are table[offsets[c]:][:n_c].
  table = tf.constant(indices[np.argsort(train_labels, kind="stable")])
  offsets = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]),
                        tf.int64)
  sizes = tf.constant(counts, tf.int64)
  last_present = int(np.flatnonzero(counts)[-1])
  batch = global_batch_size
  key_word = tf.constant(int(seed) ^ _SALT, tf.int64)
  if sampler == "progressive":
    instance = tf.constant(class_probabilities(counts, "instance"))
    balanced = tf.constant(class_probabilities(counts, "class_balanced"))

    def cdf_at(step):
      share = tf.minimum(tf.cast(step, tf.float64) / float(total_steps), 1.0)
      return tf.cumsum((1.0 - share) * instance + share * balanced)
  else:
    fixed = tf.constant(np.cumsum(class_probabilities(counts, sampler)))

    def cdf_at(step):
      del step
      return fixed

  def positions_to_indices(positions: tf.Tensor) -> tf.Tensor:
    step = positions[0] // batch
    rows = positions - step * batch
    draws = tf.gather(tf.random.stateless_uniform(
        [batch, 2], seed=tf.stack([key_word, step]), dtype=tf.float64), rows)
    cdf = cdf_at(step)
    # Inverse CDF: class c owns [cdf[c-1], cdf[c]), empty for an empty
    # class; the clip only catches a rounding past the last entry.
    classes = tf.minimum(
        tf.searchsorted(cdf, draws[:, 0] * cdf[-1], side="right",
                        out_type=tf.int64), last_present)
    size = tf.gather(sizes, classes)
    within = tf.minimum(
        tf.cast(draws[:, 1] * tf.cast(size, tf.float64), tf.int64), size - 1)
    return tf.gather(table, tf.gather(offsets, classes) + within)

  return positions_to_indices
