"""Gaussian affinity max-margin loss (Hayat et al. 2019)."""

from __future__ import annotations

import math
from typing import Sequence

import tensorflow as tf

from cfal.heads import base, parts


class Affinity(base.Head):
  """Max-margin loss on Gaussian affinities to one or more class centers.

  Hayat et al., "Gaussian Affinity for Max-margin Class Imbalanced
  Learning", ICCV 2019. With prototypes `w_jk` (k = 1..m centers per class):

    d_ij  = max_k exp(-||x_i - w_jk||^2 / sigma)           (in (0, 1])
    L_mm  = sum_{j != y_i} max(0, lambda + d_ij - d_{i,y_i})
    R_w   = variance of ||w_a - w_b||^2 over all pairs a < b of the
            M = C * m prototypes
    loss_i = L_mm_i + spread_weight * R_w

  `R_w` is the `PrototypeSpread(spread_weight)` part, which any head can
  take; here it is built in (default weight 1, as the authors). Other parts
  compose as in every head (`Head`): CFAL is this head with a stop-gradient
  `FocalModulation` of `d_{i,y_i}` and effective-number `ClassWeights`.

  `__call__` returns `d` `[N, C]`; `predict` the class of the nearest
  prototype, `argmin_j min_k ||x_i - w_jk||^2`, which is `argmax_j d_ij`
  wherever `d` does not underflow.

  Far from every prototype. When `||x - w||^2 >> sigma` for every
  prototype, every `d_ij` is 0 (in float32 from `||x - w||^2 > ~103
  sigma`), every hinge is the constant lambda and the loss is
  `(C - 1) lambda + spread_weight R_w` (times CFAL's class weight; its
  focal factor is 1): the embedding gets no gradient at all and the
  prototypes only `R_w`'s. cfal keeps the paper's loss exact there rather
  than adding a pull term the papers do not have; pick sigma at the scale
  of the squared embedding-prototype distances (the authors' 130 suits
  their embeddings) so that training starts where the affinities are not
  all 0. Predictions remain right there: they come from the distances.

  Cost. Distances come from one matmul, `||x||^2 - 2 x.w + ||w||^2`, with
  both sides shifted by the mean prototype first (distances do not change,
  the float32 cancellation does) and clamped at 0: memory `[N, C*m]`, not the
  `[N, C, m, D]` of the direct form. `R_w` is an exact closed form in the
  prototype norms and a Gram matrix whose terms are all non-negative (see
  `spread`), so float32 loses nothing to cancellation: O(M * min(M, D) *
  D) time and O(min(M, D)^2) memory, never the `[M, M, D]` tensor. The
  distances that matter most are recomputed by direct differences
  (`[N, m, D]`): in the loss the own class's (the margin and CFAL's focal
  factor hinge on `d_{i,y_i}`), in the scores each row's nearest
  prototype. An embedding on its prototype gets exactly `d = 1` whatever
  its norm and sigma.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    num_centers: centers per class m (default 1). `prototypes` is `[C, D]`
      for m = 1 and `[C, m, D]` otherwise.
    sigma: Gaussian bandwidth, > 0 (default 130 as in the CFAL code).
    margin: the margin lambda, >= 0 (default 0.75).
    spread_weight: weight of `R_w`, >= 0 (default 1, as the authors).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of `d_{i,y_i}` (CFAL's is not
      back-propagated: `FocalModulation(gamma, back_propagate=False)`).
    regularizers: further `Regularizer`s besides `R_w`.
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  embedding_metric = "euclidean"
  focal_back_propagate = False   # the CFAL authors' convention on d_iy

  def __init__(self, *, num_classes: int, embedding_dim: int,
               num_centers: int = 1, sigma: float = 130.0,
               margin: float = 0.75, spread_weight: float = 1.0,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("affinity", num_centers=num_centers, sigma=sigma,
                          margin=margin, spread_weight=spread_weight)
    spread = ((parts.PrototypeSpread(values["spread_weight"]),)
              if values["spread_weight"] > 0 else ())
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     class_weights=class_weights, focal=focal,
                     regularizers=spread + parts.as_regularizers(regularizers),
                     name=name)
    self.num_centers = values["num_centers"]
    self.sigma = values["sigma"]
    self.margin = values["margin"]
    self.spread_weight = values["spread_weight"]
    shape = [self.num_classes, self.embedding_dim]
    if self.num_centers > 1:
      shape.insert(1, self.num_centers)
    # He-normal with fan_in = C*m, as Keras computes it for the authors'
    # [C, m, D] weight.
    stddev = math.sqrt(2.0 / (self.num_classes * self.num_centers))
    with self.name_scope:
      self.prototypes = tf.Variable(base.initial_value(shape, stddev, seed),
                                    name="prototypes")

  @property
  def num_prototypes(self) -> int:
    return self.num_classes * self.num_centers

  def _flat_prototypes(self) -> tf.Tensor:
    return tf.reshape(self.prototypes, [self.num_prototypes,
                                        self.embedding_dim])

  def _expanded_squared_distances(self, x: tf.Tensor) -> tf.Tensor:
    """`[N, M]` squared distances to every prototype from one matmul."""
    w = self._flat_prototypes()
    # Distances are translation-invariant: the shift changes no value and
    # has no gradient, it only keeps the expansion below well conditioned.
    shift = tf.stop_gradient(tf.reduce_mean(w, axis=0))
    x, w = x - shift, w - shift
    sq = (tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)
          - 2.0 * tf.matmul(x, w, transpose_b=True)
          + tf.reduce_sum(tf.square(w), axis=-1)[None, :])
    return tf.maximum(sq, 0.0)

  def _nearest_center_per_class(self, sq: tf.Tensor) -> tf.Tensor:
    """`[N, M]` -> `[N, C]`: the minimum over each class's centers."""
    if self.num_centers == 1:
      return sq
    return tf.reduce_min(
        tf.reshape(sq, [-1, self.num_classes, self.num_centers]), axis=-1)

  def _exact_squared_distances(self, x: tf.Tensor,
                               picked: tf.Tensor) -> tf.Tensor:
    """`[N]` min over k of `||x_i - picked_ik||^2` for `picked` `[N, k, D]`,
    by direct differences: no cancellation, so an embedding on its
    prototype gives exactly 0. `picked` comes from `tf.gather`, which copies
    values (a one-hot matmul would be rounded by TF32 on recent GPUs)."""
    return tf.reduce_min(
        tf.reduce_sum(tf.square(x[:, None, :] - picked), axis=-1), axis=-1)

  def squared_distances(self, embeddings: tf.Tensor) -> tf.Tensor:
    """`[N, C]` squared distance to the nearest center of each class.

    The expansion's float32 residue is ~ulp(||x||^2), which `exp(-s/sigma)`
    magnifies when sigma is small; but then only the nearest prototype has
    a visible affinity. So each row's nearest prototype is recomputed by
    direct differences: exact where it matters, one more matmul of cost.
    """
    x = base.as_float32(embeddings)
    sq = self._expanded_squared_distances(x)
    nearest = tf.argmin(sq, axis=-1, output_type=tf.int32)
    exact = self._exact_squared_distances(
        x, tf.gather(self._flat_prototypes(), nearest)[:, None, :])
    is_nearest = tf.one_hot(nearest, self.num_prototypes) > 0
    sq = tf.where(is_nearest, exact[:, None], sq)
    return self._nearest_center_per_class(sq)

  def __call__(self, embeddings, labels=None, training=False):
    del labels, training  # The margin lives in the loss, not the scores.
    # max_k exp(-s_k / sigma) == exp(-min_k s_k / sigma).
    return tf.exp(-self.squared_distances(embeddings) / self.sigma)

  def predict(self, embeddings):
    """The class of the nearest prototype, `[N]` int32.

    From the squared distances, not from `d`: far from every prototype all
    `d` underflow to 0 and their argmax would always be class 0.
    """
    return tf.argmin(self.squared_distances(embeddings), axis=-1,
                     output_type=tf.int32)

  def spread(self) -> tf.Tensor:
    """The prototype-spread regulariser `R_w` (a float32 scalar), unweighted.

    `parts.prototype_spread` of all M = C * m prototypes: exact, in
    O(M min(M, D) D) time without the M x M pairs.
    """
    return parts.prototype_spread(self._flat_prototypes())

  def core_loss(self, embeddings, labels):
    """`L_mm` `[N]` and `log d_{i,y_i} = -||x_i - w_{y_i}||^2 / sigma`."""
    x = base.as_float32(embeddings)
    onehot = base.one_hot(labels, self.num_classes)
    # The own class's distance (which the margin and CFAL's focal factor
    # hinge on) by direct differences; the rest from the expansion.
    centers = tf.reshape(self.prototypes, [self.num_classes, self.num_centers,
                                           self.embedding_dim])
    own = self._exact_squared_distances(
        x, tf.gather(centers, tf.cast(tf.reshape(labels, [-1]), tf.int32)))
    sq = self._nearest_center_per_class(self._expanded_squared_distances(x))
    sq = tf.where(onehot > 0, own[:, None], sq)
    d = tf.exp(-sq / self.sigma)
    d_target = tf.reduce_sum(d * onehot, axis=-1)
    hinge = tf.nn.relu(self.margin + d - d_target[:, None]) * (1.0 - onehot)
    return tf.reduce_sum(hinge, axis=-1), -own / self.sigma

  def config(self):
    return {**super().config(), "num_centers": self.num_centers,
            "sigma": self.sigma, "margin": self.margin,
            "spread_weight": self.spread_weight}
