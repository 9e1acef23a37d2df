"""cfal.metrics.embedding.prototype_geometry against float64 hand
computations on generated points."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from cfal.metrics import prototype_geometry
from cfal.metrics.embedding import PROTOTYPE_QUANTITIES, prototype_offsets


def _by_hand(x, y, prototypes, metric, min_points=5):
  """Each prototype's quantities by the definitions, one number at a time.

  Returns `{(c, k): {"points": n, name: float or None}}`.
  """
  x = np.asarray(x, np.float64)
  protos = np.asarray(prototypes, np.float64)
  if protos.ndim == 2:
    protos = protos[:, None, :]
  if metric == "cosine":
    x = np.array([row / math.sqrt(sum(v * v for v in row)) for row in x])
    protos = np.array([[p / math.sqrt(sum(v * v for v in p))
                        if any(p) else p for p in cls] for cls in protos])
  num_classes, per_class = protos.shape[:2]
  owned = {(c, k): [] for c in range(num_classes) for k in range(per_class)}
  for row, c in zip(x, y):
    distances = [sum((a - b) ** 2 for a, b in zip(row, protos[c, k]))
                 for k in range(per_class)]
    owned[c, distances.index(min(distances))].append(row)
  out = {}
  for (c, k), rows in owned.items():
    values = {"points": len(rows)}
    values.update({name: None for name in PROTOTYPE_QUANTITIES})
    out[c, k] = values
    if len(rows) < min_points:
      continue
    dim = len(rows[0])
    mean = [sum(r[d] for r in rows) / len(rows) for d in range(dim)]
    radius = math.sqrt(sum(sum((r[d] - mean[d]) ** 2 for d in range(dim))
                           for r in rows) / len(rows))
    p = protos[c, k]
    p_norm = math.sqrt(sum(v * v for v in p))
    m_norm = math.sqrt(sum(v * v for v in mean))
    dot = sum(a * b for a, b in zip(p, mean))
    if radius > 0:
      values["offset"] = math.sqrt(sum((a - b) ** 2 for a, b in zip(p, mean))
                                   ) / radius
    if m_norm > 0:
      values["norm_ratio"] = p_norm / m_norm
      values["fraction_to_mean"] = dot / m_norm ** 2
      if p_norm > 0:
        values["cosine"] = dot / (p_norm * m_norm)
  return out


def _close(got, want) -> bool:
  """Equal Nones, else equal to 1e-10 relative; lists element by element."""
  if isinstance(want, list):
    return (isinstance(got, list) and len(got) == len(want)
            and all(_close(g, w) for g, w in zip(got, want)))
  if want is None or got is None:
    return got is want
  return got == pytest.approx(want, rel=1e-10)


def _median(values):
  defined = sorted(v for v in values if v is not None)
  if not defined:
    return None
  half = len(defined) // 2
  return (defined[half] if len(defined) % 2
          else (defined[half - 1] + defined[half]) / 2)


def _points(seed=0):
  """Four classes in 5-D, classes 0 and 1 as two sub-clusters each; class
  2's points are +-2 and +-3 times the axes (mean exactly 0, also after
  normalising, whatever the order of summation); class 3 has 3 points
  (too few)."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(4, 2, 5)) * 6 + 3
  y = np.concatenate([np.repeat([0, 1], 60), np.full(3, 3)])
  k = rng.integers(0, 2, y.shape[0])
  x = centers[y, k] + rng.normal(size=(y.shape[0], 5))
  axes = np.concatenate([2 * np.eye(5), -2 * np.eye(5), 3 * np.eye(5),
                         -3 * np.eye(5)])
  return (np.concatenate([x, axes]),
          np.concatenate([y, np.full(len(axes), 2)]), centers)


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("per_class", [None, 2])
def test_geometry_matches_a_float64_hand_computation(metric, per_class):
  x, y, centers = _points()
  # The prototypes: the sub-cluster centers pulled part of the way in, and
  # for [C, D] each class's first center.
  prototypes = 0.4 * centers if per_class else 0.4 * centers[:, 0]
  got = prototype_geometry(x.astype(np.float32), y, prototypes, metric,
                           class_names=["a", "b", "c", "d"])
  want = _by_hand(x.astype(np.float32), y, prototypes, metric)
  k_range = range(per_class or 1)
  assert got["prototypes_per_class"] == (per_class or 1)
  assert got["measured"] == sum(want[c, k]["points"] >= 5 for c in range(4)
                                for k in k_range)
  for c, name in enumerate("abcd"):
    row = got["per_class"][name]
    assert row["count"] == int(np.sum(y == c))
    for key in ("points", *PROTOTYPE_QUANTITIES):
      values = [want[c, k][key] for k in k_range]
      expected = values if per_class else values[0]
      assert _close(row[key], expected), (name, key, row[key], expected)
  for key in PROTOTYPE_QUANTITIES:
    assert _close(got[f"{key}_median"], _median(
        [want[c, k][key] for c in range(4) for k in k_range])), key
  # Class d (3 points) is not measured; class c's mean is 0: its offset
  # is defined, its norm ratio, cosine and fraction are not.
  d, c = got["per_class"]["d"], got["per_class"]["c"]
  assert all(v is None for key in PROTOTYPE_QUANTITIES
             for v in np.ravel([d[key]]))
  if not per_class:
    assert c["offset"] is not None
    assert c["norm_ratio"] is c["cosine"] is c["fraction_to_mean"] is None
  assert got["space"] == ("embeddings" if metric == "euclidean" else
                          "L2-normalised embeddings and prototypes")
  json.dumps(got, allow_nan=False)               # JSON-ready, no NaN


