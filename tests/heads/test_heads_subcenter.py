"""Sub-center ArcFace (Deng et al. 2020) against an independent float64
reference.

A class's cosine is the largest of its K sub-centers' and the target gets
ArcFace's angular margin (with the fallback beyond pi): loss values and
the gradients of sum(loss) with respect to the embeddings and the
sub-centers (TensorFlow autodiff vs central finite differences of
`reference.py`), scores, predictions and `prototype_points`. Hard cases:
target angles beyond pi - m (the fallback), an embedding on a sub-center,
a zero embedding, exact ties between sub-centers, per-class margins from
counts of 1e5 down to one example (and none). With K = 1 the head is
ArcFace, bit for bit; a class's gradient reaches its nearest sub-center
only.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from cfal.heads import build_head, registry
from support import reference as ref
from test_heads_count_margins import COUNTS
from test_heads_reference import (C, D, N, WIDE_ANGLES, _rotate_towards,
                                  assert_finite, assert_update_noop,
                                  check_grad, check_loss, check_predict,
                                  loss_and_grads, make_labels, r32, to_np)

K = 3
MARGIN = 0.5
POWER, FLOOR = 0.25, 0.1


def _margins(counts):
  """Each class's angular margin: MARGIN, or the dynamic margins of the
  counts (`ref.count_margins`)."""
  if counts is None:
    return np.full(C, MARGIN)
  return ref.count_margins(COUNTS[counts], MARGIN, POWER, FLOOR)


def _head(scale, counts=None, num_subcenters=K, **kwargs):
  if counts is not None:
    kwargs.update(class_counts=COUNTS[counts], margin_counts_power=POWER,
                  margin_floor_ratio=FLOOR)
  return heads.SubCenterArcFace(num_classes=C, embedding_dim=D, scale=scale,
                                margin=MARGIN, num_subcenters=num_subcenters,
                                seed=0, **kwargs)


def _fallback_rows(x, y, W, margins):
  cos = ref.subcenter_cosines(x, W)[np.arange(len(y)), y]
  return np.arccos(cos) + margins[y] > np.pi


def subcenter_case(seed, case, margins, k=K):
  """Data at least 1e-3 from the loss's non-smooth points
  (`ref.subcenter_kink_distance`). "wide": each class's sub-centers
  gather around one direction and the first rows sit at WIDE_ANGLES from
  their class's, several beyond pi - m (the fallback)."""
  for attempt in range(400):
    rng = np.random.default_rng(seed * 1000 + attempt)
    W = rng.normal(size=(C, k, D))
    x = rng.normal(size=(N, D))
    y = make_labels(rng)
    if case == "wide":
      centers = rng.normal(size=(C, D))
      W = centers[:, None, :] + 0.08 * rng.normal(size=(C, k, D))
      W *= rng.uniform(0.5, 2.0, size=(C, k, 1))
      for i, t in enumerate(WIDE_ANGLES):
        x[i] = _rotate_towards(centers[y[i]], t, rng, rng.uniform(0.5, 2))
    x, W = r32(x), r32(W)
    if ref.subcenter_kink_distance(x, y, W, margins) > 1e-3:
      if case != "wide" or _fallback_rows(x, y, W, margins).sum() >= 2:
        return x, y, W
  raise AssertionError("no smooth test point found")


