"""Sub-center ArcFace: K sub-centers per class (Deng et al. 2020)."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from cfal.heads import base, parts
from cfal.heads.arcface import ArcFace


class SubCenterArcFace(ArcFace):
  """ArcFace whose class cosine is the nearest of K sub-centers'.

  Deng et al., "Sub-center ArcFace: Boosting Face Recognition by
  Large-scale Noisy Web Faces", ECCV 2020. Each class j has K sub-centers
  `w_jk` (`prototypes`, `[C, K, D]`); embeddings and sub-centers are
  L2-normalised and a class's cosine is its largest sub-center cosine,

    cos_ij  = max_k x_i . w_jk,     theta_ij = arccos(cos_ij),
    loss_i  = -log [ e^{s cos(theta_iy + m)} /
                     (e^{s cos(theta_iy + m)} + sum_{j != y} e^{s cos_ij}) ],

  ArcFace's additive angular margin on the target class's cosine, with the
  same `cos(theta) - m sin(m)` fallback where `theta + m > pi` (see
  `CombinedMargin`). A clean example moves only the sub-center it is
  nearest to, so the noisy or atypical examples of a class can gather
  around the other sub-centers instead of pulling on the dominant one.
  With K = 1 this is `ArcFace`. Per-class margins from the class counts
  (`margin_counts_power`, `margin_floor_ratio`) act as in `ArcFace`.

  The max is TensorFlow's: the gradient of a class cosine goes to its
  nearest sub-center only; where several tie exactly, it is shared
  equally among them.

  Not implemented: the paper's second stage, which after training keeps
  each class's dominant sub-center (the one most of its examples are
  nearest to), drops the others together with the examples far from the
  dominant one (angle above a threshold such as 75 degrees) and retrains
  with K = 1. That is a data-cleaning step between two training runs, not
  part of the loss; `subcenter_cosines` gives what it needs.

  `__call__` returns `s * cos` (`[N, C]`, the class cosines) unless called
  with labels and `training=True`; `predict` is `argmax_j cos_ij`;
  `prototype_points()` returns the C * K unit sub-centers.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    scale: logit scale s (default 64).
    margin: angular margin m in radians, in [0, pi) (default 0.5).
    num_subcenters: sub-centers per class K, >= 1 (default 3, the paper's).
      `prototypes` is `[C, K, D]` for every K.
    class_counts: training examples per class, for per-class margins.
    margin_counts_power: lambda >= 0 of the per-class margins (see
      `ArcFace`); 0 (default) gives every class `margin`.
    margin_floor_ratio: rho in [0, 1] (default 0).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit sub-centers.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               scale: float = 64.0, margin: float = 0.5,
               num_subcenters: int = 3,
               class_counts: Sequence[float] | None = None,
               margin_counts_power: float = 0.0,
               margin_floor_ratio: float = 0.0,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    # Set before the parent builds `prototypes` from `_prototype_shape`.
    self.num_subcenters = base.checked(
        "subcenter_arcface", num_subcenters=num_subcenters)["num_subcenters"]
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     scale=scale, margin=margin, class_counts=class_counts,
                     margin_counts_power=margin_counts_power,
                     margin_floor_ratio=margin_floor_ratio,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, seed=seed, name=name)

  def _prototype_shape(self) -> list[int]:
    return [self.num_classes, self.num_subcenters, self.embedding_dim]

  def subcenter_cosines(self, embeddings: tf.Tensor) -> tf.Tensor:
    """`[N, C, K]` cosines to every sub-center (0 for a zero embedding)."""
    x = tf.math.l2_normalize(base.as_float32(embeddings), axis=-1)
    cos = tf.matmul(x, self.prototype_points(), transpose_b=True)
    cos = tf.reshape(cos, [-1, self.num_classes, self.num_subcenters])
    return tf.clip_by_value(cos, -1.0, 1.0)

  def cosine(self, embeddings: tf.Tensor) -> tf.Tensor:
    """`[N, C]` class cosines: each class's largest sub-center cosine."""
    return tf.reduce_max(self.subcenter_cosines(embeddings), axis=-1)

  def prototype_points(self) -> tf.Tensor:
    """The `[C * K, D]` unit sub-centers, class by class."""
    return tf.reshape(tf.math.l2_normalize(self.prototypes, axis=-1),
                      [-1, self.embedding_dim])

  def config(self):
    return {**super().config(), "num_subcenters": self.num_subcenters}
