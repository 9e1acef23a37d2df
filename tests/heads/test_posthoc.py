"""Post-hoc corrections (cfal.heads.posthoc) against float64 references.

Menon et al. 2021's post-hoc logit adjustment, `f_j - tau log pi_j`, and
Kang et al. 2020's tau-normalised classifier, `x . w_j / ||w_j||^tau`
without bias, each written here from the papers' formulas in NumPy
float64; the forward-pass wrapper eval.py uses (`corrected_forward`).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import posthoc
from cfal.training.evaluator import corrected_forward
from support.head_cases import set_linear

C, D, N = 6, 5, 64
# Counts from one example to 1e5, with and without an empty class.
COUNTS = {"tail": [100_000, 20_000, 700, 30, 2, 1],
          "empty": [100_000, 5_000, 60, 3, 1, 0],
          "uniform": [9, 9, 9, 9, 9, 9]}
TAUS = [0.0, 0.5, 1.0, 2.0]


def reference_adjustment(scores, counts, tau):
  """`f - tau log pi`, pi = n / sum n, an empty class counted as one."""
  n = np.maximum(np.asarray(counts, np.float64), 1.0)
  return np.asarray(scores, np.float64) - tau * np.log(n / n.sum())


def reference_tau_norm(x, W, tau):
  """`x . w_j / ||w_j||^tau`, no bias; a zero row stays zero."""
  W = np.asarray(W, np.float64)
  norms = np.linalg.norm(W, axis=1, keepdims=True)
  scaled = np.where(norms > 0, W / np.where(norms > 0, norms, 1.0) ** tau,
                    0.0)
  return np.asarray(x, np.float64) @ scaled.T


@pytest.mark.parametrize("counts", COUNTS.values(), ids=COUNTS.keys())
@pytest.mark.parametrize("tau", TAUS)
def test_logit_adjustment_matches_the_reference(counts, tau):
  rng = np.random.default_rng(0)
  scores = (rng.normal(size=(N, C)) * 4).astype(np.float32)
  got = posthoc.adjust_logits(tf.constant(scores), counts, tau).numpy()
  want = reference_adjustment(scores, counts, tau)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-5)
  # The reference's argmax, wherever its top two are not within float32
  # rounding of each other.
  top2 = np.sort(want, axis=1)[:, -2:]
  clear = top2[:, 1] - top2[:, 0] > 1e-4
  np.testing.assert_array_equal(got.argmax(1)[clear], want.argmax(1)[clear])
  assert np.all(np.isfinite(got))


def test_tau_zero_adjustment_is_no_adjustment_exactly():
  rng = np.random.default_rng(1)
  scores = tf.constant(rng.normal(size=(N, C)).astype(np.float32) * 1e3)
  for counts in COUNTS.values():
    np.testing.assert_array_equal(
        posthoc.adjust_logits(scores, counts, 0.0).numpy(), scores.numpy())
    fix = posthoc.PostHoc(logit_adjustment=0.0, class_counts=tuple(counts))
    np.testing.assert_array_equal(fix(None, scores).numpy(), scores.numpy())


def test_adjustment_breaks_ties_towards_rarer_classes():
  counts = COUNTS["empty"]
  scores = tf.zeros([3, C])
  shifted = posthoc.adjust_logits(scores, counts, 1.0).numpy()
  # Equal logits: the rarest classes win; the empty class and the
  # single-example class get the same (largest) boost, so they tie.
  assert shifted[0, 4] == shifted[0, 5] == shifted[0].max()
  assert np.all(np.diff(shifted[0, :5]) > 0)
  assert shifted[0, 5] == pytest.approx(np.log(sum(counts) + 1), rel=1e-6)
  # A class with a single example against 1e5: a logit lead of
  # log(1e5) - eps keeps the big class, log(1e5) + eps loses it.
  lead = np.log(100_000.0)
  for margin, winner in ((-0.01, 4), (0.01, 0)):
    row = np.full([1, C], -50.0, np.float32)
    row[0, 0], row[0, 4] = lead + margin, 0.0
    got = posthoc.adjust_logits(tf.constant(row), counts, 1.0).numpy()
    assert got.argmax() == winner == reference_adjustment(
        row, counts, 1.0).argmax()


def test_counts_that_cannot_be_priors_are_refused():
  with pytest.raises(ValueError, match="all 0"):
    posthoc.adjust_logits(tf.zeros([1, 3]), [0, 0, 0], 1.0)
  with pytest.raises(ValueError, match="finite and >= 0"):
    posthoc.adjust_logits(tf.zeros([1, 3]), [1, -2, 3], 1.0)


def _softmax(W, b):
  head = heads.Softmax(num_classes=C, embedding_dim=D, use_bias=b is not None)
  set_linear(head, W, b, b is not None)
  return head


@pytest.mark.parametrize("tau", TAUS)
def test_tau_normalised_classifier_matches_the_reference(tau):
  rng = np.random.default_rng(2)
  # Rows of norms from 1e-3 to 1e2, as a long tail leaves them.
  W = rng.normal(size=(C, D)) * np.logspace(-3, 2, C)[:, None]
  x = rng.normal(size=(N, D)).astype(np.float32)
  head = _softmax(W, rng.normal(size=C))
  weights = posthoc.linear_classifier(head)
  got = posthoc.tau_normalized_logits(tf.constant(x), weights, tau).numpy()
  want = reference_tau_norm(x, W.astype(np.float32), tau)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  if tau == 1.0:
    np.testing.assert_allclose(
        np.linalg.norm(posthoc.tau_normalized(weights, 1.0).numpy(), axis=1),
        1.0, rtol=1e-6)


def test_tau_zero_is_the_unnormalised_classifier_without_bias():
  rng = np.random.default_rng(3)
  W, b = rng.normal(size=(C, D)), rng.normal(size=C) * 10
  x = tf.constant(rng.normal(size=(N, D)).astype(np.float32))
  with_bias, without = _softmax(W, b), _softmax(W, None)
  got = posthoc.tau_normalized_logits(
      x, posthoc.linear_classifier(with_bias), 0.0).numpy()
  np.testing.assert_array_equal(got, without(x).numpy())
  assert not np.allclose(got, with_bias(x).numpy())   # the bias is gone


def test_a_zero_weight_row_stays_zero():
  W = np.ones((C, D))
  W[2] = 0.0
  x = tf.ones([4, D])
  for tau in TAUS:
    got = posthoc.tau_normalized_logits(x, tf.constant(W, tf.float32),
                                        tau).numpy()
    assert np.all(np.isfinite(got)) and np.all(got[:, 2] == 0.0)


def test_center_loss_uses_its_classifier_not_its_centers():
  rng = np.random.default_rng(4)
  head = heads.CenterLoss(num_classes=C, embedding_dim=D)
  kernel = rng.normal(size=(D, C))
  head.classifier_kernel.assign(kernel.astype(np.float32))
  head.prototypes.assign(rng.normal(size=(C, D)).astype(np.float32))
  x = rng.normal(size=(N, D)).astype(np.float32)
  got = posthoc.tau_normalized_logits(
      tf.constant(x), posthoc.linear_classifier(head), 1.0).numpy()
  np.testing.assert_allclose(
      got, reference_tau_norm(x, kernel.T.astype(np.float32), 1.0),
      rtol=1e-5, atol=1e-5)


def test_the_heads_a_saved_model_holds_give_the_same_classifier(tmp_path):
  # eval.py --saved_model tau-normalises the loaded head's weights.
  rng = np.random.default_rng(5)
  module = tf.Module()
  module.softmax = _softmax(rng.normal(size=(C, D)), None)
  module.center = heads.CenterLoss(num_classes=C, embedding_dim=D, seed=3)
  tf.saved_model.save(module, str(tmp_path))
  loaded = tf.saved_model.load(str(tmp_path))
  for name in ("softmax", "center"):
    np.testing.assert_array_equal(
        posthoc.linear_classifier(getattr(loaded, name)).numpy(),
        posthoc.linear_classifier(getattr(module, name)).numpy())


def test_corrected_forward_changes_scores_and_predictions_only():
  rng = np.random.default_rng(6)
  counts = COUNTS["tail"]
  W = rng.normal(size=(C, D))
  head = _softmax(W, rng.normal(size=C))
  embeddings = tf.constant(rng.normal(size=(N, D)).astype(np.float32))

  def forward(images, labels):
    del images
    return {"embeddings": embeddings, "scores": head(embeddings),
            "predictions": head.predict(embeddings),
            "loss": head.loss(embeddings, labels)}

  both = posthoc.PostHoc(logit_adjustment=1.0, class_counts=tuple(counts),
                         tau_normalization=1.0, head=head)
  out = tf.function(corrected_forward(forward, both))(
      tf.zeros([N, 1]), tf.zeros([N], tf.int32))
  # Tau-normalisation first, then the adjustment of those logits.
  want = reference_adjustment(
      reference_tau_norm(embeddings.numpy(), W.astype(np.float32), 1.0),
      counts, 1.0)
  np.testing.assert_allclose(out["scores"].numpy(), want, rtol=1e-5,
                             atol=1e-4)
  np.testing.assert_array_equal(out["predictions"].numpy(),
                                out["scores"].numpy().argmax(1))
  np.testing.assert_array_equal(out["embeddings"].numpy(),
                                embeddings.numpy())
  assert "loss" not in out
  assert set(both.record()) == {"tau_normalization", "logit_adjustment"}
  assert both.record()["tau_normalization"]["bias"] == "dropped"
  assert not posthoc.PostHoc()
