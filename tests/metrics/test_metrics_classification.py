"""cfal.metrics.classification against scikit-learn, in and out of the graph."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tensorflow as tf
from sklearn import metrics as skm

from cfal.metrics import (ConfusionMatrix, classification_report,
                          confusion_matrix_update)
from support.strategies import mirrored_strategy


def _sklearn_report(y_true: np.ndarray, y_pred: np.ndarray,
                    num_classes: int) -> dict:
  """The same scores from scikit-learn, the way the docstring promises."""
  labels = list(range(num_classes))
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # UndefinedMetricWarning and friends
    out = {
        "accuracy": skm.accuracy_score(y_true, y_pred),
        "balanced_accuracy": skm.balanced_accuracy_score(y_true, y_pred),
        "mcc": skm.matthews_corrcoef(y_true, y_pred),
        "cohen_kappa": skm.cohen_kappa_score(y_true, y_pred, labels=labels),
    }
    for average in ("macro", "weighted"):
      p, r, f, _ = skm.precision_recall_fscore_support(
          y_true, y_pred, labels=labels, average=average, zero_division=0)
      out.update({f"{average}_precision": p, f"{average}_recall": r,
                  f"{average}_f1": f})
    p, r, f, s = skm.precision_recall_fscore_support(
        y_true, y_pred, labels=labels, average=None, zero_division=0)
  out["per_class"] = (p, r, f, s)
  return out


def _check_against_sklearn(y_true, y_pred, num_classes: int) -> dict:
  y_true = np.asarray(y_true)
  y_pred = np.asarray(y_pred)
  confusion = skm.confusion_matrix(y_true, y_pred,
                                   labels=list(range(num_classes)))
  names = [f"c{i}" for i in range(num_classes)]
  got = classification_report(confusion, class_names=names)
  want = _sklearn_report(y_true, y_pred, num_classes)
  for key, value in want.items():
    if key == "per_class":
      continue
    np.testing.assert_allclose(got[key], value, rtol=1e-12, atol=1e-12,
                               equal_nan=True, err_msg=key)
  p, r, f, s = want["per_class"]
  assert list(got["per_class"]) == names
  for c, name in enumerate(names):
    entry = got["per_class"][name]
    np.testing.assert_allclose(
        [entry["precision"], entry["recall"], entry["f1"]], [p[c], r[c], f[c]],
        rtol=1e-12, atol=1e-12, err_msg=name)
    assert entry["support"] == s[c] and isinstance(entry["support"], int)
  assert got["num_samples"] == y_true.size
  return got


@pytest.mark.parametrize("num_classes", [2, 3, 5, 8, 12])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_predictions_match_sklearn(num_classes, seed):
  rng = np.random.default_rng(seed * 100 + num_classes)
  n = int(rng.integers(20, 400))
  y_true = rng.integers(0, num_classes, n)
  # Better than chance, so the scores are not all near zero.
  y_pred = np.where(rng.random(n) < 0.6, y_true,
                    rng.integers(0, num_classes, n))
  _check_against_sklearn(y_true, y_pred, num_classes)


def test_class_never_predicted():
  y_true = np.array([0, 0, 1, 1, 2, 2, 2])
  y_pred = np.array([0, 1, 1, 1, 0, 1, 0])   # class 2 never predicted
  got = _check_against_sklearn(y_true, y_pred, 3)
  assert got["per_class"]["c2"]["precision"] == 0.0
  assert got["per_class"]["c2"]["f1"] == 0.0


def test_class_absent_from_labels():
  y_true = np.array([0, 0, 1, 1, 1, 3])       # class 2 absent ...
  y_pred = np.array([0, 2, 1, 1, 0, 3])       # ... but predicted once
  got = _check_against_sklearn(y_true, y_pred, 4)
  absent = got["per_class"]["c2"]
  assert absent == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
  # Balanced accuracy leaves the absent class out; macro recall keeps it.
  np.testing.assert_allclose(got["balanced_accuracy"], (0.5 + 2 / 3 + 1) / 3)
  np.testing.assert_allclose(got["macro_recall"], (0.5 + 2 / 3 + 0 + 1) / 4)


def test_class_absent_from_labels_and_predictions_counts_in_macro():
  y_true = np.array([0, 0, 1, 1])
  y_pred = np.array([0, 1, 1, 1])             # class 2 nowhere
  got = _check_against_sklearn(y_true, y_pred, 3)
  np.testing.assert_allclose(got["macro_precision"], (1 + 2 / 3 + 0) / 3)
  np.testing.assert_allclose(got["weighted_recall"], 0.75)


def test_one_class_only():
  y = np.zeros(9, np.int64)
  got = _check_against_sklearn(y, y, 3)
  assert got["accuracy"] == 1.0 and got["balanced_accuracy"] == 1.0
  assert got["mcc"] == 0.0                    # undefined -> 0, as sklearn
  assert np.isnan(got["cohen_kappa"])         # undefined -> NaN, as sklearn
  # One class in the labels, several predicted.
  _check_against_sklearn(y, np.array([0, 0, 0, 1, 1, 2, 0, 0, 0]), 3)


def test_perfect_predictions():
  y = np.arange(30) % 6
  got = _check_against_sklearn(y, y, 6)
  for key in ("accuracy", "balanced_accuracy", "macro_f1", "weighted_f1",
              "mcc", "cohen_kappa"):
    assert got[key] == pytest.approx(1.0), key


def test_all_wrong():
  y_true = np.arange(40) % 4
  y_pred = (y_true + 1) % 4
  got = _check_against_sklearn(y_true, y_pred, 4)
  assert got["accuracy"] == 0.0 and got["macro_f1"] == 0.0
  assert got["mcc"] < 0 and got["cohen_kappa"] < 0


def test_float_counts_and_default_names():
  confusion = np.array([[3.0, 1.0], [0.5, 2.5]])
  got = classification_report(confusion)
  assert list(got["per_class"]) == ["0", "1"]
  assert got["per_class"]["0"]["support"] == 4.0
  assert got["num_samples"] == 7.0


@pytest.mark.parametrize("confusion, fragment", [
    (np.zeros((3, 3), np.int64), "all zeros"),
    (np.ones((2, 3)), "square"),
    (np.array([[1, -1], [0, 1]]), ">= 0"),
    (np.array([[1, np.nan], [0, 1]]), "finite"),
])
def test_report_rejects_bad_matrices(confusion, fragment):
  with pytest.raises(ValueError, match=fragment):
    classification_report(confusion)


def test_report_rejects_bad_names():
  with pytest.raises(ValueError, match="2 names for 3"):
    classification_report(np.eye(3), class_names=["a", "b"])
  with pytest.raises(ValueError, match="unique"):
    classification_report(np.eye(2), class_names=["a", "a"])


# ---------------------------------------------------------------------------
# In-graph counting.


def _labels(seed: int, n: int, num_classes: int):
  rng = np.random.default_rng(seed)
  y_true = rng.integers(0, num_classes, n).astype(np.int32)
  y_pred = rng.integers(0, num_classes, n).astype(np.int32)
  return y_true, y_pred


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_update_matches_sklearn(mode):
  num_classes = 7
  y_true, y_pred = _labels(3, 200, num_classes)
  fn = lambda y, p: confusion_matrix_update(y, p, num_classes)  # noqa: E731
  if mode == "function":
    fn = tf.function(fn)
  elif mode == "xla":
    fn = tf.function(fn, jit_compile=True)
  got = fn(tf.constant(y_true), tf.constant(y_pred.astype(np.int64)))
  assert got.dtype == tf.int64 and got.shape == [num_classes, num_classes]
  np.testing.assert_array_equal(
      got, skm.confusion_matrix(y_true, y_pred, labels=range(num_classes)))


def test_update_ignores_out_of_range_padding():
  y_true = tf.constant([0, 1, -1, 2, -1])
  y_pred = tf.constant([0, 2, 1, 2, 0])
  got = confusion_matrix_update(y_true, y_pred, 3).numpy()
  np.testing.assert_array_equal(got, [[1, 0, 0], [0, 0, 1], [0, 0, 1]])


@pytest.mark.parametrize("mode", ["eager", "function", "xla"])
def test_accumulator_matches_sklearn(mode):
  num_classes = 5
  y_true, y_pred = _labels(4, 96, num_classes)
  confusion = ConfusionMatrix(num_classes)
  update = confusion.update
  if mode == "function":
    update = tf.function(update)
  elif mode == "xla":
    update = tf.function(update, jit_compile=True)
  for start in range(0, 96, 32):
    update(y_true[start:start + 32], y_pred[start:start + 32])
  want = skm.confusion_matrix(y_true, y_pred, labels=range(num_classes))
  np.testing.assert_array_equal(confusion.result(), want)
  assert not confusion.trainable_variables
  confusion.reset()
  np.testing.assert_array_equal(confusion.result(), 0)


def test_accumulator_sums_replicas_on_read():
  num_classes = 4
  y_true, y_pred = _labels(5, 64, num_classes)
  strategy = mirrored_strategy(2)
  with strategy.scope():
    confusion = ConfusionMatrix(num_classes)
  assert confusion.confusion.synchronization == (
      tf.VariableSynchronization.ON_READ)
  dataset = tf.data.Dataset.from_tensor_slices((y_true, y_pred)).batch(16)
  batches = list(strategy.experimental_distribute_dataset(dataset))
  counts = tf.function(
      lambda y, p: confusion_matrix_update(y, p, num_classes),
      jit_compile=True)

  @tf.function
  def update_step(batch):
    strategy.run(confusion.update, args=batch)

  @tf.function
  def add_step(batch):
    # The XLA-compiled count, added outside the compiled function.
    strategy.run(lambda y, p: confusion.add(counts(y, p)), args=batch)

  @tf.function
  def reduce_step(batch):
    per_replica = strategy.run(counts, args=batch)
    return strategy.reduce(tf.distribute.ReduceOp.SUM, per_replica, axis=None)

  want = skm.confusion_matrix(y_true, y_pred, labels=range(num_classes))
  for step in (update_step, add_step):
    for batch in batches:
      step(batch)
    np.testing.assert_array_equal(confusion.result(), want)
    # Each replica holds only its own share: the sum happens on read.
    local = strategy.experimental_local_results(confusion.confusion)
    assert len(local) == 2
    assert [int(v.numpy().sum()) for v in local] == [32, 32]
    confusion.reset()
    for v in strategy.experimental_local_results(confusion.confusion):
      np.testing.assert_array_equal(v, 0)
  reduced = sum(reduce_step(batch) for batch in batches)
  np.testing.assert_array_equal(reduced, want)


def test_bad_num_classes():
  with pytest.raises(ValueError, match="num_classes"):
    ConfusionMatrix(0)
  with pytest.raises(TypeError, match="num_classes"):
    confusion_matrix_update([0], [0], 2.5)


def test_report_degenerate_cases_raise_no_warnings():
  # scikit-learn warns on these; the report documents their values instead.
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    classification_report(np.array([[5, 0], [0, 0]]))          # one class
    classification_report(np.array([[2, 0, 1], [0, 0, 0], [1, 0, 3]]))