def test_reference_subcenters():
  """The reference's own consistency: the max over sub-centers, K = 1 and
  duplicated sub-centers are ArcFace, one margin per class equal to all
  is the plain margin."""
  rng = np.random.default_rng(1)
  x, W = rng.normal(size=(N, D)), rng.normal(size=(C, K, D))
  y = make_labels(rng)
  every = ref.subcenter_all_cosines(x, W)
  for k in range(K):
    np.testing.assert_allclose(every[:, :, k], ref.cosines(x, W[:, k]),
                               rtol=1e-12)
  np.testing.assert_array_equal(ref.subcenter_cosines(x, W), every.max(-1))
  arcface = ref.combined_margin_loss(x, y, W[:, 0], 1.0, MARGIN, 0.0, 16.0)
  np.testing.assert_allclose(
      ref.subcenter_arcface_loss(x, y, W[:, :1], MARGIN, 16.0), arcface,
      rtol=1e-12)
  np.testing.assert_allclose(
      ref.subcenter_arcface_loss(x, y, np.repeat(W[:, :1], 3, axis=1),
                                 MARGIN, 16.0), arcface, rtol=1e-12)
  margins = _margins("tail")
  np.testing.assert_allclose(
      ref.subcenter_arcface_loss(x, y, W[:, :1], margins, 16.0),
      ref.per_class_margin_loss(x, y, W[:, 0], 1.0, margins, np.zeros(C),
                                16.0), rtol=1e-12)
  # Adding sub-centers only raises class cosines.
  assert np.all(ref.subcenter_cosines(x, W) >= ref.cosines(x, W[:, 0]))


@pytest.mark.parametrize("counts", [None, "tail", "empty"])
@pytest.mark.parametrize("case", ["random", "wide"])
@pytest.mark.parametrize("scale", [16.0, 64.0])
def test_subcenter_arcface(scale, case, counts):
  margins = _margins(counts)
  x, y, W = subcenter_case(31, case, margins)
  head = _head(scale, counts)
  np.testing.assert_allclose(head.class_margins()[0], margins, rtol=1e-12)
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])
  assert_finite(loss, *grads, what="SubCenterArcFace")

  def f(xx=x, WW=W):
    return ref.subcenter_arcface_loss(xx, y, WW, margins, scale)

  check_loss(loss, f(), atol=1e-5 * scale)
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx")
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-6),
             "dW")
  xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
  cos = ref.subcenter_cosines(x, W)
  for out in (head(xt), head(xt, yt), head(xt, training=True)):
    assert out.dtype == tf.float32 and out.shape == (N, C)
    np.testing.assert_allclose(to_np(out), scale * cos, atol=1e-5 * scale)
  np.testing.assert_allclose(
      to_np(head(xt, yt, training=True)),
      ref.subcenter_arcface_logits(x, y, W, margins, scale),
      atol=1e-5 * scale)
  np.testing.assert_allclose(to_np(head.subcenter_cosines(xt)),
                             ref.subcenter_all_cosines(x, W), atol=1e-6)
  check_predict(head.predict(xt), cos)
  assert_update_noop(head, x, y)


def test_degenerate_rows():
  """A zero embedding (every cosine 0: the K sub-centers tie), an
  embedding exactly on a sub-center and on a multiple of one (cos = +1),
  with per-class margins. As in the ArcFace tests, those rows get a loose
  value tolerance (their float32 angle is ~3.5e-4 rad uncertain) and
  only finite gradients; the other rows are compared in full."""
  scale, margins = 64.0, _margins("empty")
  x, y, W = subcenter_case(32, "random", margins)
  x[0] = 0.0
  x[1] = W[y[1], 1]
  x[2] = 2.5 * W[y[2], 2]
  head = _head(scale, "empty")
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])
  assert_finite(loss, *grads, what="SubCenterArcFace degenerate rows")

  def f(xx=x):
    return ref.subcenter_arcface_loss(xx, y, W, margins, scale)

  want, smooth = f(), np.arange(3, N)
  check_loss(loss, want, atol=1e-5 * scale, rows=np.r_[0, smooth])
  check_loss(loss, want, rtol=1e-2, atol=0.05 * scale / 16,
             rows=np.array([1, 2]))
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx (smooth rows)", rows=smooth)
  xt = tf.constant(x, tf.float32)
  scores = to_np(head(xt))
  assert np.all(scores[0] == 0.0)
  assert scores[1, y[1]] == pytest.approx(scale, abs=1e-5 * scale)
  assert scores[2, y[2]] == pytest.approx(scale, abs=1e-5 * scale)
  np.testing.assert_array_equal(head.predict(xt).numpy()[1:3], y[1:3])


