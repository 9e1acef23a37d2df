"""Per-class margins from the class counts, against float64 references.

ArcFace / CosFace / CombinedMargin with `margin_counts_power` (lambda) and
`margin_floor_ratio` (rho): class c's additive margins are scaled by
`rho + (1 - rho) (n_min / n_c)^lambda`, i.e. `m_c = a n_c^(-lambda) + b`,
the dynamic margins of Ha et al. (Google Landmark Recognition 2020). Loss
values and the gradients of sum(loss) (TensorFlow autodiff vs central
finite differences of `reference.py`), scores, predictions, arguments and
`build_head`. Hard cases: one example beside 1e5, a class with none, the
ArcFace fallback at each class's own margin.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import ClassWeights, build_head
from support import reference as ref
from test_heads_reference import (C, D, N, WIDE_ANGLES, _rotate_towards,
                                  assert_finite, assert_update_noop,
                                  check_grad, check_loss, check_predict,
                                  loss_and_grads, make_labels, margin_case,
                                  r32, to_np)

# One example beside 1e5; the same with an empty class; no imbalance.
COUNTS = {"tail": [100_000, 5_000, 60, 3, 1],
          "empty": [100_000, 2_000, 30, 1, 0],
          "uniform": [7, 7, 7, 7, 7]}


def test_reference_count_margins():
  counts = np.array(COUNTS["tail"], float)
  margins = ref.count_margins(counts, 0.4, 0.25)
  assert margins.max() == pytest.approx(0.4) and np.argmax(margins) == 4
  np.testing.assert_allclose(margins[0] / margins[1],
                             (counts[1] / counts[0]) ** 0.25, rtol=1e-12)
  np.testing.assert_allclose(ref.count_margins([1, 16], 0.5, 0.25, 0.1),
                             [0.5, 0.45 / 2 + 0.05], rtol=1e-12)
  np.testing.assert_allclose(ref.count_margins([16, 1, 0], 0.5, 0.25),
                             [0.25, 0.5, 0.5], rtol=1e-12)
  np.testing.assert_allclose(ref.count_margins(counts, 0.5, 0.0, 0.3), 0.5)
  # One margin for every class: the plain combined margin.
  rng = np.random.default_rng(1)
  x, W = rng.normal(size=(N, D)), rng.normal(size=(C, D))
  y = make_labels(rng)
  np.testing.assert_allclose(
      ref.per_class_margin_loss(x, y, W, 1.0, np.full(C, 0.5), np.zeros(C),
                                16.0),
      ref.combined_margin_loss(x, y, W, 1.0, 0.5, 0.0, 16.0), rtol=1e-12)
  np.testing.assert_allclose(
      ref.per_class_margin_loss(x, y, W, 1.2, np.full(C, 0.1),
                                np.full(C, 0.05), 16.0),
      ref.combined_margin_loss(x, y, W, 1.2, 0.1, 0.05, 16.0), rtol=1e-12)


def _check_margin_head(head, x, y, W, scale, loss_fn, logits_fn):
  """Values, x/W gradients, scores and predictions on smooth data."""
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])
  assert_finite(loss, *grads, what=type(head).__name__)
  check_loss(loss, loss_fn(x, W), atol=1e-5 * scale)
  check_grad(grads[0], ref.numerical_grad(
      lambda v: loss_fn(v, W).sum(), x, 1e-6), "dx")
  check_grad(grads[1], ref.numerical_grad(
      lambda v: loss_fn(x, v).sum(), W, 1e-6), "dW")
  xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
  for out in (head(xt), head(xt, yt), head(xt, training=True)):
    np.testing.assert_allclose(to_np(out), scale * ref.cosines(x, W),
                               atol=1e-5 * scale)
  np.testing.assert_allclose(to_np(head(xt, yt, training=True)),
                             logits_fn(x, W), atol=1e-5 * scale)
  check_predict(head.predict(xt), ref.cosines(x, W))
  assert_update_noop(head, x, y)


def _count_margin_case(seed, case, m1, m2_c):
  """Data at least 1e-3 from the non-smooth points of each example's own
  margins: |cos_y| = 1, and for m1 = 1 the fallback switch theta_y + m2_y
  = pi."""
  for attempt in range(400):
    rng = np.random.default_rng(seed * 1000 + attempt)
    W = rng.normal(size=(C, D))
    x = rng.normal(size=(N, D))
    y = make_labels(rng)
    if case == "wide":
      for i, t in enumerate(WIDE_ANGLES):
        x[i] = _rotate_towards(W[y[i]], t, rng, rng.uniform(0.5, 2))
    x, W = r32(x), r32(W)
    cos = ref.cosines(x, W)[np.arange(N), y]
    distance = 1.0 - np.abs(cos)
    if m1 == 1.0:
      distance = np.minimum(distance,
                            np.abs(np.arccos(cos) + m2_c[y] - np.pi))
    if distance.min() > 1e-3:
      return x, y, W
  raise AssertionError("no smooth test point found")


# (class, kwargs, m1, m2, m3): the margins the counts scale.
COUNT_MARGIN_SPECS = {
    "arcface": ("ArcFace", {"margin": 0.5}, 1.0, 0.5, 0.0),
    "cosface": ("CosFace", {"margin": 0.35}, 1.0, 0.0, 0.35),
    "combined": ("CombinedMargin", {"m1": 1.0, "m2": 0.3, "m3": 0.2},
                 1.0, 0.3, 0.2),
    "combined_m1": ("CombinedMargin", {"m1": 1.2, "m2": 0.1, "m3": 0.05},
                    1.2, 0.1, 0.05),
}


@pytest.mark.parametrize("power, floor", [(0.25, 0.0), (0.25, 0.1),
                                          (1.0, 0.5)])
@pytest.mark.parametrize("case", ["random", "wide"])
@pytest.mark.parametrize("spec", sorted(COUNT_MARGIN_SPECS))
def test_count_margins(spec, case, power, floor):
  cls, kwargs, m1, m2, m3 = COUNT_MARGIN_SPECS[spec]
  n, scale = COUNTS["empty"], 16.0
  factor = ref.count_margins(n, 1.0, power, floor)   # margin 1: the factor
  m2_c, m3_c = m2 * factor, m3 * factor
  np.testing.assert_allclose(m2_c, ref.count_margins(n, m2, power, floor),
                             rtol=1e-12)
  x, y, W = _count_margin_case(97, case, m1, m2_c)
  head = getattr(heads, cls)(num_classes=C, embedding_dim=D, scale=scale,
                             class_counts=n, margin_counts_power=power,
                             margin_floor_ratio=floor, seed=0, **kwargs)
  got_m2, got_m3 = head.class_margins()
  np.testing.assert_allclose(got_m2, m2_c, rtol=1e-12)
  np.testing.assert_allclose(got_m3, m3_c, rtol=1e-12)
  _check_margin_head(
      head, x, y, W, scale,
      lambda xx, WW: ref.per_class_margin_loss(xx, y, WW, m1, m2_c, m3_c,
                                               scale),
      lambda xx, WW: ref.per_class_margin_logits(xx, y, WW, m1, m2_c, m3_c,
                                                 scale))


def test_count_margins_power_zero_is_the_plain_head():
  x, y, W = margin_case(98, "wide", (1.0, 0.5, 0.0))
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  plain = heads.ArcFace(num_classes=C, embedding_dim=D, seed=1)
  counted = heads.ArcFace(num_classes=C, embedding_dim=D, seed=1,
                          class_counts=COUNTS["tail"])
  np.testing.assert_array_equal(plain.loss(xt, yt), counted.loss(xt, yt))
  assert plain.config() == counted.config() == {
      "num_classes": C, "embedding_dim": D, "scale": 64.0, "margin": 0.5}
  dynamic = heads.ArcFace(num_classes=C, embedding_dim=D, seed=1,
                          class_counts=COUNTS["tail"],
                          margin_counts_power=0.25, margin_floor_ratio=0.1)
  assert dynamic.config()["margin_counts_power"] == 0.25
  assert dynamic.config()["class_counts"] == COUNTS["tail"]


@pytest.mark.parametrize("cls, kwargs, message", [
    (heads.ArcFace, {"margin_counts_power": 0.25}, "ArcFace needs "
     "`class_counts` (training examples per class) for per-class margins "
     "(margin_counts_power=0.25)."),
    (heads.ArcFace, {"margin_floor_ratio": 0.1}, "`margin_floor_ratio` (0.1) "
     "only acts on per-class margins; set `margin_counts_power` > 0 or drop "
     "it."),
    (heads.CosFace, {"class_counts": [3, 2, 1], "margin_counts_power": 1.0},
     "`class_counts` has 3 entries but `num_classes` is 5."),
    (heads.CosFace, {"class_counts": [3, 2, np.nan, 1, 1],
                     "margin_counts_power": 1.0},
     "`class_counts` must be finite and >= 0 for every class."),
    (heads.CombinedMargin, {"class_counts": [3, 2, -1, 1, 1], "m3": 0.2,
                            "margin_counts_power": 1.0},
     "`class_counts` must be finite and >= 0 for every class."),
    (heads.ArcFace, {"class_counts": [0] * 5, "margin_counts_power": 1.0},
     "`class_counts` are all 0: there is no training data to take priors "
     "or margins from."),
])
def test_bad_arguments(cls, kwargs, message):
  with pytest.raises(ValueError) as error:
    cls(num_classes=C, embedding_dim=D, **kwargs)
  assert str(error.value) == message


def _same(a, b):
  b.prototypes.assign(a.prototypes)
  rng = np.random.default_rng(0)
  x = tf.constant(rng.normal(size=(10, D)).astype(np.float32))
  y = tf.constant(np.arange(10) % C, tf.int32)
  np.testing.assert_array_equal(a.loss(x, y), b.loss(x, y))
  assert a.config() == b.config()


def test_build_head_gives_the_counts_and_weights_stay_a_part():
  tail = COUNTS["tail"]
  built = build_head("arcface", num_classes=C, embedding_dim=D,
                     class_counts=tail, seed=1, margin_counts_power="0.25",
                     margin_floor_ratio="0.1",
                     class_weighting="effective_number")
  _same(built, heads.ArcFace(
      num_classes=C, embedding_dim=D, seed=1, class_counts=tail,
      margin_counts_power=0.25, margin_floor_ratio=0.1,
      class_weights=ClassWeights.effective_number(tail, 0.9999)))
  built = build_head("combined_margin", num_classes=C, embedding_dim=D,
                     class_counts=COUNTS["empty"], seed=1, m2=0.2, m3=0.1,
                     margin_counts_power=1, class_weighting="none")
  assert built.class_weights is None
  np.testing.assert_allclose(built.class_margins()[1],
                             ref.count_margins(COUNTS["empty"], 0.1, 1.0))


@pytest.mark.parametrize("name, options, counts, message", [
    ("arcface", {"margin_counts_power": 0.25}, None, "--head=arcface: "
     "ArcFace needs `class_counts` (training examples per class) for "
     "per-class margins (margin_counts_power=0.25)."),
    ("cosface", {"margin_floor_ratio": 0.2}, COUNTS["tail"],
     "--head=cosface: `margin_floor_ratio` (0.2) only acts on per-class "
     "margins; set `margin_counts_power` > 0 or drop it."),
    ("arcface", {"margin_floor_ratio": 1.5}, COUNTS["tail"],
     "--head=arcface: `margin_floor_ratio` (1.5) must be in [0, 1]."),
    ("cosface", {"margin_counts_power": "-1"}, COUNTS["tail"],
     "--head=cosface: `margin_counts_power` (-1) must be in [0, inf]."),
])
def test_build_head_messages(name, options, counts, message):
  with pytest.raises(ValueError) as error:
    build_head(name, num_classes=C, embedding_dim=D, class_counts=counts,
               **options)
  assert str(error.value) == message