def test_prototypes_part_of_the_way_to_their_means_read_as_that_fraction():
  rng = np.random.default_rng(1)
  means = rng.normal(size=(6, 8)) * 10
  y = np.arange(600) % 6
  x = means[y] + rng.normal(size=(600, 8))
  empirical = np.stack([x[y == c].mean(0) for c in range(6)])
  got = prototype_geometry(x, y, 0.4 * empirical)
  assert got["fraction_to_mean_median"] == pytest.approx(0.4, abs=1e-12)
  assert got["norm_ratio_median"] == pytest.approx(0.4, abs=1e-12)
  assert got["cosine_median"] == pytest.approx(1.0, abs=1e-12)
  # |p - mu| = 0.6 |mu|, in class radii.
  radii = [math.sqrt(np.mean(np.sum((x[y == c] - empirical[c]) ** 2, 1)))
           for c in range(6)]
  np.testing.assert_allclose(
      [got["per_class"][c]["offset"] for c in range(6)],
      0.6 * np.linalg.norm(empirical, axis=1) / radii, rtol=1e-12)
  # Sideways from the mean: the fraction is the projection, not the norm.
  across = rng.normal(size=(6, 8))
  across -= (np.sum(across * empirical, 1) / np.sum(empirical ** 2, 1)
             )[:, None] * empirical
  got = prototype_geometry(x, y, empirical + 3.0 * across)
  np.testing.assert_allclose(
      [got["per_class"][c]["fraction_to_mean"] for c in range(6)], 1.0,
      atol=1e-12)
  assert got["norm_ratio_median"] > 1.01 and got["cosine_median"] < 0.99


