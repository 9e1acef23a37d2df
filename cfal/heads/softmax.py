"""Linear softmax classifier: the baseline every margin head is compared to."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from cfal.heads import base, parts


class Softmax(base.Head):
  """Linear classifier with softmax cross-entropy.

  `logits_ij = x_i . w_j + b_j`, `loss_i = -log softmax(logits_i)_{y_i}`.
  The weight rows `w_j` are the class prototypes. With parts (see `Head`)
  this is also a class-weighted or focal softmax, e.g.
  `Softmax(..., class_weights=[1.0, 4.0, ...])`.

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    use_bias: add the bias `b` (default True).
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the softmax target probability.
    regularizers: optional `Regularizer`s on the weight rows.
    seed: makes the initial weights reproducible.
    name: module name.
  """

  embedding_metric = "cosine"

  def __init__(self, *, num_classes: int, embedding_dim: int,
               use_bias: bool = True,
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, name=name)
    self.use_bias = base.checked("softmax", use_bias=use_bias)["use_bias"]
    with self.name_scope:
      self.prototypes = tf.Variable(
          base.initial_value(
              [self.num_classes, self.embedding_dim],
              base.glorot_stddev(self.embedding_dim, self.num_classes), seed),
          name="prototypes")
      self.bias = (tf.Variable(tf.zeros([self.num_classes]), name="bias")
                   if self.use_bias else None)

  def __call__(self, embeddings, labels=None, training=False):
    del labels, training  # No margin: the same logits in every mode.
    logits = tf.matmul(base.as_float32(embeddings), self.prototypes,
                       transpose_b=True)
    if self.bias is not None:
      logits += self.bias
    return logits

  def core_loss(self, embeddings, labels):
    cross_entropy = base.sparse_softmax_cross_entropy(self(embeddings), labels)
    return cross_entropy, -cross_entropy

  def config(self):
    return {**super().config(), "use_bias": self.use_bias}