def test_an_exact_tie_shares_the_gradient():
  """x equally near two sub-centers of its class (mirror images across a
  coordinate where x is 0, so their float32 cosines are bitwise equal):
  the loss is not differentiable there; the head gives the mean of the
  gradients it has with either sub-center alone (a subgradient), and the
  class's third, farther sub-center nothing."""
  scale, margins = 16.0, _margins("tail")
  rng = np.random.default_rng(33)
  W = rng.normal(size=(C, K, D))
  x = rng.normal(size=(1, D))
  y = np.array([2], np.int32)
  x[0, 3] = 0.0
  W[2, 0] = _rotate_towards(x[0], 0.6, rng, 1.3)
  W[2, 1] = W[2, 0]
  W[2, 1, 3] = -W[2, 0, 3]
  W[2, 2] = _rotate_towards(x[0], 1.5, rng, 0.8)
  x, W = r32(x), r32(W)
  head = _head(scale, "tail")
  head.prototypes.assign(W.astype(np.float32))
  every = to_np(head.subcenter_cosines(tf.constant(x, tf.float32)))
  assert every[0, 2, 0] == every[0, 2, 1] > every[0, 2, 2]
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])

  # One tied sub-center alone: the other turned away, so it is never the
  # largest near x and its finite-difference gradient is 0.
  away = r32(-x[0] / np.linalg.norm(x[0]))
  wants = []
  for keep, drop in ((0, 1), (1, 0)):
    Wk = W.copy()
    Wk[2, drop] = away
    assert ref.subcenter_kink_distance(x, y, Wk, margins) > 1e-3

    def f(xx=x, WW=Wk):
      return ref.subcenter_arcface_loss(xx, y, WW, margins, scale).sum()

    gx = ref.numerical_grad(lambda v: f(xx=v), x, 1e-6)
    gW = ref.numerical_grad(lambda v: f(WW=v), Wk, 1e-6)
    assert not gW[2, drop].any()
    check_loss(loss, ref.subcenter_arcface_loss(x, y, Wk, margins, scale),
               atol=1e-5 * scale)
    wants.append((gx, gW))
  check_grad(grads[0], (wants[0][0] + wants[1][0]) / 2, "dx at a tie")
  check_grad(grads[1], (wants[0][1] + wants[1][1]) / 2, "dW at a tie")
  got = to_np(grads[1])
  assert not got[2, 2].any()
  assert np.abs(got[2, 0]).max() > 1e-3 and np.abs(got[2, 1]).max() > 1e-3


def test_duplicated_subcenters_share_the_gradient_equally():
  """Every class's sub-centers 0 and 1 identical: every example ties. The
  values and x-gradients are those of the head without the copy, and the
  two copies share that head's gradient half and half, bit for bit."""
  scale, margins = 16.0, _margins(None)
  x, y, W2 = subcenter_case(34, "random", margins, k=2)
  W = np.concatenate([W2[:, :1], W2], axis=1)   # copies 0 and 1
  head = _head(scale)
  head.prototypes.assign(W.astype(np.float32))
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])

  def f(xx=x, WW=W2):
    return ref.subcenter_arcface_loss(xx, y, WW, margins, scale)

  check_loss(loss, f(), atol=1e-5 * scale)
  check_grad(grads[0], ref.numerical_grad(lambda v: f(xx=v).sum(), x, 1e-6),
             "dx")
  gW = ref.numerical_grad(lambda v: f(WW=v).sum(), W2, 1e-6)
  want = np.concatenate([gW[:, :1] / 2, gW[:, :1] / 2, gW[:, 1:]], axis=1)
  check_grad(grads[1], want, "dW")
  got = to_np(grads[1])
  np.testing.assert_array_equal(got[:, 0], got[:, 1])


