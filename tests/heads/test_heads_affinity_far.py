"""Affinity and CFAL far from every prototype.

When every squared distance is beyond ~100 sigma, every affinity
exp(-||x - w||^2 / sigma) underflows to 0 in float32. Prediction must still
name the nearest class (it works from the distances), and the loss is what
the paper's formula gives there: the constant (C - 1) lambda (+ R_w), with
no gradient for the embedding (the documented decision in `Affinity`).
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

import cfal.heads as heads
from support import reference as ref

C, D, N = 5, 6, 10


def _far_batch(num_centers: int, distance: float, seed: int = 0):
  """Prototypes at unit scale; embeddings `distance` away along a direction
  pointing at a known prototype, so the nearest one is unambiguous."""
  rng = np.random.default_rng(seed)
  w = rng.normal(size=(C, num_centers, D)).astype(np.float32)
  nearest = rng.permutation(np.arange(N) % C)      # every class, not only 0
  k = rng.integers(0, num_centers, N)
  direction = w[nearest, k] / np.linalg.norm(w[nearest, k], axis=-1,
                                             keepdims=True)
  x = (w[nearest, k] + distance * direction).astype(np.float32)
  if num_centers == 1:
    w = w[:, 0]
  return x, w


@pytest.mark.parametrize("name", ["Affinity", "CFAL"])
@pytest.mark.parametrize("num_centers", [1, 3])
@pytest.mark.parametrize("sigma", [1e-2, 1.0, 130.0])
def test_predict_names_the_nearest_class_when_affinities_underflow(
    name, num_centers, sigma):
  # ||x - w||^2 / sigma >= 400 for every prototype: every exp(.) is 0.
  x, w = _far_batch(num_centers, distance=20.0 * np.sqrt(sigma) + 30.0)
  head = getattr(heads, name)(num_classes=C, embedding_dim=D,
                              num_centers=num_centers, sigma=sigma, seed=0)
  head.prototypes.assign(w)
  assert np.all(head(x).numpy() == 0.0)          # the premise: underflow
  sq = ref.affinity_sq_distances(x, w).min(-1)   # [N, C]
  want = np.argmin(sq, axis=-1)
  assert len(set(want)) > 1
  got = head.predict(tf.constant(x))
  assert got.dtype == tf.int32
  np.testing.assert_array_equal(got.numpy(), want)
  for wrap in (tf.function, lambda f: tf.function(f, jit_compile=True)):
    np.testing.assert_array_equal(wrap(head.predict)(tf.constant(x)), want)


@pytest.mark.parametrize("num_centers", [1, 3])
def test_predict_agrees_with_the_scores_where_they_do_not_underflow(
    num_centers):
  rng = np.random.default_rng(3)
  head = heads.Affinity(num_classes=C, embedding_dim=D,
                        num_centers=num_centers, sigma=4.0, seed=1)
  x = tf.constant(rng.normal(size=(64, D)).astype(np.float32))
  np.testing.assert_array_equal(
      head.predict(x), tf.argmax(head(x), axis=-1, output_type=tf.int32))


@pytest.mark.parametrize("spread_weight", [0.0, 1.0])
@pytest.mark.parametrize("name", ["Affinity", "CFAL"])
def test_far_loss_is_the_constant_hinge_without_embedding_gradient(
    name, spread_weight):
  """The documented decision: the paper's loss, kept exact. Far away every
  hinge is lambda, so the loss is (C - 1) lambda + R_w, the embedding gets
  no gradient and the prototypes only R_w's."""
  sigma, margin = 1.0, 0.75
  x, w = _far_batch(3, distance=40.0)
  kwargs = {"class_counts": [50, 20, 10, 5, 1]} if name == "CFAL" else {}
  head = getattr(heads, name)(num_classes=C, embedding_dim=D, num_centers=3,
                              sigma=sigma, margin=margin,
                              spread_weight=spread_weight, seed=0, **kwargs)
  head.prototypes.assign(w)
  y = tf.constant(np.arange(N) % C, tf.int32)
  xt = tf.constant(x)
  with tf.GradientTape(persistent=True) as tape:
    tape.watch(xt)
    loss = head.loss(xt, y)
    spread = spread_weight * head.spread()
  weights = np.ones(N)
  if name == "CFAL":   # (1 - d_y)^gamma = 1: only the class weight remains
    weights = ref.class_balanced_weights([50, 20, 10, 5, 1], 0.9999)[
        y.numpy()]
  want = weights * ((C - 1) * margin + spread_weight * ref.prototype_spread(w))
  np.testing.assert_allclose(loss, want, rtol=1e-5)
  np.testing.assert_array_equal(tape.gradient(loss, xt), np.zeros_like(x))
  g_w = tape.gradient(loss, head.prototypes)
  if spread_weight == 0:
    assert g_w is None or not np.any(tf.convert_to_tensor(g_w).numpy())
  else:
    np.testing.assert_allclose(
        tf.convert_to_tensor(g_w),
        weights.sum() * tape.gradient(spread, head.prototypes),
        rtol=1e-4, atol=1e-7)
