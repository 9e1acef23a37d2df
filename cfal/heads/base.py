"""The contract every cfal head follows, and small helpers the heads share."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf


class Head(tf.Module):
  """Base class of every max-margin head.

  A head turns embeddings `[N, D]` into class scores `[N, C]` and a
  per-example loss. Subclasses create their variables in `__init__` (so the
  head can be used inside `tf.function(jit_compile=True)` and under a
  distribution strategy) and implement `__call__` and `loss`.

  Class attributes:
    embedding_metric: "cosine" or "euclidean", the geometry the head shapes
      its embeddings for; evaluation uses it for retrieval metrics.
  """

  embedding_metric: str = "cosine"

  def __init__(self, *, num_classes: int, embedding_dim: int,
               name: str | None = None):
    super().__init__(name=name)
    _check_int("num_classes", num_classes, minimum=2)
    _check_int("embedding_dim", embedding_dim, minimum=1)
    self.num_classes = int(num_classes)
    self.embedding_dim = int(embedding_dim)

  # `prototypes` is a tf.Variable set by every subclass.
  prototypes: tf.Variable

  def __call__(self, embeddings: tf.Tensor, labels: tf.Tensor | None = None,
               training: bool = False) -> tf.Tensor:
    raise NotImplementedError

  def loss(self, embeddings: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example loss `[N]`, float32. The caller reduces it."""
    raise NotImplementedError

  def predict(self, embeddings: tf.Tensor) -> tf.Tensor:
    """Predicted class ids `[N]`, int32: the argmax of `self(embeddings)`."""
    return tf.argmax(self(embeddings), axis=-1, output_type=tf.int32)

  def update(self, embeddings: tf.Tensor, labels: tf.Tensor) -> None:
    """Non-gradient update of the head's state; a no-op for most heads."""
    del embeddings, labels

  def config(self) -> dict:
    """The constructor arguments, for logs and hparams summaries."""
    return {"num_classes": self.num_classes,
            "embedding_dim": self.embedding_dim}


# ---------------------------------------------------------------------------
# Helpers shared by the heads.


def as_float32(embeddings: tf.Tensor) -> tf.Tensor:
  """Embeddings in float32, whatever precision the backbone ran in."""
  embeddings = tf.convert_to_tensor(embeddings)
  if embeddings.dtype != tf.float32:
    embeddings = tf.cast(embeddings, tf.float32)
  return embeddings


def one_hot(labels: tf.Tensor, num_classes: int) -> tf.Tensor:
  """Float32 one-hot `[N, C]` of integer labels (dense: safe under XLA)."""
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
  return tf.one_hot(labels, num_classes, dtype=tf.float32)


def initial_value(shape: Sequence[int], stddev: float,
                  seed: int | None) -> tf.Tensor:
  """Truncated-normal initial values, reproducible when `seed` is given."""
  if seed is None:
    return tf.random.truncated_normal(shape, stddev=stddev)
  return tf.random.stateless_truncated_normal(
      shape, seed=[int(seed), 0], stddev=stddev)


def glorot_stddev(fan_in: int, fan_out: int) -> float:
  """Stddev of Glorot (Xavier) initialisation for a truncated normal."""
  return math.sqrt(2.0 / (fan_in + fan_out))


def sparse_softmax_cross_entropy(logits: tf.Tensor,
                                 labels: tf.Tensor) -> tf.Tensor:
  """Per-example cross-entropy from logits (never from probabilities)."""
  return tf.nn.sparse_softmax_cross_entropy_with_logits(
      labels=tf.cast(tf.reshape(labels, [-1]), tf.int32), logits=logits)


def class_balanced_weights(class_counts: Sequence[float],
                           beta: float) -> np.ndarray:
  """Class weights from the effective number of samples (Cui et al. 2019).

  `w_c = (1 - beta) / (1 - beta ** n_c)`, normalised so the weights sum to
  the number of classes. `beta = 0` gives equal weights; as `beta -> 1` the
  weights approach inverse class frequency.

  Args:
    class_counts: number of training examples of each class, all >= 1.
    beta: in [0, 1).

  Returns:
    float64 array `[C]`.
  """
  counts = np.asarray(class_counts, dtype=np.float64).reshape(-1)
  if counts.size < 2:
    raise ValueError(f"`class_counts` needs one count per class (at least 2), "
                     f"got {counts.size}.")
  if not np.all(np.isfinite(counts)) or np.any(counts < 1):
    raise ValueError(f"`class_counts` must be >= 1 for every class, got "
                     f"min {counts.min()}: drop empty classes or pass no "
                     f"counts.")
  check_range("beta", beta, low=0.0, high=1.0, high_open=True)
  # 1 - beta**n computed as -expm1(n*log(beta)) keeps precision when
  # beta is close to 1.
  if beta == 0.0:
    weights = np.ones_like(counts)
  else:
    weights = (1.0 - beta) / -np.expm1(counts * np.log(beta))
  return weights * (counts.size / weights.sum())


# ---------------------------------------------------------------------------
# Argument checks: one clear line naming the argument and its value.


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"`{name}` ({value}) must be >= {minimum}.")


def check_range(name: str, value, *, low: float | None = None,
                high: float | None = None, low_open: bool = False,
                high_open: bool = False) -> float:
  """Validates a float hyper-parameter and returns it as a Python float."""
  try:
    value = float(value)
  except (TypeError, ValueError):
    raise TypeError(f"`{name}` must be a number, got {value!r}.") from None
  ok = math.isfinite(value)
  if ok and low is not None:
    ok = value > low if low_open else value >= low
  if ok and high is not None:
    ok = value < high if high_open else value <= high
  if not ok:
    lo = "(" if low_open else "["
    hi = ")" if high_open else "]"
    lo_s = "-inf" if low is None else f"{low:g}"
    hi_s = "inf" if high is None else f"{high:g}"
    raise ValueError(f"`{name}` ({value:g}) must be in {lo}{lo_s}, {hi_s}{hi}.")
  return value