def test_cosine_measures_the_unit_directions():
  # Scaling embeddings or prototypes changes nothing under "cosine".
  x, y, centers = _points(2)
  x, y, prototypes = x[y < 2], y[y < 2], centers[:2, 0]
  base = prototype_geometry(x, y, prototypes, "cosine")
  scaled = prototype_geometry(x * np.linspace(0.5, 4, len(x))[:, None], y,
                              prototypes * 7.0, "cosine")
  assert base["measured"] == 2
  for key in PROTOTYPE_QUANTITIES:
    assert scaled[f"{key}_median"] == pytest.approx(base[f"{key}_median"],
                                                    rel=1e-9)
  # Unit prototypes on the class mean direction: norm ratio 1 / |mean|.
  rng = np.random.default_rng(4)
  direction = rng.normal(size=(3, 4))
  y = np.arange(300) % 3
  x = direction[y] + 0.3 * rng.normal(size=(300, 4))
  units = x / np.linalg.norm(x, axis=1, keepdims=True)
  mean = np.stack([units[y == c].mean(0) for c in range(3)])
  got = prototype_geometry(x, y, mean * 5.0, "cosine")
  for c in range(3):
    row = got["per_class"][c]
    assert row["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert row["norm_ratio"] == pytest.approx(1 / np.linalg.norm(mean[c]),
                                              rel=1e-12)


def test_rows_without_a_place_are_dropped_and_empty_input_gives_nulls():
  x, y, centers = _points()
  prototypes = centers[:, 0]
  clean = prototype_geometry(x, y, prototypes, "cosine")
  bad = np.concatenate([x, [[np.nan] * 5, [np.inf] * 5, [0.0] * 5]])
  got = prototype_geometry(bad, np.concatenate([y, [0, 1, 0]]), prototypes,
                           "cosine")
  assert got["num_dropped"] == 3 and got["num_samples"] == len(x)
  assert got["per_class"] == clean["per_class"]
  # A zero row has a place in euclidean space.
  got = prototype_geometry(bad[:-3].tolist() + [[0.0] * 5],
                           np.concatenate([y, [0]]), prototypes)
  assert got["num_dropped"] == 0
  empty = prototype_geometry(np.zeros((0, 5)), np.zeros(0, np.int64),
                             prototypes)
  assert empty["measured"] == 0
  assert all(empty[f"{k}_median"] is None for k in PROTOTYPE_QUANTITIES)


def test_a_zero_prototype_sits_at_the_origin():
  x, y, centers = _points()
  prototypes = centers[:, 0].copy()
  prototypes[0] = 0.0
  for metric in ("euclidean", "cosine"):
    row = prototype_geometry(x, y, prototypes, metric)["per_class"][0]
    assert row["norm_ratio"] == 0.0 and row["fraction_to_mean"] == 0.0
    assert row["cosine"] is None and row["offset"] > 0


def test_unusable_inputs_are_one_line_errors():
  x, y, centers = _points()
  with pytest.raises(ValueError, match=r"\[C, 5\] or \[C, K, 5\]"):
    prototype_geometry(x, y, centers[:, :, :3])
  with pytest.raises(ValueError, match=r"integers in \[0, 3\)"):
    prototype_geometry(x, y, centers[:3, 0])
  with pytest.raises(ValueError, match="3 class names for 4"):
    prototype_geometry(x, y, centers, class_names=["a", "b", "c"])
  with pytest.raises(ValueError, match="`metric`"):
    prototype_geometry(x, y, centers, "manhattan")


def test_offsets_measure_in_the_given_coordinates():
  # What the embedding picture's caption reads, in plotted coordinates.
  rng = np.random.default_rng(0)
  y = np.arange(3000) % 10
  means = rng.normal(size=(10, 2))
  means *= 12 / np.linalg.norm(means, axis=1, keepdims=True)
  x = means[y] + rng.normal(0, 2.0, (3000, 2))
  on = prototype_offsets(x, y, means[:, None])
  assert np.all(on["offset"] < 0.2)
  np.testing.assert_allclose(on["norm_ratio"], 1.0, atol=0.05)
  inward = prototype_offsets(x, y, 0.4 * means[:, None])
  np.testing.assert_allclose(inward["norm_ratio"], 0.4, atol=0.02)
  np.testing.assert_allclose(inward["cosine"], 1.0, atol=1e-3)
  assert np.all(inward["offset"] > 2.0)
  few = prototype_offsets(x[:12], y[:12], means[:, None])
  assert np.all(np.isnan(few["offset"])) and few["points"].sum() == 12
