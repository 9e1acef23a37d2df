"""The contract every cfal head follows, and small helpers the heads share."""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from cfal.heads import parts, registry

class Head(tf.Module):
  """Base class of every max-margin head.

  A head turns embeddings `[N, D]` into class scores `[N, C]` and a
  per-example loss. Subclasses create their variables in `__init__` (so the
  head can be used inside `tf.function(jit_compile=True)` and under a
  distribution strategy) and implement `__call__` and `core_loss`.

  The loss is composed here, in one place, from the subclass's core loss
  and the head's parts (`cfal.heads.parts`):

    loss_i = w_{y_i} * m_i * (core_i + sum_r R_r)

  with `w` the optional `ClassWeights`, `m_i` the optional
  `FocalModulation` of the target log-probability that `core_loss` returns,
  and `R_r` the `regularizers` (scalars, e.g. `PrototypeSpread`).

  Class attributes:
    embedding_metric: "cosine" or "euclidean", the geometry the head shapes
      its embeddings for; evaluation uses it for retrieval metrics.
    normalized_embeddings: what the head needs from the backbone. True if
      the head uses only each embedding's direction (it L2-normalises them
      itself: ArcFace, CosFace, SphereFace, CombinedMargin), so a backbone
      may end on the unit sphere; False if the norm matters (linear logits,
      Euclidean distances) and the backbone must not normalise.
    focal_back_propagate: how `build_head` makes the focal part of a head
      given `gamma` without taking it itself: back-propagated as in Lin et
      al. (True), or as a stop-gradient weight as the CFAL authors use it
      on affinities (False).
    counts_set_logits: what a constructor's `class_counts` are for, so
      that `build_head` knows when to pass them. False (Focal, CFAL): they
      make the head's class weights, its default weighting. True
      (LogitAdjusted, LDAM, the margin heads' per-class margins): they
      shape the logits (priors, margins), are passed whenever the data's
      counts are known, and class weighting stays a separate part.

  Args:
    num_classes: number of classes C, >= 2.
    embedding_dim: embedding size D, >= 1.
    class_weights: optional per-class weights: a `ClassWeights` (e.g.
      `ClassWeights.effective_number(counts, beta)`) or one float per
      class.
    focal: optional `FocalModulation` of the target probability.
    regularizers: optional `Regularizer`s (e.g. `PrototypeSpread(1.0)`).
    name: module name.
  """

  embedding_metric: str = "cosine"
  normalized_embeddings: bool = False
  focal_back_propagate: bool = True
  counts_set_logits: bool = False

  def __init__(self, *, num_classes: int, embedding_dim: int,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               name: str | None = None):
    super().__init__(name=name)
    _check_int("num_classes", num_classes, minimum=2)
    _check_int("embedding_dim", embedding_dim, minimum=1)
    self.num_classes = int(num_classes)
    self.embedding_dim = int(embedding_dim)
    self.class_weights = parts.as_class_weights(class_weights,
                                                self.num_classes)
    if focal is not None and not isinstance(focal, parts.FocalModulation):
      raise TypeError(f"`focal` must be a FocalModulation, got {focal!r}.")
    self.focal = focal
    self.regularizers = parts.as_regularizers(regularizers)

  # `prototypes` is a tf.Variable set by every subclass.
  prototypes: tf.Variable

  def __call__(self, embeddings: tf.Tensor, labels: tf.Tensor | None = None,
               training: bool = False) -> tf.Tensor:
    raise NotImplementedError

  def core_loss(self, embeddings: tf.Tensor,
                labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The head's own per-example loss and its target log-probability.

    Returns:
      `(core, log_p)`, both float32 `[N]`: the loss before class weights,
      focal modulation and regularisers, and `log p_{i,y_i}` (<= 0), the
      log of the target probability the focal factor `(1 - p)^gamma` uses
      (the softmax probability of the target for softmax-type heads,
      `log d_{i,y_i}` for the affinity heads).
    """
    raise NotImplementedError

  def loss(self, embeddings: tf.Tensor, labels: tf.Tensor) -> tf.Tensor:
    """Per-example loss `[N]`, float32. The caller reduces it."""
    loss, log_p = self.core_loss(embeddings, labels)
    for regularizer in self.regularizers:
      loss += regularizer(self)
    if self.focal is not None and self.focal.gamma > 0:
      loss = self.focal(log_p) * loss
    if self.class_weights is not None:
      loss = self.class_weights(one_hot(labels, self.num_classes)) * loss
    return loss

  def predict(self, embeddings: tf.Tensor) -> tf.Tensor:
    """Predicted class ids `[N]`, int32: the argmax of `self(embeddings)`."""
    return tf.argmax(self(embeddings), axis=-1, output_type=tf.int32)

  def update(self, embeddings: tf.Tensor, labels: tf.Tensor) -> None:
    """Non-gradient update of the head's state; a no-op for most heads."""
    del embeddings, labels

  def prototype_points(self) -> tf.Tensor:
    """The prototypes as `[M, D]` points of the head's geometry.

    What regularisers such as `PrototypeSpread` act on: every prototype row
    (all centers of every class) as the head compares embeddings with it.
    Heads that normalise their prototypes return unit vectors.
    """
    return tf.reshape(self.prototypes, [-1, self.embedding_dim])

  def config(self) -> dict:
    """The constructor arguments, for logs and hparams summaries."""
    config = {"num_classes": self.num_classes,
              "embedding_dim": self.embedding_dim}
    if self.class_weights is not None:
      config["class_weights"] = self.class_weights.config()
    if self.focal is not None:
      config["focal"] = self.focal.config()
    if self.regularizers:
      config["regularizers"] = [r.config() for r in self.regularizers]
    return config


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


# ---------------------------------------------------------------------------
# Argument checks: one clear line naming the argument and its value.


def checked(head: str, **values: Any) -> dict[str, Any]:
  """Constructor arguments checked by head `head`'s declared options.

  The ranges live in one place, `cfal.heads.registry`; a constructor passes
  its hyper-parameters here and keeps the converted values.

  Raises:
    ValueError: one line naming the argument, e.g. "`sigma` (0) must be in
      (0, inf]."
  """
  spec = registry.HEADS[head]
  result = {}
  for key, value in values.items():
    option = spec.option(key)
    if option is None:   # a head must declare what its constructor takes
      raise AssertionError(f"head {head!r} declares no option {key!r}")
    result[key] = option.check(value)
  return result


def _check_int(name: str, value, minimum: int) -> None:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"`{name}` ({value}) must be >= {minimum}.")
