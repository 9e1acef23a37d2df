"""Additive and multiplicative angular margins on normalised logits."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import tensorflow as tf

from cfal.heads import base, class_counts as counts_lib, parts


class CombinedMargin(base.Head):
  """Normalised softmax with the combined angular margin (m1, m2, m3).

  Embeddings and prototypes are L2-normalised, `cos_ij = x_i . w_j` and
  `theta = arccos(cos_{i,y_i})`. Non-target logits are `s * cos_ij`; the
  target logit is `s * psi(theta)` with

    psi(theta) = cos(m1 * theta + m2) - m3

  (Deng et al., "ArcFace", CVPR 2019, section 3.3). SphereFace is (m, 0, 0),
  ArcFace (1, m, 0) and CosFace (1, 0, m). Where the margin angle passes pi,
  `cos` would stop decreasing in theta and the margin would reward moving
  away from the class. There psi is replaced by a decreasing continuation:

  * m1 == 1 (ArcFace family): `cos(theta) - m2 * sin(m2) - m3` when
    `theta + m2 > pi`, the fallback of the insightface implementation.
  * m1 > 1 (SphereFace family): `(-1)^k cos(u) - 2k - m3` with
    `u = m1 * theta + m2`, `k = floor(u / pi)` (Liu et al., "SphereFace",
    CVPR 2017), which equals `cos(u) - m3` for `u <= pi`.

  Per-class margins. Given the training `class_counts` and
  `margin_counts_power` lambda > 0, the additive margins grow as a class
  shrinks: class c uses `m2 * r_c` and `m3 * r_c` with

    r_c = rho + (1 - rho) * (n_min / n_c)^lambda,

  rho = `margin_floor_ratio` and n_min the smallest non-zero count, so the
  rarest class keeps the full margins and a very frequent one tends to
  `rho` times them. That is `m_c = a n_c^(-lambda) + b`, the dynamic
  margins of Ha et al.'s ArcFace in the Google Landmark Recognition 2020
  competition (third place; arXiv:2010.05350), here with the scale `a` set
  by the largest margin; `lambda = 1/4`, `rho = 0` on CosFace is LDAM (Cao et
  al., NeurIPS 2019). `m1` stays the same for every class. A class with
  no examples gets the full margins (see `cfal.heads.class_counts`).

  The core loss is the cross-entropy of the margin logits; class weights,
  focal modulation (of the margin softmax's target probability) and
  regularisers compose with it (see `Head`). `__call__` returns plain
  `s * cos` unless called with labels and `training=True`. Square roots and
  arccos are guarded so that cos = +-1 and zero embeddings give finite
  gradients.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    m1: multiplicative angular margin, >= 1.
    m2: additive angular margin in radians, in [0, pi).
    m3: additive cosine margin, >= 0.
    scale: the logit scale s, > 0 (default 64 as in ArcFace).
    class_counts: training examples per class; used (and needed) only for
      per-class margins.
    margin_counts_power: lambda >= 0 of the per-class margins; 0 (default)
      gives every class the same margins.
    margin_floor_ratio: rho in [0, 1], the share of its margins a class
      keeps however many examples it has (default 0).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the unit prototypes.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  embedding_metric = "cosine"
  normalized_embeddings = True
  counts_set_logits = True

  def __init__(self, *, num_classes: int, embedding_dim: int,
               m1: float = 1.0, m2: float = 0.0, m3: float = 0.0,
               scale: float = 64.0,
               class_counts: Sequence[float] | None = None,
               margin_counts_power: float = 0.0,
               margin_floor_ratio: float = 0.0,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("combined_margin", m1=m1, m2=m2, m3=m3,
                          scale=scale, margin_counts_power=margin_counts_power,
                          margin_floor_ratio=margin_floor_ratio)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, name=name)
    self.m1, self.m2, self.m3 = values["m1"], values["m2"], values["m3"]
    self.scale = values["scale"]
    self._set_class_margins(class_counts, values["margin_counts_power"],
                            values["margin_floor_ratio"])
    with self.name_scope:
      # insightface initialises with N(0, 0.01); only directions matter.
      self.prototypes = tf.Variable(
          base.initial_value(self._prototype_shape(), 0.01, seed),
          name="prototypes")

  def _prototype_shape(self) -> list[int]:
    """The shape of `prototypes`: `[C, D]`, one row per class."""
    return [self.num_classes, self.embedding_dim]

  def _set_class_margins(self, class_counts, power: float,
                         floor_ratio: float) -> None:
    """Checks and stores the per-class margin settings."""
    self.margin_counts_power = power
    self.margin_floor_ratio = floor_ratio
    # Per-class factors r_c (float64 [C]); None: one margin for all.
    self.margin_factors = None
    self.class_counts = None
    if power == 0.0:
      if floor_ratio != 0.0:
        raise ValueError(f"`margin_floor_ratio` ({floor_ratio:g}) only "
                         f"acts on per-class margins; set "
                         f"`margin_counts_power` > 0 or drop it.")
      return
    counts = counts_lib.checked_counts(
        class_counts, self.num_classes, head=type(self).__name__,
        purpose=f"per-class margins (margin_counts_power={power:g})")
    self.class_counts = counts   # float64 [C] (an array: not tracked)
    self.margin_factors = counts_lib.margin_factors(counts, power,
                                                    floor_ratio)

  def class_margins(self) -> tuple[np.ndarray, np.ndarray]:
    """The additive margins `(m2_c, m3_c)` of each class, float64 `[C]`."""
    factors = (np.ones(self.num_classes) if self.margin_factors is None
               else self.margin_factors)
    return self.m2 * factors, self.m3 * factors

  def _target_margins(self, onehot: tf.Tensor):
    """`(m2, m3)` for the targets: the head's floats, or `[N]` tensors."""
    if self.margin_factors is None:
      return self.m2, self.m3

    def per_example(margins: np.ndarray):
      if not margins.any():
        return 0.0
      # A dense matvec, not a gather: safe under XLA and strategies.
      return tf.linalg.matvec(onehot, tf.constant(margins, tf.float32))

    return tuple(per_example(m) for m in self.class_margins())

  def cosine(self, embeddings: tf.Tensor) -> tf.Tensor:
    """`[N, C]` cosines between embeddings and prototypes (0 for zero x)."""
    x = tf.math.l2_normalize(base.as_float32(embeddings), axis=-1)
    w = tf.math.l2_normalize(self.prototypes, axis=-1)
    return tf.clip_by_value(tf.matmul(x, w, transpose_b=True), -1.0, 1.0)

  def target_logit(self, cos_y: tf.Tensor, m2=None, m3=None) -> tf.Tensor:
    """psi(theta) for the target cosines `cos_y` (without the scale).

    Args:
      cos_y: `[N]` target cosines.
      m2, m3: the additive margins, floats (default the head's) or one
        per example (`[N]` tensors, per-class margins).
    """
    m2 = self.m2 if m2 is None else m2
    m3 = self.m3 if m3 is None else m3
    if self.m1 == 1.0:
      if isinstance(m2, float) and m2 == 0.0:
        return cos_y - m3
      # cos(theta + m2) by the angle-sum rule: no arccos needed.
      if isinstance(m2, float):
        cos_m, sin_m = math.cos(m2), math.sin(m2)
      else:
        cos_m, sin_m = tf.cos(m2), tf.sin(m2)
      shifted = cos_y * cos_m - _safe_sin_from_cos(cos_y) * sin_m
      fallback = cos_y - m2 * sin_m
      # theta + m2 <= pi  <=>  cos_y >= cos(pi - m2) = -cos(m2).
      return tf.where(cos_y >= -cos_m, shifted, fallback) - m3
    u = self.m1 * _safe_arccos(cos_y) + m2
    k = tf.floor(u / math.pi)
    sign = 1.0 - 2.0 * tf.math.floormod(k, 2.0)
    return sign * tf.cos(u) - 2.0 * k - m3

  def __call__(self, embeddings, labels=None, training=False):
    cos = self.cosine(embeddings)
    if labels is None or not training:
      return self.scale * cos
    onehot = base.one_hot(labels, self.num_classes)
    is_target = onehot > 0
    cos_y = tf.reduce_sum(tf.where(is_target, cos, 0.0), axis=-1)
    psi = self.target_logit(cos_y, *self._target_margins(onehot))
    return self.scale * tf.where(is_target, psi[:, None], cos)

  def core_loss(self, embeddings, labels):
    logits = self(embeddings, labels, training=True)
    cross_entropy = base.sparse_softmax_cross_entropy(logits, labels)
    return cross_entropy, -cross_entropy

  def prototype_points(self):
    """The unit prototypes: only their directions enter the logits."""
    return tf.math.l2_normalize(self.prototypes, axis=-1)

  def config(self):
    config = {**super().config(), "m1": self.m1, "m2": self.m2,
              "m3": self.m3, "scale": self.scale}
    if self.margin_factors is not None:
      config.update(margin_counts_power=self.margin_counts_power,
                    margin_floor_ratio=self.margin_floor_ratio,
                    class_counts=counts_lib.as_list(self.class_counts))
    return config


def _safe_sin_from_cos(cos: tf.Tensor) -> tf.Tensor:
  """sqrt(1 - cos^2) with a zero (not infinite) gradient at cos = +-1."""
  sin_sq = 1.0 - tf.square(cos)
  inside = sin_sq > 0.0
  return tf.where(inside, tf.sqrt(tf.where(inside, sin_sq, 1.0)), 0.0)


def _safe_arccos(cos: tf.Tensor) -> tf.Tensor:
  """arccos with a zero (not infinite) gradient at cos = +-1."""
  inside = tf.abs(cos) < 1.0
  theta = tf.acos(tf.where(inside, cos, 0.0))
  return tf.where(inside, theta, tf.where(cos > 0.0, 0.0, math.pi))
