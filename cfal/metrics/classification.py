"""Confusion matrices in the graph, and classification scores from them.

The split is deliberate: the compiled (and possibly distributed) eval step
only counts, with `confusion_matrix_update` or a `ConfusionMatrix`
accumulator, and returns or holds a small `[C, C]` int64 matrix. Every score
is then derived on the host by `classification_report`, through
scikit-learn with the confusion cells as weighted samples, so the scores
are sklearn's own and cost nothing in the step.

Conventions: rows are the true class, columns the predicted class, as in
`sklearn.metrics.confusion_matrix`.
"""

from __future__ import annotations

import warnings
from typing import Sequence

import numpy as np
import tensorflow as tf
from sklearn import metrics as skm



def confusion_matrix_update(labels: tf.Tensor, predictions: tf.Tensor,
                            num_classes: int) -> tf.Tensor:
  """Confusion counts of one batch, int64 `[C, C]` (rows true, cols predicted).

  Computed densely as `one_hot(labels)^T @ one_hot(predictions)`, so it has
  a static shape, no scatter and no data-dependent control flow: it runs
  unchanged eagerly, in a `tf.function`, under `jit_compile=True` and in the
  replica context of a distribution strategy. A distributed eval step can
  return it per replica and the caller sums the replicas with
  `strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)`.

  Labels or predictions outside `[0, C)` one-hot to a zero row and are not
  counted, so padding the last batch with label `-1` masks the padding out.
  The matmul runs in float32, which counts exactly as long as a batch has
  fewer than 2**24 examples; the result is cast to int64.

  Args:
    labels: integer true classes, any shape (flattened), e.g. `[N]`.
    predictions: integer predicted classes, same number of elements.
    num_classes: number of classes C.

  Returns:
    int64 tensor `[C, C]`.
  """
  _check_int("num_classes", num_classes, minimum=1)
  labels = tf.cast(tf.reshape(labels, [-1]), tf.int32)
  predictions = tf.cast(tf.reshape(predictions, [-1]), tf.int32)
  true_hot = tf.one_hot(labels, num_classes, dtype=tf.float32)
  pred_hot = tf.one_hot(predictions, num_classes, dtype=tf.float32)
  counts = tf.matmul(true_hot, pred_hot, transpose_a=True)
  return tf.cast(tf.round(counts), tf.int64)


class ConfusionMatrix(tf.Module):
  """An accumulating int64 confusion matrix that sums across replicas.

  The counts live in a non-trainable variable created with
  `synchronization=ON_READ` and `aggregation=SUM`. Under a
  `tf.distribute` strategy (create the module inside `strategy.scope()`)
  each replica adds its batch to its own local copy inside `strategy.run`,
  with no cross-device traffic in the step; reading `result()` in the
  cross-replica context returns the sum over replicas. Without a strategy
  it is an ordinary variable.

  Usage:
    confusion = ConfusionMatrix(num_classes)      # inside strategy.scope()
    strategy.run(lambda x, y: confusion.update(y, head.predict(f(x))), ...)
    report = classification_report(confusion.result().numpy())
    confusion.reset()

  Args:
    num_classes: number of classes C.
    name: module name.
  """

  def __init__(self, num_classes: int, name: str | None = None):
    super().__init__(name=name)
    _check_int("num_classes", num_classes, minimum=1)
    self.num_classes = int(num_classes)
    self.confusion = tf.Variable(
        tf.zeros([self.num_classes, self.num_classes], tf.int64),
        trainable=False, name="confusion",
        synchronization=tf.VariableSynchronization.ON_READ,
        aggregation=tf.VariableAggregation.SUM)

  def update(self, labels: tf.Tensor, predictions: tf.Tensor) -> None:
    """Adds one batch (see `confusion_matrix_update` for the conventions).

    Args:
      labels: integer true classes, e.g. `[N]`.
      predictions: integer predicted classes, same number of elements.
    """
    self.confusion.assign_add(
        confusion_matrix_update(labels, predictions, self.num_classes))

  def add(self, counts: tf.Tensor) -> None:
    """Adds precomputed `[C, C]` counts, e.g. from a jit-compiled step.

    Under a strategy, a `tf.function(jit_compile=True)` called inside
    `strategy.run` should not capture this per-replica variable (XLA then
    tries to reach another replica's device): have the compiled function
    return `confusion_matrix_update(...)` and `add` its result outside it.

    Args:
      counts: int64 (or castable) `[C, C]` counts.
    """
    self.confusion.assign_add(tf.cast(counts, tf.int64))

  def reset(self) -> None:
    """Sets every count (on every replica) back to zero."""
    # In the cross-replica context an ON_READ/SUM variable accepts `assign`
    # (the value is split evenly across the replicas) but not `assign_add`;
    # zero splits exactly.
    self.confusion.assign(tf.zeros_like(self.confusion))

  def result(self) -> tf.Tensor:
    """The accumulated int64 `[C, C]` counts, summed over replicas."""
    return tf.convert_to_tensor(self.confusion)


# ---------------------------------------------------------------------------
# Scores from a confusion matrix (host side, scikit-learn).


