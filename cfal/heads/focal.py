"""Focal loss on a linear classifier (Lin et al. 2017)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from cfal.heads import base
from cfal.heads.softmax import Softmax


class Focal(Softmax):
  """Linear classifier trained with the focal loss.

  Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017:
  `loss_i = -a_{y_i} (1 - p_{i,y_i})^gamma log p_{i,y_i}` with
  `p_i = softmax(x_i W^T + b)`. The modulating factor is part of the loss and
  is back-propagated, as in the paper. `gamma = 0` and no class weights give
  plain cross-entropy.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    gamma: focusing parameter, >= 0 (default 2).
    alpha: optional per-class weights `a_c` (length C, >= 0).
    class_counts: optional training examples per class; when given (and
      `alpha` is not), `a` are the class-balanced weights of Cui et al. 2019
      (see `class_balanced_weights`).
    beta: effective-number parameter for `class_counts`, in [0, 1).
    use_bias: add a bias to the logits.
    seed: makes the initial weights reproducible.
    name: module name.
  """

  def __init__(self, *, num_classes: int, embedding_dim: int,
               gamma: float = 2.0, alpha: Sequence[float] | None = None,
               class_counts: Sequence[float] | None = None,
               beta: float = 0.9999, use_bias: bool = True,
               seed: int | None = None, name: str | None = None):
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     use_bias=use_bias, seed=seed, name=name)
    self.gamma = base.check_range("gamma", gamma, low=0.0)
    self.beta = base.check_range("beta", beta, low=0.0, high=1.0,
                                 high_open=True)
    if alpha is not None and class_counts is not None:
      raise ValueError("Pass either `alpha` or `class_counts` to Focal, not "
                       "both.")
    if class_counts is not None:
      weights = base.class_balanced_weights(class_counts, self.beta)
    elif alpha is not None:
      weights = np.asarray(alpha, dtype=np.float64).reshape(-1)
      if not np.all(np.isfinite(weights)) or np.any(weights < 0):
        raise ValueError("`alpha` must be finite and >= 0 for every class.")
    else:
      weights = None
    if weights is not None and weights.size != self.num_classes:
      raise ValueError(f"Per-class weights have {weights.size} entries but "
                       f"`num_classes` is {self.num_classes}.")
    self.class_weights = (None if weights is None
                          else tf.constant(weights, tf.float32))

  def loss(self, embeddings, labels):
    onehot = base.one_hot(labels, self.num_classes)
    log_p = tf.nn.log_softmax(self(embeddings))
    log_p_y = tf.reduce_sum(log_p * onehot, axis=-1)
    loss = -log_p_y
    if self.gamma > 0:
      # 1 - p computed as -expm1(log p): exact when p is close to 1. Its
      # floor keeps the gradient of x**gamma finite for gamma < 1.
      one_minus_p = tf.maximum(-tf.math.expm1(log_p_y), 1e-30)
      loss *= tf.pow(one_minus_p, self.gamma)
    if self.class_weights is not None:
      loss *= tf.linalg.matvec(onehot, self.class_weights)
    return loss

  def config(self):
    return {**super().config(), "gamma": self.gamma, "beta": self.beta,
            "class_weighted": self.class_weights is not None}
