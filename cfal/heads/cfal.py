"""CFAL: center-focused affinity loss (Mahbub et al. 2024)."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from cfal.heads import base
from cfal.heads.affinity import Affinity


class CFAL(Affinity):
  """Gaussian affinity loss with focal modulation and class-balanced weights.

  Mahbub et al. 2024, "Center-Focused Affinity Loss for Class Imbalance
  Histology Image Classification". With `d`, `L_mm` and `R_w` as in
  `Affinity`:

    loss_i = w_{y_i} * (1 - d_{i,y_i})^gamma * (L_mm_i + spread_weight R_w)

  where `w_c = (1 - beta) / (1 - beta^{n_c})`, normalised to sum to C, are
  the class-balanced weights of Cui et al. 2019 from `class_counts` (all 1
  without counts). The factor `w_y (1 - d_iy)^gamma` scales each example's
  gradient but is not itself back-propagated. Each example keeps its own
  weight, as the paper describes (the authors' Keras code collapses it to
  one scalar per batch through an (N, 1) x (N,) broadcast).

  With `gamma = 0` and no class counts this is exactly `Affinity`.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    num_centers: centers per class m (default 1).
    sigma: Gaussian bandwidth, > 0 (default 130).
    margin: the margin lambda, >= 0 (default 0.75).
    gamma: focusing parameter, >= 0 (default 2).
    class_counts: training examples per class, each >= 1 (optional).
    beta: effective-number parameter, in [0, 1) (default 0.9999).
    spread_weight: weight of `R_w`, >= 0 (default 1).
    seed: makes the initial prototypes reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               num_centers: int = 1, sigma: float = 130.0,
               margin: float = 0.75, gamma: float = 2.0,
               class_counts: Sequence[float] | None = None,
               beta: float = 0.9999, spread_weight: float = 1.0,
               seed: int | None = None, name: str | None = None):
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     num_centers=num_centers, sigma=sigma, margin=margin,
                     spread_weight=spread_weight, seed=seed, name=name)
    self.gamma = base.check_range("gamma", gamma, low=0.0)
    self.beta = base.check_range("beta", beta, low=0.0, high=1.0,
                                 high_open=True)
    self.class_weights = None
    if class_counts is not None:
      weights = base.class_balanced_weights(class_counts, self.beta)
      if weights.size != self.num_classes:
        raise ValueError(f"`class_counts` has {weights.size} entries but "
                         f"`num_classes` is {self.num_classes}.")
      self.class_weights = tf.constant(weights, tf.float32)

  def loss(self, embeddings, labels):
    d_target, loss = self._terms(embeddings, labels)
    factor = tf.ones_like(d_target)
    if self.gamma > 0:
      factor = tf.pow(tf.maximum(1.0 - d_target, 0.0), self.gamma)
    if self.class_weights is not None:
      onehot = base.one_hot(labels, self.num_classes)
      factor *= tf.linalg.matvec(onehot, self.class_weights)
    return tf.stop_gradient(factor) * loss

  def config(self):
    return {**super().config(), "gamma": self.gamma, "beta": self.beta,
            "class_weighted": self.class_weights is not None}