def test_gradient_reaches_only_the_nearest_subcenter_of_each_class():
  """One example's loss moves, in every class, only the sub-center it is
  nearest to: the target class's (pulled, by the margin logit) and each
  other class's (pushed, by its logit); every other sub-center gets an
  exact 0."""
  scale, margins = 16.0, _margins(None)
  x, y, W = subcenter_case(35, "random", margins)
  head = _head(scale)
  head.prototypes.assign(W.astype(np.float32))
  nearest = ref.subcenter_all_cosines(x, W).argmax(-1)   # [N, C]
  xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
  for i in range(N):
    with tf.GradientTape() as tape:
      loss = head.loss(xt, yt)[i]
    got = tape.gradient(loss, head.prototypes).numpy()
    for c in range(C):
      for k in range(K):
        norm = np.abs(got[c, k]).max()
        if k == nearest[i, c]:
          assert norm > 0.0, (i, c, k)
        else:
          assert norm == 0.0, (i, c, k, got[c, k])
    want = ref.numerical_grad(
        lambda v, i=i: ref.subcenter_arcface_loss(x[i:i + 1], y[i:i + 1], v,
                                                  margins, scale).sum(),
        W, 1e-6)
    check_grad(got, want, f"dW of example {i}")
    # The target's sub-center is pulled towards x: moving it along the
    # negative gradient raises the cosine.
    target = got[y[i], nearest[i, y[i]]]
    assert target @ x[i] < 0.0


@pytest.mark.parametrize("counts", [None, "tail"])
def test_one_subcenter_is_arcface_exactly(counts):
  """K = 1 and ArcFace with the same prototypes: the same values and
  gradients, bit for bit (fallback rows included)."""
  scale, margins = 64.0, _margins(counts)
  x, y, W = subcenter_case(36, "wide", margins, k=1)
  kwargs = {}
  if counts is not None:
    kwargs = dict(class_counts=COUNTS[counts], margin_counts_power=POWER,
                  margin_floor_ratio=FLOOR)
  arcface = heads.ArcFace(num_classes=C, embedding_dim=D, scale=scale,
                          margin=MARGIN, seed=0, **kwargs)
  sub = _head(scale, counts, num_subcenters=1)
  assert tuple(sub.prototypes.shape) == (C, 1, D)
  arcface.prototypes.assign(W[:, 0].astype(np.float32))
  sub.prototypes.assign(W.astype(np.float32))
  a_loss, a_grads = loss_and_grads(arcface, x, y, [arcface.prototypes])
  s_loss, s_grads = loss_and_grads(sub, x, y, [sub.prototypes])
  np.testing.assert_array_equal(s_loss, a_loss)
  np.testing.assert_array_equal(s_grads[0], a_grads[0])
  np.testing.assert_array_equal(s_grads[1].numpy()[:, 0], a_grads[1])
  xt, yt = tf.constant(x, tf.float32), tf.constant(y, tf.int32)
  np.testing.assert_array_equal(sub(xt), arcface(xt))
  np.testing.assert_array_equal(sub(xt, yt, training=True),
                                arcface(xt, yt, training=True))
  np.testing.assert_array_equal(sub.predict(xt), arcface.predict(xt))
  np.testing.assert_array_equal(sub.prototype_points(),
                                arcface.prototype_points())
  assert _fallback_rows(x, y, W, margins).any()


