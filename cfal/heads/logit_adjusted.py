"""Logit-adjusted softmax cross-entropy (Menon et al. 2021)."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from cfal.heads import base, class_counts as counts_lib, parts
from cfal.heads.softmax import Softmax


class LogitAdjusted(Softmax):
  """Linear classifier trained with the logit-adjusted loss.

  Menon et al., "Long-tail learning via logit adjustment", ICLR 2021: with
  linear logits `f_j = x . w_j + b_j` and the training class priors
  `pi_j = n_j / sum_k n_k`,

    loss_i = -log softmax(f_i + tau * log pi)_{y_i}
           = -log [ e^{f_y + tau log pi_y} / sum_j e^{f_j + tau log pi_j} ].

  Frequent classes get a head start in the loss only, so `f` itself is
  pushed towards the balanced error: prediction is `argmax_j f_j`, on the
  unadjusted logits. With tau = 1 this is the Balanced Softmax of Ren et
  al., "Balanced Meta-Softmax for Long-Tailed Visual Recognition",
  NeurIPS 2020 (`phi_j = n_j e^{f_j} / sum_k n_k e^{f_k}`; see
  `BalancedSoftmax`); tau = 0 is plain softmax cross-entropy.

  `__call__` returns the unadjusted logits `f`, except with labels and
  `training=True`, when it returns the adjusted ones the loss uses. Class
  weights and focal modulation (of the adjusted softmax's target
  probability) compose as on any head (see `Head`).

  A class with no training examples would have `log pi = -inf`; it is
  counted as one example instead (see `cfal.heads.class_counts`), which
  keeps every logit finite and leaves the other classes' adjustments as
  they are up to a constant, which softmax ignores.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    tau: adjustment strength, >= 0 (default 1).
    class_counts: training examples per class, finite and >= 0 (required).
    use_bias: add the bias `b` (default True).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the adjusted target probability.
    regularizers: optional `Regularizer`s on the weight rows.
    seed: makes the initial weights reproducible.
    name: module name.
  """

  counts_set_logits = True

  def __init__(self, *, num_classes: int, embedding_dim: int,
               tau: float = 1.0,
               class_counts: Sequence[float] | None = None,
               use_bias: bool = True,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    tau = base.checked("logit_adjusted", tau=tau)["tau"]
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     use_bias=use_bias, class_weights=class_weights,
                     focal=focal, regularizers=regularizers, seed=seed,
                     name=name)
    counts = counts_lib.checked_counts(
        class_counts, self.num_classes, head=type(self).__name__,
        purpose="its class priors")
    self.tau = tau
    self.class_counts = counts   # float64 [C] (an array: not tracked)
    self.log_priors = counts_lib.log_priors(counts)   # float64 [C]

  def __call__(self, embeddings, labels=None, training=False):
    logits = super().__call__(embeddings)
    if labels is None or not training or self.tau == 0.0:
      return logits
    return logits + tf.constant(self.tau * self.log_priors, tf.float32)

  def core_loss(self, embeddings, labels):
    cross_entropy = base.sparse_softmax_cross_entropy(
        self(embeddings, labels, training=True), labels)
    return cross_entropy, -cross_entropy

  def config(self):
    return {**super().config(), "tau": self.tau,
            "class_counts": counts_lib.as_list(self.class_counts)}
