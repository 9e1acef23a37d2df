"""Center loss jointly with softmax (Wen et al. 2016)."""

from __future__ import annotations

from typing import Sequence

import tensorflow as tf

from cfal.heads import base, parts


class CenterLoss(base.Head):
  """Softmax cross-entropy plus a pull of each embedding to its class center.

  Wen et al., "A Discriminative Feature Learning Approach for Deep Face
  Recognition", ECCV 2016:

    loss_i = CE(x_i W + b, y_i) + center_weight * 0.5 * ||x_i - c_{y_i}||^2

  The centers `c` are `prototypes`. With `center_update="alpha"` (default)
  they are not trainable; `update` moves them with the paper's rule

    delta_j = sum_{i: y_i = j} (c_j - x_i) / (1 + n_j),   c_j -= alpha delta_j

  where the per-class sums and counts are all-reduced across replicas first,
  so N replicas give exactly the update of one device on the global batch.
  With `center_update="gradient"` the centers are ordinary trainable weights
  (as an embedding layer would learn them) and `update` does nothing.

  `__call__` returns the logits of the head's own linear classifier
  (`classifier_kernel` [D, C], `classifier_bias` [C]). A focal part
  modulates with that classifier's softmax probability of the target.
  Regularisers act on the centers, so they need
  `center_update="gradient"` (the alpha rule ignores gradients).

  Args:
    num_classes: number of classes C.
    embedding_dim: embedding size D.
    alpha: center learning rate of the update rule, in [0, 1] (default 0.5).
    center_weight: weight lambda of the center term, >= 0 (default 0.01).
    center_update: "alpha" or "gradient".
    class_weights: optional per-class weights (`ClassWeights` or floats).
    focal: optional `FocalModulation` of the classifier's target
      probability.
    regularizers: optional `Regularizer`s on the centers (only with
      `center_update="gradient"`).
    seed: makes the initial classifier weights reproducible.
    name: module name.
  """

  embedding_metric = "euclidean"

  def __init__(self, *, num_classes: int, embedding_dim: int,
               alpha: float = 0.5, center_weight: float = 0.01,
               center_update: str = "alpha",
               class_weights: parts.ClassWeights | Sequence[float] | None
               = None,
               focal: parts.FocalModulation | None = None,
               regularizers: Sequence[parts.Regularizer] | None = None,
               seed: int | None = None, name: str | None = None):
    values = base.checked("center_loss", alpha=alpha,
                          center_weight=center_weight,
                          center_update=center_update)
    super().__init__(num_classes=num_classes, embedding_dim=embedding_dim,
                     class_weights=class_weights, focal=focal,
                     regularizers=regularizers, name=name)
    self.alpha = values["alpha"]
    self.center_weight = values["center_weight"]
    self.center_update = values["center_update"]
    by_rule = self.center_update == "alpha"
    if by_rule and self.regularizers:
      raise ValueError("Regularizers on center-loss centers need "
                       "`center_update` 'gradient'; the 'alpha' rule never "
                       "applies their gradient.")
    with self.name_scope:
      self.classifier_kernel = tf.Variable(
          base.initial_value(
              [self.embedding_dim, self.num_classes],
              base.glorot_stddev(self.embedding_dim, self.num_classes), seed),
          name="classifier_kernel")
      self.classifier_bias = tf.Variable(tf.zeros([self.num_classes]),
                                         name="classifier_bias")
      # Under a strategy every replica computes the same all-reduced update;
      # ONLY_FIRST_REPLICA lets the replicas assign it in replica context.
      self.prototypes = tf.Variable(
          tf.zeros([self.num_classes, self.embedding_dim]),
          trainable=not by_rule, name="prototypes",
          aggregation=(tf.VariableAggregation.ONLY_FIRST_REPLICA if by_rule
                       else tf.VariableAggregation.NONE))

  def __call__(self, embeddings, labels=None, training=False):
    del labels, training
    x = base.as_float32(embeddings)
    return tf.matmul(x, self.classifier_kernel) + self.classifier_bias

  def core_loss(self, embeddings, labels):
    x = base.as_float32(embeddings)
    onehot = base.one_hot(labels, self.num_classes)
    cross_entropy = base.sparse_softmax_cross_entropy(self(x), labels)
    centers = tf.matmul(onehot, self.prototypes)   # c_{y_i}, dense gather
    pull = 0.5 * tf.reduce_sum(tf.square(x - centers), axis=-1)
    return cross_entropy + self.center_weight * pull, -cross_entropy

  def update(self, embeddings, labels):
    if self.center_update != "alpha":
      return
    x = tf.stop_gradient(base.as_float32(embeddings))
    onehot = base.one_hot(labels, self.num_classes)
    sums = tf.matmul(onehot, x, transpose_a=True)            # [C, D]
    counts = tf.reduce_sum(onehot, axis=0)[:, None]          # [C, 1]
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
      sums, counts = context.all_reduce(tf.distribute.ReduceOp.SUM,
                                        [sums, counts])
    delta = (counts * self.prototypes - sums) / (1.0 + counts)
    self.prototypes.assign_sub(self.alpha * delta)

  def config(self):
    return {**super().config(), "alpha": self.alpha,
            "center_weight": self.center_weight,
            "center_update": self.center_update}