def classification_report(confusion: np.ndarray,
                          class_names: Sequence[str] | None = None) -> dict:
  """Accuracy, balanced accuracy, macro/weighted P/R/F1, MCC, kappa, per class.

  Everything is computed from the `[C, C]` confusion matrix (rows true,
  columns predicted; counts, or weighted counts if float) by scikit-learn,
  each non-zero cell `(i, j)` passed as one sample with true class i,
  prediction j and `sample_weight` its count; this equals scikit-learn
  called on the underlying labels as follows:

  * `accuracy`: `accuracy_score`.
  * `balanced_accuracy`: `balanced_accuracy_score`, the mean recall over the
    classes present in the labels (support > 0); classes absent from the
    labels are left out, not counted as recall 0.
  * `macro_*`, `weighted_*` and `per_class`:
    `precision_recall_fscore_support(..., labels=range(C),
    zero_division=0)`. A ratio with a zero denominator is 0: a class never
    predicted has precision 0, a class absent from the labels has recall 0
    and support 0, and F1 is `2 tp / (2 tp + fp + fn)`, 0 when that
    denominator is 0. Macro averages are over all C classes, so a class
    absent from both labels and predictions counts as 0 in the macro
    precision, recall and F1 (this is what `labels=range(C)` does; without
    `labels`, sklearn would drop such a class). Weighted averages weight by
    support, so absent classes contribute nothing.
  * `mcc`: `matthews_corrcoef` (multiclass R_K), 0 when undefined (only one
    class in the labels or in the predictions), as sklearn returns.
  * `cohen_kappa`: `cohen_kappa_score` (unweighted); NaN when undefined
    (labels and predictions are all one and the same class), as sklearn's
    default `replace_undefined_by=np.nan`.

  Args:
    confusion: `[C, C]` non-negative counts, rows true class, columns
      predicted class; at least one count must be positive.
    class_names: C unique names for the `per_class` entries; default
      `"0"`, `"1"`, ...

  Returns:
    A dict of Python floats `accuracy`, `balanced_accuracy`,
    `macro_precision`, `macro_recall`, `macro_f1`, `weighted_precision`,
    `weighted_recall`, `weighted_f1`, `mcc`, `cohen_kappa`, the int
    `num_samples`, and `per_class`: `{name: {"precision", "recall", "f1",
    "support"}}` in class order (support an int for integer counts).
  """
  cm = np.asarray(confusion)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1] or cm.shape[0] < 1:
    raise ValueError(f"`confusion` must be a square [C, C] matrix, got shape "
                     f"{cm.shape}.")
  if not np.issubdtype(cm.dtype, np.number) or np.iscomplexobj(cm):
    raise TypeError(f"`confusion` must hold real counts, got dtype {cm.dtype}.")
  integer_counts = np.issubdtype(cm.dtype, np.integer)
  cm = cm.astype(np.float64)
  if not np.all(np.isfinite(cm)) or np.any(cm < 0):
    raise ValueError("`confusion` must hold finite counts >= 0.")
  num_classes = cm.shape[0]
  total = cm.sum()
  if total <= 0:
    raise ValueError("`confusion` is all zeros: no examples were counted, so "
                     "no score is defined.")
  if class_names is None:
    class_names = [str(c) for c in range(num_classes)]
  class_names = [str(name) for name in class_names]
  if len(class_names) != num_classes:
    raise ValueError(f"`class_names` has {len(class_names)} names for "
                     f"{num_classes} classes.")
  if len(set(class_names)) != num_classes:
    raise ValueError("`class_names` must be unique.")

  # scikit-learn on the C * C cells: cell (i, j) is one "example" with
  # true class i, predicted class j and sample weight cm[i, j], so every
  # score is sklearn's on the underlying labels without expanding them.
  # Zero-weight cells are dropped (a class then present in neither array is
  # still scored through `labels=range(C)`).
  true_cls, pred_cls = np.divmod(np.arange(num_classes * num_classes),
                                 num_classes)
  weight = cm.reshape(-1)
  nonzero = weight > 0
  y_true, y_pred = true_cls[nonzero], pred_cls[nonzero]
  weight = weight[nonzero]
  labels = np.arange(num_classes)
  with warnings.catch_warnings():
    # sklearn warns on the degenerate cases whose values are documented
    # above (a class never predicted or absent from the labels, MCC or
    # kappa undefined): UndefinedMetricWarning, UserWarning, RuntimeWarning.
    warnings.simplefilter("ignore")
    precision, recall, f1, _ = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, sample_weight=weight,
        zero_division=0.0)
    averages = {
        average: skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, average=average,
            sample_weight=weight, zero_division=0.0)[:3]
        for average in ("macro", "weighted")}
    accuracy = skm.accuracy_score(y_true, y_pred, sample_weight=weight)
    balanced = skm.balanced_accuracy_score(y_true, y_pred,
                                           sample_weight=weight)
    mcc = skm.matthews_corrcoef(y_true, y_pred, sample_weight=weight)
    kappa = skm.cohen_kappa_score(y_true, y_pred, labels=labels,
                                  sample_weight=weight)
  support = cm.sum(axis=1)       # true count per class

  def count(value: float) -> int | float:
    return int(round(value)) if integer_counts else float(value)

  per_class = {
      name: {"precision": float(precision[c]), "recall": float(recall[c]),
             "f1": float(f1[c]), "support": count(support[c])}
      for c, name in enumerate(class_names)}
  macro, weighted = averages["macro"], averages["weighted"]
  return {
      "accuracy": float(accuracy),
      "balanced_accuracy": float(balanced),
      "macro_precision": float(macro[0]),
      "macro_recall": float(macro[1]),
      "macro_f1": float(macro[2]),
      "weighted_precision": float(weighted[0]),
      "weighted_recall": float(weighted[1]),
      "weighted_f1": float(weighted[2]),
      "mcc": float(mcc),
      "cohen_kappa": float(kappa),
      "num_samples": count(total),
      "per_class": per_class,
  }


def _check_int(name: str, value, minimum: int) -> None:
  """`value` must be an integer >= `minimum`, or a one-line error."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"`{name}` must be an integer, got {value!r}.")
  if value < minimum:
    raise ValueError(f"`{name}` ({value}) must be >= {minimum}.")
