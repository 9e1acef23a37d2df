"""LDAM (Cao et al. 2019) against an independent float64 reference.

Cosine logits with the target's margin `Delta_y = K / n_y^(1/4)`, the
largest (the rarest class's) `max_margin`: loss values and the gradients
of sum(loss) (TensorFlow autodiff vs central finite differences of
`reference.py`), scores, predictions, arguments and `build_head`. Hard
cases: one example beside 1e5, a class with none, cos = +-1 and a zero
embedding.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import FocalModulation, build_head
from support import reference as ref
from test_heads_count_margins import COUNTS, _check_margin_head, _same
from test_heads_reference import (C, D, N, assert_finite, check_grad,
                                  check_loss, loss_and_grads, make_labels,
                                  margin_case, r32)


def test_reference_ldam_margins():
  np.testing.assert_allclose(ref.ldam_margins([16, 1], 0.5), [0.25, 0.5])
  np.testing.assert_allclose(ref.ldam_margins([10_000, 1, 0], 0.5),
                             [0.05, 0.5, 0.5])
  counts = np.array(COUNTS["tail"], float)
  delta = ref.ldam_margins(counts, 0.4)
  assert delta.max() == pytest.approx(0.4) and np.argmax(delta) == 4
  np.testing.assert_allclose(delta[0] / delta[1], (counts[1] / counts[0])
                             ** 0.25, rtol=1e-12)
  # The dynamic margins a n^-lambda + b with b = 0, lambda = 1/4.
  np.testing.assert_allclose(ref.count_margins(counts, 0.4, 0.25),
                             delta, rtol=1e-12)
  # Equal counts: LDAM is CosFace with margin max_margin.
  rng = np.random.default_rng(1)
  x, W = rng.normal(size=(N, D)), rng.normal(size=(C, D))
  y = make_labels(rng)
  np.testing.assert_allclose(
      ref.ldam_loss(x, y, W, COUNTS["uniform"], 0.3, 16.0),
      ref.combined_margin_loss(x, y, W, 1.0, 0.0, 0.3, 16.0), rtol=1e-12)


@pytest.mark.parametrize("counts", ["tail", "empty", "uniform"])
@pytest.mark.parametrize("case", ["random", "wide", "duplicates"])
@pytest.mark.parametrize("scale", [16.0, 30.0])
def test_ldam(scale, case, counts):
  n, max_margin = COUNTS[counts], 0.5
  x, y, W = margin_case(94, case, (1.0, 0.0, max_margin))
  head = heads.LDAM(num_classes=C, embedding_dim=D, scale=scale,
                    max_margin=max_margin, class_counts=n, seed=0)
  np.testing.assert_allclose(head.class_margins()[1],
                             ref.ldam_margins(n, max_margin), rtol=1e-12)
  _check_margin_head(
      head, x, y, W, scale,
      lambda xx, WW: ref.ldam_loss(xx, y, WW, n, max_margin, scale),
      lambda xx, WW: ref.ldam_logits(xx, y, WW, n, max_margin, scale))


def test_ldam_at_cos_plus_minus_one():
  """cos = +1 (on the prototype, and a multiple of it), cos = -1 and a
  zero embedding: finite losses and gradients. As in the other margin
  tests, those rows get a loose value tolerance (their float32 angle is
  ~3.5e-4 rad uncertain) and no finite-difference gradient."""
  n, scale = COUNTS["tail"], 30.0
  rng = np.random.default_rng(95)
  W = r32(rng.normal(size=(C, D)))
  x = rng.normal(size=(N, D))
  y = make_labels(rng)
  x[0] = W[y[0]]
  x[1] = 3.0 * W[y[1]]
  x[2] = -0.5 * W[y[2]]
  x[3] = 0.0
  x = r32(x)
  head = heads.LDAM(num_classes=C, embedding_dim=D, scale=scale,
                    class_counts=n, focal=FocalModulation(0.5), seed=0)
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])
  assert_finite(loss, *grads, what="LDAM at |cos| = 1")

  def f(xx=x):
    return ref.composed_softmax_loss(
        ref.ldam_logits(xx, y, W, n, 0.5, scale), y, gamma=0.5)

  want, smooth = f(), np.arange(4, N)
  check_loss(loss, want, atol=1e-5 * scale, rows=smooth)
  check_loss(loss, want, rtol=1e-2, atol=0.05 * scale / 16,
             rows=np.arange(0, 4))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx (smooth rows)", rows=smooth)


def test_ldam_is_cosface_with_count_margins():
  n = COUNTS["empty"]
  x, y, W = margin_case(96, "random", (1.0, 0.0, 0.4))
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  ldam = heads.LDAM(num_classes=C, embedding_dim=D, max_margin=0.4,
                    class_counts=n, seed=2)
  cosface = heads.CosFace(num_classes=C, embedding_dim=D, scale=30.0,
                          margin=0.4, class_counts=n,
                          margin_counts_power=0.25, seed=2)
  np.testing.assert_array_equal(ldam.loss(xt, yt), cosface.loss(xt, yt))
  assert ldam.normalized_embeddings and ldam.embedding_metric == "cosine"
  # The empty class takes the largest margin and moves no other.
  without = heads.LDAM(num_classes=C - 1, embedding_dim=D, max_margin=0.4,
                       class_counts=n[:-1])
  np.testing.assert_allclose(ldam.class_margins()[1][:-1],
                             without.class_margins()[1], rtol=1e-15)
  assert ldam.class_margins()[1][-1] == 0.4
  assert ldam.config() == {"num_classes": C, "embedding_dim": D,
                           "scale": 30.0, "class_counts": n,
                           "max_margin": 0.4}


@pytest.mark.parametrize("kwargs, message", [
    ({}, "LDAM needs `class_counts` (training examples per class) for its "
     "margins."),
    ({"class_counts": [3, 2, 1]}, "`class_counts` has 3 entries but "
     "`num_classes` is 5."),
    ({"class_counts": [0] * 5}, "`class_counts` are all 0: there is no "
     "training data to take priors or margins from."),
    ({"max_margin": 2.5, "class_counts": [1] * 5},
     "`max_margin` (2.5) must be in [0, 2]."),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError) as error:
    heads.LDAM(num_classes=C, embedding_dim=D, **kwargs)
  assert str(error.value) == message


def test_build_head():
  n = COUNTS["empty"]
  built = build_head("ldam", num_classes=C, embedding_dim=D, class_counts=n,
                     seed=1, scale="16", max_margin="0.3")
  _same(built, heads.LDAM(num_classes=C, embedding_dim=D, seed=1, scale=16.0,
                          max_margin=0.3, class_counts=n))
  assert built.class_weights is None


@pytest.mark.parametrize("options, counts, message", [
    ({}, None, "--head=ldam: LDAM needs `class_counts` (training examples "
     "per class) for its margins."),
    ({"margin": 0.3}, COUNTS["tail"], "--head=ldam takes no margin; it "
     "takes scale, max_margin, class_weighting, class_weights, beta, gamma, "
     "spread_weight."),
    ({"max_margin": "-0.1"}, COUNTS["tail"], "--head=ldam: `max_margin` "
     "(-0.1) must be in [0, 2]."),
])
def test_build_head_messages(options, counts, message):
  with pytest.raises(ValueError) as error:
    build_head("ldam", num_classes=C, embedding_dim=D, class_counts=counts,
               **options)
  assert str(error.value) == message
