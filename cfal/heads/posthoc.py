"""Post-hoc corrections of a trained head's scores for long-tailed data.

Two corrections that need no retraining, computed in the graph from what a
forward pass gives (embeddings and the head's scores):

* Post-hoc logit adjustment, Menon et al., "Long-tail learning via logit
  adjustment", ICLR 2021 (their post-hoc correction): predict

    argmax_j  f_j(x) - tau log pi_j,

  `f` the head's logits, `pi` the training class priors `n_j / sum_k n_k`.
  For heads whose scores are logits (`registry.LOGIT_SCORES`). A class
  with no training examples is counted as one example, as the
  logit-adjusted heads count it (`cfal.heads.class_counts.log_priors`): its
  prior is the smallest any class of the data could have, finite.
  tau = 0 leaves the scores exactly as they are.

* The tau-normalised classifier, Kang et al., "Decoupling Representation
  and Classifier for Long-Tailed Recognition", ICLR 2020: the weight rows
  of a linear classifier rescaled to `w_j / ||w_j||^tau`, scores

    f_j(x) = x . w_j / ||w_j||^tau,

  with the bias dropped as in the paper. tau = 1 gives every class a unit
  weight vector, tau = 0 the unnormalised classifier without its bias. A
  weight row of norm 0 stays 0. For heads with a linear classifier
  (`registry.LINEAR_CLASSIFIERS`); `linear_classifier` finds its weights
  in a head, or in the head a loaded SavedModel holds.

Both keep the embeddings; the predictions are the argmax of the corrected
scores.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from cfal.heads import class_counts as counts_lib


def prior_shift(class_counts: Sequence[float], tau: float) -> np.ndarray:
  """`tau log pi_j`, float64 `[C]`, what post-hoc adjustment subtracts
  (empty classes counted as one example)."""
  counts = counts_lib.checked_counts(
      class_counts, len(np.asarray(class_counts).reshape(-1)),
      head="post-hoc logit adjustment", purpose="the class priors")
  return float(tau) * counts_lib.log_priors(counts)


def adjust_logits(scores: tf.Tensor, class_counts: Sequence[float],
                  tau: float) -> tf.Tensor:
  """Menon et al.'s post-hoc correction: `scores - tau log pi`, float32
  `[N, C]`."""
  if tau == 0.0:
    return tf.convert_to_tensor(scores, tf.float32)
  shift = tf.constant(prior_shift(class_counts, tau), tf.float32)
  return tf.cast(scores, tf.float32) - shift


def linear_classifier(head: Any) -> tf.Tensor:
  """The weight rows `[C, D]` of a head's linear classifier.

  Works on a `cfal.heads` head and on the head a loaded cfal SavedModel
  holds (`tf.saved_model.load(export).head`): the weight rows are the
  Softmax family's `prototypes`, the transposed `classifier_kernel` of
  CenterLoss (whose prototypes are its centers).
  """
  kernel = getattr(head, "classifier_kernel", None)
  if kernel is not None:
    return tf.transpose(tf.convert_to_tensor(kernel, tf.float32))
  return tf.convert_to_tensor(head.prototypes, tf.float32)


def tau_normalized(weights: tf.Tensor, tau: float) -> tf.Tensor:
  """`w_j / ||w_j||^tau` for each row of `weights` `[C, D]` (rows of norm
  0 stay 0)."""
  weights = tf.convert_to_tensor(weights, tf.float32)
  if tau == 0.0:
    return weights
  norms = tf.norm(weights, axis=-1, keepdims=True)
  safe = tf.where(norms > 0.0, norms, tf.ones_like(norms))
  return weights / tf.pow(safe, tau)


def tau_normalized_logits(embeddings: tf.Tensor, weights: tf.Tensor,
                          tau: float) -> tf.Tensor:
  """Kang et al.'s scores `x . w_j / ||w_j||^tau` (no bias), `[N, C]`."""
  return tf.matmul(tf.cast(embeddings, tf.float32),
                   tau_normalized(weights, tau), transpose_b=True)


@dataclasses.dataclass(frozen=True)
class PostHoc:
  """The corrections to apply, in order: tau-normalisation of the linear
  classifier (which replaces the scores), then logit adjustment.

  Attributes:
    logit_adjustment: Menon et al.'s tau, or None for none.
    class_counts: training examples per class (needed for the adjustment).
    tau_normalization: Kang et al.'s tau, or None for none.
    head: the head (or a loaded SavedModel's head) whose linear classifier
      is tau-normalised; read in the graph at each call.
  """

  logit_adjustment: float | None = None
  class_counts: tuple[float, ...] | None = None
  tau_normalization: float | None = None
  head: Any = None

  def __post_init__(self):
    if self.logit_adjustment is not None and self.class_counts is None:
      raise ValueError("Post-hoc logit adjustment needs the training class "
                       "counts.")
    if self.tau_normalization is not None and self.head is None:
      raise ValueError("The tau-normalised classifier needs the head.")

  def __bool__(self) -> bool:
    return (self.logit_adjustment is not None
            or self.tau_normalization is not None)

  def __call__(self, embeddings: tf.Tensor, scores: tf.Tensor) -> tf.Tensor:
    """The corrected scores `[N, C]` float32."""
    if self.tau_normalization is not None:
      scores = tau_normalized_logits(
          embeddings, linear_classifier(self.head), self.tau_normalization)
    if self.logit_adjustment is not None:
      scores = adjust_logits(scores, self.class_counts,
                             self.logit_adjustment)
    return tf.cast(scores, tf.float32)

  def record(self) -> dict:
    """What report.json records about the corrections."""
    record = {}
    if self.tau_normalization is not None:
      record["tau_normalization"] = {
          "tau": self.tau_normalization, "bias": "dropped",
          "paper": "Kang et al., ICLR 2020"}
    if self.logit_adjustment is not None:
      record["logit_adjustment"] = {
          "tau": self.logit_adjustment,
          "empty_classes": "counted as one training example",
          "paper": "Menon et al., ICLR 2021 (post-hoc)"}
    return record
