"""Logit adjustment and Balanced Softmax against float64 references.

LogitAdjusted (Menon et al. 2021) and BalancedSoftmax (Ren et al. 2020)
on a linear classifier: loss values and the gradients of sum(loss)
(TensorFlow autodiff vs central finite differences of `reference.py`),
unadjusted scores and predictions, composition with class weights and
focal modulation, arguments and `build_head`. Hard cases: one example
beside 1e5, a class with none, saturated softmax, zero embeddings.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import ClassWeights, FocalModulation, build_head
from support import reference as ref
from support.head_cases import set_linear
from test_heads_count_margins import _same
from test_heads_reference import (C, D, N, assert_finite, assert_update_noop,
                                  check_grad, check_loss, check_predict,
                                  linear_case, loss_and_grads, make_labels,
                                  to_np)

# One example beside 1e5; the same with an empty class; no imbalance.
COUNTS = {"tail": [100_000, 5_000, 60, 3, 1],
          "empty": [100_000, 2_000, 30, 1, 0],
          "uniform": [7, 7, 7, 7, 7]}
TAUS = [0.0, 0.5, 1.0, 2.0]
GAMMAS = [0.0, 0.5, 2.0]


def test_reference_logit_adjustment_forms():
  rng = np.random.default_rng(0)
  x, W, b = rng.normal(size=(N, D)), rng.normal(size=(C, D)), rng.normal(
      size=C)
  y = make_labels(rng)
  for counts in COUNTS.values():
    # tau = 1 is Ren et al.'s n_j e^{eta_j} / sum n_k e^{eta_k}.
    np.testing.assert_allclose(
        ref.logit_adjusted_loss(x, y, W, b, counts, 1.0),
        ref.balanced_softmax_loss(x, y, W, b, counts), rtol=1e-10)
    np.testing.assert_allclose(ref.logit_adjusted_loss(x, y, W, b, counts, 0),
                               ref.softmax_loss(x, y, W, b), rtol=1e-14)
  for tau in TAUS:   # equal priors change nothing
    np.testing.assert_allclose(
        ref.logit_adjusted_loss(x, y, W, b, COUNTS["uniform"], tau),
        ref.softmax_loss(x, y, W, b), rtol=1e-12)
  # Hand value: f = 0, counts (3, 1): the loss is -log pi_y.
  zero = np.zeros((2, 2))
  np.testing.assert_allclose(
      ref.logit_adjusted_loss(zero, [0, 1], np.zeros((2, 2)), None, [3, 1]),
      [-np.log(0.75), -np.log(0.25)], rtol=1e-14)


# ---------------------------------------------------------------------------
# Logit adjustment and Balanced Softmax.




def _check_linear_scores(head, x, y, W, b, counts, tau):
  """Unadjusted scores and predictions; adjusted logits only in training."""
  xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
  plain = ref.linear_logits(x, W, b)
  for out in (head(xt), head(xt, yt), head(xt, training=True)):
    assert out.dtype == tf.float32
    np.testing.assert_allclose(to_np(out), plain, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      to_np(head(xt, yt, training=True)),
      ref.logit_adjusted_logits(x, W, b, counts, tau), rtol=1e-5, atol=1e-5)
  check_predict(head.predict(xt), plain)
  assert_update_noop(head, x, y)


@pytest.mark.parametrize("counts", sorted(COUNTS))
@pytest.mark.parametrize("tau", TAUS)
@pytest.mark.parametrize("case", ["random", "zero_rows", "duplicates"])
def test_logit_adjusted(case, tau, counts):
  use_bias = case != "duplicates"
  n = COUNTS[counts]
  x, y, W, b = linear_case(90, case)
  bb = b if use_bias else None
  head = heads.LogitAdjusted(num_classes=C, embedding_dim=D, tau=tau,
                             class_counts=n, use_bias=use_bias, seed=0)
  variables = set_linear(head, W, b, use_bias)
  loss, grads = loss_and_grads(head, x, y, variables)

  def f(xx=x, WW=W, b_=bb):
    return ref.logit_adjusted_loss(xx, y, WW, b_, n, tau).sum()

  check_loss(loss, ref.logit_adjusted_loss(x, y, W, bb, n, tau))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-5), "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v), W, 1e-5), "dW")
  if use_bias:
    check_grad(grads[2], ref.numerical_grad(lambda v: f(b_=v), b, 1e-5),
               "db")
  _check_linear_scores(head, x, y, W, bb, n, tau)


@pytest.mark.parametrize("counts", ["tail", "empty"])
def test_balanced_softmax_is_ren_et_al(counts):
  n = COUNTS[counts]
  x, y, W, b = linear_case(91, "random")
  head = heads.BalancedSoftmax(num_classes=C, embedding_dim=D,
                               class_counts=n, seed=0)
  variables = set_linear(head, W, b, True)
  loss, grads = loss_and_grads(head, x, y, variables)

  def f(xx=x, WW=W, bb=b):
    return ref.balanced_softmax_loss(xx, y, WW, bb, n).sum()

  check_loss(loss, ref.balanced_softmax_loss(x, y, W, b, n))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v), x, 1e-5), "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v), W, 1e-5), "dW")
  check_grad(grads[2], ref.numerical_grad(lambda v: f(bb=v), b, 1e-5), "db")
  _check_linear_scores(head, x, y, W, b, n, 1.0)
  # Exactly LogitAdjusted with tau = 1.
  adjusted = heads.LogitAdjusted(num_classes=C, embedding_dim=D, tau=1.0,
                                 class_counts=n, seed=0)
  set_linear(adjusted, W, b, True)
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  np.testing.assert_array_equal(adjusted.loss(xt, yt), head.loss(xt, yt))
  assert head.tau == 1.0 and "tau" not in head.config()


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("case", ["random", "saturated"])
def test_logit_adjusted_with_class_weights_and_focal(case, gamma):
  """The parts act on the adjusted softmax: w_y (1 - p~_y)^gamma (-log
  p~_y), p~ = softmax(f + tau log pi). Saturated: logits 40x larger, p~_y
  is 1 to float32 precision on most rows (only finiteness of the
  gradient is asserted there)."""
  n, tau = COUNTS["empty"], 1.5
  x, y, W, b = linear_case(92, "random")
  if case == "saturated":
    W = W * 40.0
  weights = [0.25, 0.0, 1.0, 4.0, 1e4]           # a zero and a huge one
  head = heads.LogitAdjusted(num_classes=C, embedding_dim=D, tau=tau,
                             class_counts=n, seed=0,
                             class_weights=ClassWeights(weights),
                             focal=FocalModulation(gamma))
  variables = set_linear(head, W, b, True)
  loss, grads = loss_and_grads(head, x, y, variables)
  assert_finite(loss, *grads, what=f"gamma={gamma}")

  def f(xx=x, WW=W, bb=b):
    return ref.composed_softmax_loss(
        ref.logit_adjusted_logits(xx, WW, bb, n, tau), y, weights, gamma)

  if case == "saturated":
    check_loss(loss, f(), rtol=1e-3, atol=1e-4)
    return
  check_loss(loss, f())
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-5),
             "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-5),
             "dW")
  check_grad(grads[2], ref.numerical_grad(lambda v: f(bb=v).sum(), b, 1e-5),
             "db")


def test_logit_adjusted_empty_class_is_one_example():
  """Count 0 -> prior of one example: finite adjusted logits, the same
  loss as counts with 1 there (up to the softmax-invariant constant)."""
  x, y, W, b = linear_case(93, "random")
  y = np.where(y == 4, 0, y).astype(np.int32)     # class 4 is never a label
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  empty = heads.LogitAdjusted(num_classes=C, embedding_dim=D, tau=2.0,
                              class_counts=[50, 20, 5, 1, 0], seed=0)
  one = heads.LogitAdjusted(num_classes=C, embedding_dim=D, tau=2.0,
                            class_counts=[50, 20, 5, 1, 1], seed=0)
  assert np.all(np.isfinite(empty.log_priors))
  logits = to_np(empty(xt, yt, training=True))
  assert np.all(np.isfinite(logits))
  np.testing.assert_allclose(empty.loss(xt, yt), one.loss(xt, yt),
                             rtol=1e-6)
  with tf.GradientTape() as tape:
    tape.watch(xt)
    loss = tf.reduce_sum(empty.loss(xt, yt))
  assert_finite(*tape.gradient(loss, [xt] + list(empty.trainable_variables)),
                what="empty class")


@pytest.mark.parametrize("cls, kwargs, message", [
    (heads.LogitAdjusted, {}, "LogitAdjusted needs `class_counts` (training "
     "examples per class) for its class priors."),
    (heads.BalancedSoftmax, {}, "BalancedSoftmax needs `class_counts` "
     "(training examples per class) for its class priors."),
    (heads.LogitAdjusted, {"class_counts": [3, 2, -1, 1, 1]}, "`class_counts` "
     "must be finite and >= 0 for every class."),
    (heads.BalancedSoftmax, {"class_counts": [1, 2]}, "`class_counts` has 2 "
     "entries but `num_classes` is 5."),
    (heads.LogitAdjusted, {"class_counts": [0] * 5}, "`class_counts` are all "
     "0: there is no training data to take priors or margins from."),
    (heads.LogitAdjusted, {"tau": -1, "class_counts": [1] * 5},
     "`tau` (-1) must be in [0, inf]."),
])
def test_bad_arguments(cls, kwargs, message):
  with pytest.raises(ValueError) as error:
    cls(num_classes=C, embedding_dim=D, **kwargs)
  assert str(error.value) == message


def test_build_head_gives_the_counts_and_weights_stay_a_part():
  n = COUNTS["empty"]
  built = build_head("logit_adjusted", num_classes=C, embedding_dim=D,
                     class_counts=n, seed=1, tau="0.5")
  assert built.class_weights is None                 # auto: none here
  _same(built, heads.LogitAdjusted(num_classes=C, embedding_dim=D, seed=1,
                                   tau=0.5, class_counts=n))
  tail = COUNTS["tail"]
  built = build_head("logit_adjusted", num_classes=C, embedding_dim=D,
                     class_counts=tail, seed=1,
                     class_weighting="effective_number", beta=0.99, gamma=2)
  _same(built, heads.LogitAdjusted(
      num_classes=C, embedding_dim=D, seed=1, class_counts=tail,
      class_weights=ClassWeights.effective_number(tail, 0.99),
      focal=FocalModulation(2.0)))
  for weighting in ({"class_weighting": "none"},
                    {"class_weights": [1, 2, 3, 4, 5]}):
    built = build_head("balanced_softmax", num_classes=C, embedding_dim=D,
                       class_counts=n, **weighting)
    np.testing.assert_allclose(built.log_priors,
                               np.log(ref.class_priors(n)), rtol=1e-12)


@pytest.mark.parametrize("name, options, counts, message", [
    ("logit_adjusted", {}, None, "--head=logit_adjusted: LogitAdjusted needs "
     "`class_counts` (training examples per class) for its class priors."),
    ("balanced_softmax", {}, None, "--head=balanced_softmax: BalancedSoftmax "
     "needs `class_counts` (training examples per class) for its class "
     "priors."),
    ("logit_adjusted", {"beta": 0.99}, COUNTS["tail"],
     "--head=logit_adjusted: `beta` (0.99) sets effective-number class "
     "weights, which this head does not use here; add "
     "class_weighting=effective_number (with class counts) or drop it."),
    ("balanced_softmax", {"tau": 2}, COUNTS["tail"],
     "--head=balanced_softmax takes no tau; it takes use_bias, "
     "class_weighting, class_weights, beta, gamma, spread_weight."),
    ("logit_adjusted", {"tau": "-1"}, COUNTS["tail"],
     "--head=logit_adjusted: `tau` (-1) must be in [0, inf]."),
])
def test_build_head_messages(name, options, counts, message):
  with pytest.raises(ValueError) as error:
    build_head(name, num_classes=C, embedding_dim=D, class_counts=counts,
               **options)
  assert str(error.value) == message