def test_prototype_points_are_every_unit_subcenter_and_spread_uses_them():
  """`prototype_points()` is the C * K unit sub-centers, class by class;
  the prototype-spread regulariser acts on all of them."""
  scale, margins, weight = 16.0, _margins(None), 0.5
  x, y, W = subcenter_case(37, "random", margins)
  head = build_head("subcenter_arcface", num_classes=C, embedding_dim=D,
                    seed=0, scale=str(scale), spread_weight=str(weight))
  assert head.num_subcenters == K and tuple(head.prototypes.shape) == (
      C, K, D)
  head.prototypes.assign(W.astype(np.float32))
  points = to_np(head.prototype_points())
  assert points.shape == (C * K, D)
  np.testing.assert_allclose(points,
                             ref.l2_normalize_rows(W.reshape(C * K, D)),
                             atol=1e-6)
  loss, grads = loss_and_grads(head, x, y, [head.prototypes])

  def f(WW=W):
    penalty = weight * ref.prototype_spread(
        ref.l2_normalize_rows(WW.reshape(C * K, D)))
    return ref.composed_softmax_loss(
        ref.subcenter_arcface_logits(x, y, WW, margins, scale), y,
        penalty=penalty)

  check_loss(loss, f(), atol=1e-5 * scale)
  check_grad(grads[1], ref.numerical_grad(lambda v: f(WW=v).sum(), W, 1e-6),
             "dW with the spread")


def test_config_defaults_and_build_head():
  head = heads.SubCenterArcFace(num_classes=C, embedding_dim=D, seed=1)
  assert head.config() == {"num_classes": C, "embedding_dim": D,
                           "scale": 64.0, "margin": 0.5,
                           "num_subcenters": 3}
  assert head.normalized_embeddings and head.embedding_metric == "cosine"
  tail = COUNTS["tail"]
  built = build_head("subcenter_arcface", num_classes=C, embedding_dim=D,
                     class_counts=tail, seed=1, num_subcenters="2",
                     margin="0.3", margin_counts_power="0.25")
  direct = heads.SubCenterArcFace(num_classes=C, embedding_dim=D, seed=1,
                                  num_subcenters=2, margin=0.3,
                                  class_counts=tail,
                                  margin_counts_power=0.25)
  assert built.config() == direct.config()
  assert built.config()["class_counts"] == tail
  np.testing.assert_array_equal(built.prototypes, direct.prototypes)
  x = tf.constant(np.random.default_rng(0).normal(size=(6, D)), tf.float32)
  y = tf.constant(np.arange(6) % C, tf.int32)
  np.testing.assert_array_equal(built.loss(x, y), direct.loss(x, y))


@pytest.mark.parametrize("kwargs, message", [
    ({"num_subcenters": 0}, "`num_subcenters` (0) must be in [1, inf]."),
    ({"num_subcenters": 2.5}, "`num_subcenters` must be an integer, got "
     "2.5."),
    ({"margin": 3.2}, "ArcFace `margin` (3.2) is an angle in radians and "
     "must be in [0, pi); 0.5 is the paper's value."),
    ({"margin_counts_power": 0.25}, "SubCenterArcFace needs `class_counts` "
     "(training examples per class) for per-class margins "
     "(margin_counts_power=0.25)."),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError) as error:
    heads.SubCenterArcFace(num_classes=C, embedding_dim=D, **kwargs)
  assert str(error.value) == message


@pytest.mark.parametrize("name, options, message", [
    ("subcenter_arcface", {"num_subcenters": "0"}, "--head=subcenter_arcface: "
     "`num_subcenters` (0) must be in [1, inf]."),
    ("subcenter_arcface", {"sigma": "2"}, "--head=subcenter_arcface takes no "
     "sigma; it takes scale, margin, num_subcenters, margin_counts_power, "
     "margin_floor_ratio, class_weighting, class_weights, beta, gamma, "
     "spread_weight."),
    ("arcface", {"num_subcenters": "3"}, "--head=arcface takes no "
     "num_subcenters; it takes scale, margin, margin_counts_power, "
     "margin_floor_ratio, class_weighting, class_weights, beta, gamma, "
     "spread_weight."),
])
def test_registry_messages(name, options, message):
  with pytest.raises(ValueError) as error:
    registry.check_head_options(name, options)
  assert str(error.value) == message
