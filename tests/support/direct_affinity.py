"""The direct (authors') formulation of the affinity terms, for checking.

This materialises the `[N, C, m, D]` difference tensor for the distances and
the `[M, M, D]` one for the spread regulariser, exactly as the formula reads.
It exists only to test `cfal.heads.Affinity` against and to measure what the
direct form costs; the library never uses it.
"""

from __future__ import annotations

import tensorflow as tf


def direct_similarities(embeddings, prototypes, sigma):
  """d_ij = max_k exp(-||x_i - w_jk||^2 / sigma) via [N, C, m, D]."""
  w = prototypes if prototypes.shape.rank == 3 else prototypes[:, None, :]
  diff = embeddings[:, None, None, :] - w[None]            # [N, C, m, D]
  return tf.reduce_max(tf.exp(-tf.reduce_sum(tf.square(diff), -1) / sigma),
                       axis=-1)


def direct_spread(prototypes):
  """Variance of ||w_a - w_b||^2 over pairs a < b via [M, M, D]."""
  w = tf.reshape(prototypes, [-1, prototypes.shape[-1]])
  m = w.shape[0]
  sq = tf.reduce_sum(tf.square(w[:, None, :] - w[None, :, :]), -1)  # [M, M]
  upper = tf.linalg.band_part(tf.ones_like(sq), 0, -1) - tf.eye(m, dtype=sq.dtype)
  pairs = m * (m - 1) / 2
  mean = tf.reduce_sum(sq * upper) / pairs
  return tf.reduce_sum(tf.square(sq - mean) * upper) / pairs


def direct_affinity_loss(embeddings, labels, prototypes, sigma, margin,
                         spread_weight=1.0):
  """Per-example L_mm + spread_weight * R_w, the direct way."""
  d = direct_similarities(embeddings, prototypes, sigma)
  onehot = tf.one_hot(labels, d.shape[-1], dtype=d.dtype)
  d_y = tf.reduce_sum(d * onehot, -1, keepdims=True)
  l_mm = tf.reduce_sum(tf.nn.relu(margin + d - d_y) * (1 - onehot), -1)
  return l_mm + spread_weight * direct_spread(prototypes)
