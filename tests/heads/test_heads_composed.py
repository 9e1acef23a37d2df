"""Heads composed from loss parts, against independent float64 references.

A class-balanced ArcFace, a focal CosFace, a class-weighted softmax and the
prototype-spread regulariser on non-affinity heads: loss values and the
gradients of sum(loss) (TensorFlow autodiff vs central finite differences
of `reference.py`), plus the hard cases: cos = +-1, a class with one
example next to one with 1e5, gamma 0 / 0.5 / 2, saturated softmax. And
the parts rebuild the heads that predate them: Focal is Softmax + parts,
CFAL is Affinity + parts.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from support import reference as ref
from cfal.heads import ClassWeights, FocalModulation, PrototypeSpread
from test_heads_reference import (C, D, N, affinity_case, assert_finite,
                                  check_grad, check_loss, linear_case,
                                  loss_and_grads, make_labels, margin_case,
                                  r32, to_np)

# A class with one example beside one with 1e5: weights 1e4 apart.
COUNTS = [100_000, 5_000, 60, 3, 1]
GAMMAS = [0.0, 0.5, 2.0]


def _margin_head(cls, scale, **parts):
  kwargs = {"ArcFace": {"margin": 0.5}, "CosFace": {"margin": 0.35}}[cls]
  return getattr(heads, cls)(num_classes=C, embedding_dim=D, scale=scale,
                             seed=0, **kwargs, **parts)


_MARGINS = {"ArcFace": (1.0, 0.5, 0.0), "CosFace": (1.0, 0.0, 0.35)}


def _check_margin_head(head, x, y, W, scale, m, weights=None, gamma=0.0,
                       spread_weight=0.0):
  """Values and x/W gradients of a composed margin head on smooth data."""
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])

  def f(xx=x, WW=W):
    return ref.composed_margin_loss(xx, y, WW, *m, scale=scale,
                                    class_weights=weights, gamma=gamma,
                                    spread_weight=spread_weight)

  want = f()
  check_loss(loss, want, atol=1e-5 * scale * max(1.0, np.max(weights)
                                                 if weights is not None
                                                 else 1.0))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-6),
             "dW")


# ---------------------------------------------------------------------------
# The references themselves.


def test_composed_reference_reduces_to_the_plain_losses():
  rng = np.random.default_rng(0)
  x, W, b = rng.normal(size=(N, D)), rng.normal(size=(C, D)), rng.normal(
      size=C)
  y = make_labels(rng)
  logits = ref.linear_logits(x, W, b)
  np.testing.assert_allclose(ref.composed_softmax_loss(logits, y),
                             ref.cross_entropy(logits, y), rtol=1e-14)
  a = rng.uniform(0.1, 2.0, C)
  np.testing.assert_allclose(
      ref.composed_linear_loss(x, y, W, b, class_weights=a, gamma=2.0),
      ref.focal_loss(x, y, W, b, gamma=2.0, alpha=a), rtol=1e-14)
  np.testing.assert_allclose(
      ref.composed_margin_loss(x, y, W, 1.0, 0.0, 0.35, 16.0),
      ref.combined_margin_loss(x, y, W, 1.0, 0.0, 0.35, 16.0), rtol=1e-14)
  # The penalty sits inside both factors.
  got = ref.composed_softmax_loss(logits, y, a, 0.5, penalty=3.0)
  p_y = ref.softmax(logits)[np.arange(N), y]
  np.testing.assert_allclose(
      got, a[y] * (1 - p_y) ** 0.5 * (-np.log(p_y) + 3.0), rtol=1e-12)


# ---------------------------------------------------------------------------
# Class-balanced ArcFace.


@pytest.mark.parametrize("beta", [0.9, 0.9999, 0.99999])
@pytest.mark.parametrize("case", ["random", "wide"])
@pytest.mark.parametrize("scale", [16.0, 64.0])
def test_class_balanced_arcface(case, beta, scale):
  m = _MARGINS["ArcFace"]
  x, y, W = margin_case(80, case, m)
  weights = ref.class_balanced_weights(COUNTS, beta)
  head = _margin_head("ArcFace", scale, class_weights=ClassWeights
                      .effective_number(COUNTS, beta))
  np.testing.assert_allclose(head.class_weights.values, weights, rtol=1e-12)
  _check_margin_head(head, x, y, W, scale, m, weights=weights)


# ---------------------------------------------------------------------------
# Focal CosFace.


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("case", ["random", "wide", "duplicates"])
@pytest.mark.parametrize("scale", [16.0, 64.0])
def test_focal_cosface(case, gamma, scale):
  m = _MARGINS["CosFace"]
  x, y, W = margin_case(81, case, m)
  head = _margin_head("CosFace", scale, focal=FocalModulation(gamma))
  _check_margin_head(head, x, y, W, scale, m, gamma=gamma)


@pytest.mark.parametrize("gamma", GAMMAS)
@pytest.mark.parametrize("cls", ["ArcFace", "CosFace"])
def test_composed_margin_heads_at_cos_plus_minus_one(cls, gamma):
  """cos = +1 (embedding on its prototype, p_y -> 1 at s = 64: the focal
  factor underflows) and cos = -1 (p_y -> 0): finite losses and
  gradients, values as the reference. As in the plain margin tests, the
  rows at |cos| = 1 get a loose value tolerance (their float32 angle is
  ~3.5e-4 rad uncertain) and no finite-difference gradient; the other rows
  are checked in full."""
  m, scale = _MARGINS[cls], 64.0
  rng = np.random.default_rng(82)
  W = r32(rng.normal(size=(C, D)))
  x = rng.normal(size=(N, D))
  y = make_labels(rng)
  x[0] = W[y[0]]
  x[1] = 3.0 * W[y[1]]
  x[2] = -0.5 * W[y[2]]
  x = r32(x)
  weights = ref.class_balanced_weights(COUNTS, 0.9999)
  head = _margin_head(cls, scale, focal=FocalModulation(gamma),
                      class_weights=ClassWeights.effective_number(COUNTS),
                      regularizers=[PrototypeSpread(0.5)])
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])
  assert_finite(loss, *grads, what=f"{cls} gamma={gamma}")

  def f(xx=x):
    return ref.composed_margin_loss(xx, y, W, *m, scale=scale,
                                    class_weights=weights, gamma=gamma,
                                    spread_weight=0.5)

  want = f()
  smooth = np.arange(3, N)
  check_loss(loss, want, atol=1e-5 * scale * weights.max(), rows=smooth)
  check_loss(loss, want, rtol=1e-2, atol=0.05 * scale / 16 * weights.max(),
             rows=np.arange(0, 3))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx (smooth rows)", rows=smooth)


# ---------------------------------------------------------------------------
# Class-weighted softmax.


@pytest.mark.parametrize("as_part", [True, False], ids=["part", "floats"])
@pytest.mark.parametrize("case", ["random", "zero_rows", "duplicates"])
def test_class_weighted_softmax(case, as_part):
  x, y, W, b = linear_case(83, case)
  weights = [0.25, 0.0, 1.0, 4.0, 1e4]        # a zero weight and a huge one
  head = heads.Softmax(num_classes=C, embedding_dim=D, seed=0,
                       class_weights=ClassWeights(weights) if as_part
                       else weights)
  head.prototypes.assign(W.astype(np.float32))
  head.bias.assign(b.astype(np.float32))
  variables = [head.prototypes, head.bias]
  loss, grads = loss_and_grads(head, x, y, variables)

  def f(xx=x, WW=W, bb=b):
    return ref.composed_linear_loss(xx, y, WW, bb, class_weights=weights)

  check_loss(loss, f())
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-5),
             "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-5),
             "dW")
  check_grad(grads[2], ref.numerical_grad(lambda v: f(bb=v).sum(), b, 1e-5),
             "db")
  zero = np.asarray(y) == 1
  assert np.all(to_np(loss)[zero] == 0.0)


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_weighted_softmax_saturated(gamma):
  """Logits ~ 40x larger: p_y is 1 to float32 precision on most rows, the
  back-propagated (1 - p)^gamma has an infinite derivative there for gamma
  < 1, and nothing may become NaN."""
  x, y, W, b = linear_case(84, "random")
  W = W * 40.0
  weights = ref.class_balanced_weights(COUNTS, 0.999)
  head = heads.Softmax(num_classes=C, embedding_dim=D, seed=0,
                       focal=FocalModulation(gamma),
                       class_weights=ClassWeights.effective_number(COUNTS,
                                                                   0.999))
  head.prototypes.assign(W.astype(np.float32))
  head.bias.assign(b.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes, head.bias])
  assert_finite(loss, *grads, what=f"gamma={gamma}")
  check_loss(loss, ref.composed_linear_loss(x, y, W, b, weights, gamma),
             rtol=1e-3, atol=1e-4)


# ---------------------------------------------------------------------------
# The prototype-spread regulariser on non-affinity heads.


@pytest.mark.parametrize("weight", [0.1, 2.0])
def test_prototype_spread_on_cosface_uses_unit_prototypes(weight):
  m, scale = _MARGINS["CosFace"], 16.0
  x, y, W = margin_case(85, "random", m)
  W = r32(W * np.array([0.5, 1.0, 2.0, 3.0, 0.2])[:, None])   # norms differ
  head = _margin_head("CosFace", scale, regularizers=[PrototypeSpread(weight)])
  _check_margin_head(head, x, y, W, scale, m, spread_weight=weight)


@pytest.mark.parametrize("weight", [0.1, 2.0])
def test_prototype_spread_on_softmax_uses_the_weight_rows(weight):
  x, y, W, b = linear_case(86, "random")
  head = heads.Softmax(num_classes=C, embedding_dim=D, seed=0,
                       regularizers=[PrototypeSpread(weight)])
  head.prototypes.assign(W.astype(np.float32))
  head.bias.assign(b.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])

  def f(WW=W):
    return ref.composed_linear_loss(x, y, WW, b, spread_weight=weight)

  check_loss(loss, f())
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-5),
             "dW")


@pytest.mark.parametrize("gamma", GAMMAS)
def test_everything_on_arcface(gamma):
  """Class-balanced, focal and regularised at once."""
  m, scale = _MARGINS["ArcFace"], 16.0
  x, y, W = margin_case(87, "wide", m)
  weights = ref.class_balanced_weights(COUNTS, 0.99)
  head = _margin_head("ArcFace", scale,
                      class_weights=ClassWeights.effective_number(COUNTS,
                                                                  0.99),
                      focal=FocalModulation(gamma),
                      regularizers=PrototypeSpread(0.3))
  _check_margin_head(head, x, y, W, scale, m, weights=weights, gamma=gamma,
                     spread_weight=0.3)


# ---------------------------------------------------------------------------
# The older heads are these compositions.


@pytest.mark.parametrize("gamma", GAMMAS)
def test_focal_is_softmax_with_parts(gamma):
  x, y, W, b = linear_case(88, "random")
  focal = heads.Focal(num_classes=C, embedding_dim=D, gamma=gamma,
                      class_counts=COUNTS, beta=0.999, seed=3)
  composed = heads.Softmax(
      num_classes=C, embedding_dim=D, seed=3, focal=FocalModulation(gamma),
      class_weights=ClassWeights.effective_number(COUNTS, 0.999))
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  np.testing.assert_array_equal(focal.loss(xt, yt), composed.loss(xt, yt))


@pytest.mark.parametrize("gamma", GAMMAS)
def test_cfal_is_affinity_with_parts(gamma):
  x, y, W, _ = affinity_case(89, "scaled", 4.0, 3)
  cfal = heads.CFAL(num_classes=C, embedding_dim=D, num_centers=3, sigma=4.0,
                    gamma=gamma, class_counts=COUNTS, beta=0.999, seed=3)
  composed = heads.Affinity(
      num_classes=C, embedding_dim=D, num_centers=3, sigma=4.0, seed=3,
      focal=FocalModulation(gamma, back_propagate=False),
      class_weights=ClassWeights.effective_number(COUNTS, 0.999))
  xt, yt = tf.constant(x, tf.float32), tf.constant(y)
  for head in (cfal, composed):
    head.prototypes.assign(W.astype(np.float32))
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(xt)
    losses = [cfal.loss(xt, yt), composed.loss(xt, yt)]
  np.testing.assert_array_equal(losses[0], losses[1])
  np.testing.assert_array_equal(tape.gradient(losses[0], xt),
                                tape.gradient(losses[1], xt))


def test_focal_modulation_back_propagation_switch():
  """Lin et al. differentiate (1 - p)^gamma; the CFAL authors do not."""
  log_p = tf.constant([-0.1, -1.0, -3.0])
  for back_propagate in (True, False):
    with tf.GradientTape() as tape:
      tape.watch(log_p)
      factor = FocalModulation(2.0, back_propagate=back_propagate)(log_p)
    want = np.expm1(log_p.numpy().astype(np.float64)) ** 2   # (1 - p)^2
    np.testing.assert_allclose(factor, want, rtol=1e-6)
    grad = tape.gradient(factor, log_p)
    if back_propagate:    # d/dlog p (1 - p)^2 = -2 (1 - p) p
      p = np.exp(log_p.numpy().astype(np.float64))
      np.testing.assert_allclose(grad, -2 * (1 - p) * p, rtol=1e-5)
    else:
      assert grad is None or not np.any(grad.numpy())


def test_focal_modulation_is_exact_near_p_one():
  """1 - p from -expm1(log p): for p = 1 - 1e-9 the float32 1 - exp(.)
  would be 0; the factor keeps its value."""
  log_p = tf.constant([np.log1p(-1e-9)], tf.float32)
  factor = FocalModulation(1.0)(log_p)
  np.testing.assert_allclose(factor, [1e-9], rtol=1e-5)
  assert float(1.0 - tf.exp(log_p)[0]) == 0.0


def test_all_zero_class_weights_are_refused():
  # Every loss would be 0 and nothing would train, silently.
  with pytest.raises(ValueError, match=r"are all 0: every loss would be 0"):
    heads.ClassWeights([0.0, 0.0, 0.0])
