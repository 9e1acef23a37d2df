"""cfal.metrics.embedding against brute-force NumPy and hand-computed values."""

from __future__ import annotations

import json
import math
import resource
import time

import numpy as np
import pytest

from cfal.metrics import compactness_separation, retrieval_metrics

RETRIEVAL_KEYS = ("precision_at_1", "r_precision", "map_at_r")


# ---------------------------------------------------------------------------
# Brute-force references: full [N, N] distances, full stable argsort.


def _normalise(x: np.ndarray) -> np.ndarray:
  """Unit rows, float64."""
  x = np.asarray(x, dtype=np.float64)
  return x / np.linalg.norm(x, axis=1, keepdims=True)


def _distance_matrix(x: np.ndarray, metric: str) -> np.ndarray:
  """All pairwise distances, elementwise (identical rows give equal values)."""
  x = np.asarray(x, dtype=np.float64)
  if metric == "euclidean":
    diff = x[:, None, :] - x[None, :, :]
    return np.sqrt(np.sum(diff * diff, axis=-1))
  u = _normalise(x)
  return 1.0 - np.sum(u[:, None, :] * u[None, :, :], axis=-1)


def _brute_force_retrieval(x: np.ndarray, labels: np.ndarray,
                           metric: str) -> dict:
  """Precision@1, R-precision and MAP@R by the textbook definitions.

  Neighbours are all other indices in increasing order, stably sorted by
  distance, so equal distances keep the smaller index first.
  """
  labels = np.asarray(labels)
  n = labels.shape[0]
  dist = _distance_matrix(x, metric)
  p1, rp, mapr = [], [], []
  for q in range(n):
    others = np.array([j for j in range(n) if j != q], dtype=np.int64)
    ranked = others[np.argsort(dist[q, others], kind="stable")]
    r = int(np.sum(labels == labels[q])) - 1
    if r == 0:
      continue
    rel = [1.0 if labels[j] == labels[q] else 0.0 for j in ranked[:r]]
    p1.append(rel[0])
    rp.append(sum(rel) / r)
    ap = 0.0
    for i in range(1, r + 1):
      precision_at_i = sum(rel[:i]) / i
      ap += precision_at_i * rel[i - 1]
    mapr.append(ap / r)
  nan = float("nan")
  return {
      "precision_at_1": float(np.mean(p1)) if p1 else nan,
      "r_precision": float(np.mean(rp)) if rp else nan,
      "map_at_r": float(np.mean(mapr)) if mapr else nan,
      "num_queries": len(p1),
      "num_queries_skipped": n - len(p1),
  }


def _angle(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Angle between unit vectors, Kahan's 2 atan2(|a - b|, |a + b|)."""
  return 2.0 * np.arctan2(np.linalg.norm(a - b, axis=-1),
                          np.linalg.norm(a + b, axis=-1))


def _direct_compactness_separation(x: np.ndarray, labels: np.ndarray,
                                   metric: str) -> dict:
  """The same quantities class by class and pair by pair."""
  x = np.asarray(x, dtype=np.float64)
  if metric == "cosine":
    x = _normalise(x)
  classes = np.unique(labels)
  centroids, per_class, all_distances = [], {}, []
  for c in classes:
    members = x[labels == c]
    centroid = members.mean(axis=0)
    if metric == "euclidean":
      dist = np.linalg.norm(members - centroid, axis=1)
    else:
      centroid = centroid / np.linalg.norm(centroid)
      dist = _angle(members, centroid)
    centroids.append(centroid)
    per_class[c.item()] = float(dist.mean())
    all_distances.extend(dist)
  pairs = []
  for i in range(len(classes)):
    for j in range(i + 1, len(classes)):
      if metric == "euclidean":
        pairs.append(np.linalg.norm(centroids[i] - centroids[j]))
      else:
        pairs.append(_angle(centroids[i], centroids[j]))
  compactness = float(np.mean(all_distances))
  return {
      "compactness": compactness,
      "separation_min": float(min(pairs)) if pairs else float("nan"),
      "separation_mean": float(np.mean(pairs)) if pairs else float("nan"),
      "per_class": per_class,
  }


def _random_data(seed: int, n: int, num_classes: int,
                 dim: int) -> tuple[np.ndarray, np.ndarray]:
  """Clustered Gaussian embeddings (so the scores are neither 0 nor 1)."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, num_classes, size=n)
  centres = rng.normal(size=(num_classes, dim))
  x = centres[labels] + 0.8 * rng.normal(size=(n, dim))
  return x, labels


def _assert_retrieval_close(got: dict, want: dict, tol: float = 1e-12):
  for key in RETRIEVAL_KEYS:
    if math.isnan(want[key]):
      assert math.isnan(got[key]), key
    else:
      assert got[key] == pytest.approx(want[key], abs=tol, rel=0), key
  assert got["num_queries"] == want["num_queries"]
  assert got["num_queries_skipped"] == want["num_queries_skipped"]


# ---------------------------------------------------------------------------
# Retrieval.


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed,n,num_classes,dim", [
    (0, 60, 3, 2), (1, 97, 5, 4), (2, 150, 10, 8), (3, 200, 7, 16),
    (4, 120, 40, 3)])
def test_retrieval_matches_brute_force(metric, seed, n, num_classes, dim):
  x, labels = _random_data(seed, n, num_classes, dim)
  got = retrieval_metrics(x, labels, metric=metric, chunk_size=32)
  want = _brute_force_retrieval(x, labels, metric)
  _assert_retrieval_close(got, want)
  assert 0 < got["map_at_r"] < 1  # a real test, not a degenerate case
  assert got["num_samples"] == n


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_retrieval_chunking_is_exact(metric):
  x, labels = _random_data(5, 180, 6, 5)
  labels[0] = 99  # a singleton class too
  whole = retrieval_metrics(x, labels, metric=metric, chunk_size=180)
  for chunk_size in (1, 7, 64, 179, 4096):
    assert retrieval_metrics(x, labels, metric=metric,
                             chunk_size=chunk_size) == whole


def test_retrieval_hand_computed_1d():
  # Index: 0    1    2    3    4     5
  # x:     0    1    2    3    10    10
  # class: A    B    A    A    B     C
  # A has R = 2, B has R = 1, C is a singleton (skipped).
  # q0 (A): 1 (d1, B), 2 (d2, A)            rel [0, 1]: P@1 0, RP 1/2,
  #         MAP = (1/2)(0 + 1/2) = 1/4.
  # q1 (B): 0 and 2 tie at d1; index 0 (A)  rel [0]:    0, 0, 0.
  # q2 (A): 1 (B) and 3 (A) tie at d1; 1 first, rel [0, 1]: 0, 1/2, 1/4.
  # q3 (A): 2 (d1, A), 1 (d2, B)            rel [1, 0]: 1, 1/2, 1/2.
  # q4 (B): 5 (d0, C)                       rel [0]:    0, 0, 0.
  # Over 5 queries: P@1 = 1/5, RP = 1.5/5 = 0.3, MAP@R = 1/5.
  x = np.array([[0.0], [1.0], [2.0], [3.0], [10.0], [10.0]])
  labels = np.array(["A", "B", "A", "A", "B", "C"])
  got = retrieval_metrics(x, labels)
  assert got["precision_at_1"] == pytest.approx(0.2, abs=1e-15)
  assert got["r_precision"] == pytest.approx(0.3, abs=1e-15)
  assert got["map_at_r"] == pytest.approx(0.2, abs=1e-15)
  assert got["num_queries"] == 5 and got["num_queries_skipped"] == 1
  _assert_retrieval_close(got, _brute_force_retrieval(x, labels, "euclidean"))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_retrieval_ties_smaller_index_first(metric):
  # Five identical points: every neighbour is tied, so the ranking is the
  # index order. Labels 0 0 1 1 1, R = 1, 1, 2, 2, 2:
  # q0: [1] rel [1]; q1: [0] rel [1]; q2: [0, 1] rel [0, 0];
  # q3: [0, 1] [0, 0]; q4: [0, 1] [0, 0]  ->  every score 2/5.
  # (Larger index first would give 3/5.)
  x = np.tile(np.array([[0.3, -1.2, 2.0]]), (5, 1))
  labels = np.array([0, 0, 1, 1, 1])
  got = retrieval_metrics(x, labels, metric=metric, chunk_size=2)
  for key in RETRIEVAL_KEYS:
    assert got[key] == pytest.approx(0.4, abs=1e-15), key
  _assert_retrieval_close(got, _brute_force_retrieval(x, labels, metric))


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("chunk_size", [3, 64, 500])
def test_retrieval_duplicates_of_different_classes(metric, chunk_size):
  # Random base points, each copied several times with different labels and
  # at scattered indices, so many neighbours are exactly tied. For cosine,
  # some copies are scaled by 2 or 4 (the same direction, exactly).
  rng = np.random.default_rng(11)
  base = rng.normal(size=(25, 6))
  pick = rng.integers(0, 25, size=140)
  x = base[pick]
  if metric == "cosine":
    x = x * rng.choice([1.0, 2.0, 4.0], size=(140, 1))
  labels = rng.integers(0, 4, size=140)
  got = retrieval_metrics(x, labels, metric=metric, chunk_size=chunk_size)
  _assert_retrieval_close(got, _brute_force_retrieval(x, labels, metric))


def test_retrieval_integer_grid_ties_between_distinct_points():
  # Small integer coordinates: many distinct points at exactly equal
  # distances from a query, and the keys are computed exactly.
  rng = np.random.default_rng(3)
  x = rng.integers(-3, 4, size=(120, 2)).astype(np.int64)
  labels = rng.integers(0, 3, size=120)
  for chunk_size in (5, 120):
    got = retrieval_metrics(x, labels, chunk_size=chunk_size)
    _assert_retrieval_close(got,
                            _brute_force_retrieval(x, labels, "euclidean"))


def test_retrieval_self_left_out_by_index_not_by_value():
  # The query's exact duplicate of another class is its nearest neighbour
  # (distance 0); it must not be dropped as if it were the query itself.
  x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.1], [5.0, 5.0], [5.0, 5.1]])
  labels = np.array([0, 1, 0, 1, 2])
  got = retrieval_metrics(x, labels)
  # q0: 1 (B, d0) -> 0.  q1 (R=1): 0 (d0, class 0) -> 0.
  # q2 (R=1): 0 and 1 tie at 0.1, index 0 first -> class 0 -> 1.
  # q3 (R=1): 4 (class 2) -> 0.  q4: singleton, skipped.
  assert got["precision_at_1"] == pytest.approx(0.25, abs=1e-15)
  assert got["num_queries_skipped"] == 1
  _assert_retrieval_close(got, _brute_force_retrieval(x, labels, "euclidean"))


def test_retrieval_singletons_skipped_and_counted():
  x, labels = _random_data(8, 80, 4, 3)
  labels[[3, 17, 40]] = [100, 101, 102]
  got = retrieval_metrics(x, labels)
  assert got["num_queries_skipped"] == 3 and got["num_queries"] == 77
  _assert_retrieval_close(got, _brute_force_retrieval(x, labels, "euclidean"))


@pytest.mark.parametrize("n", [1, 6])
def test_retrieval_all_singletons_is_nan(n):
  x = np.random.default_rng(0).normal(size=(n, 3))
  got = retrieval_metrics(x, np.arange(n), metric="cosine")
  assert got["num_queries_skipped"] == n and got["num_queries"] == 0
  for key in RETRIEVAL_KEYS:
    assert math.isnan(got[key])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_retrieval_perfect_clustering_scores_one(metric):
  rng = np.random.default_rng(2)
  labels = np.repeat(np.arange(5), [2, 7, 3, 10, 4])
  centres = 10.0 * np.eye(8)[:5] + 1.0   # well apart in angle and distance
  x = centres[labels] + 0.01 * rng.normal(size=(labels.size, 8))
  got = retrieval_metrics(x, labels, metric=metric, chunk_size=4)
  for key in RETRIEVAL_KEYS:
    assert got[key] == 1.0, key
  assert got["num_queries_skipped"] == 0


def test_retrieval_single_class_everything_relevant():
  x = np.random.default_rng(1).normal(size=(30, 4))
  got = retrieval_metrics(x, np.zeros(30, dtype=int))
  for key in RETRIEVAL_KEYS:
    assert got[key] == 1.0


def test_retrieval_dtypes_and_json():
  x, labels = _random_data(9, 70, 3, 4)
  want = retrieval_metrics(x, labels)
  got32 = retrieval_metrics(x.astype(np.float32), labels)
  want32 = _brute_force_retrieval(x.astype(np.float32), labels, "euclidean")
  _assert_retrieval_close(got32, want32)
  named = retrieval_metrics(x, np.array(["a", "b", "c"])[labels])
  assert named == want
  json.loads(json.dumps(want))
  for key in RETRIEVAL_KEYS:
    assert type(want[key]) is float
  assert type(want["num_queries"]) is int


def test_retrieval_rejects_bad_input():
  x = np.zeros((4, 2)) + 1.0
  labels = np.array([0, 0, 1, 1])
  with pytest.raises(ValueError, match="metric"):
    retrieval_metrics(x, labels, metric="manhattan")
  with pytest.raises(ValueError, match="labels"):
    retrieval_metrics(x, labels[:3])
  with pytest.raises(ValueError, match="embeddings"):
    retrieval_metrics(x[0], labels)
  with pytest.raises(ValueError, match="finite"):
    retrieval_metrics(np.where(x > 0, np.nan, x), labels)
  with pytest.raises(ValueError, match="non-zero"):
    retrieval_metrics(np.zeros((4, 2)), labels, metric="cosine")
  with pytest.raises(TypeError, match="chunk_size"):
    retrieval_metrics(x, labels, chunk_size=2.0)
  with pytest.raises(ValueError, match="chunk_size"):
    retrieval_metrics(x, labels, chunk_size=0)


def _tied_data(seed: int, n: int, metric: str):
  """Exact ties between classes, and singleton classes.

  Euclidean: small integer coordinates, so distinct points tie too.
  Cosine: copies of random directions, some scaled by 2 (the same unit
  vector exactly); distinct directions at mathematically equal angles are
  not used, their keys need not be equal after normalising (see the
  `retrieval_metrics` docstring).
  """
  rng = np.random.default_rng(seed)
  if metric == "euclidean":
    base = rng.integers(-2, 3, size=(max(n // 4, 2), 3)).astype(np.float64)
  else:
    base = rng.normal(size=(max(n // 4, 2), 3))
  x = base[rng.integers(0, base.shape[0], size=n)]
  if metric == "cosine":
    x = x * rng.choice([1.0, 2.0], size=(n, 1))
  labels = rng.integers(0, 4, size=n)
  labels[rng.choice(n, size=3, replace=False)] = [50, 51, 52]  # singletons
  return x, labels


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed", range(6))
def test_retrieval_ties_singletons_random_chunks_match_brute_force(metric,
                                                                    seed):
  x, labels = _tied_data(seed, 90 + 17 * seed, metric)
  want = _brute_force_retrieval(x, labels, metric)
  chunk_sizes = np.random.default_rng(100 + seed).integers(1, 130, size=3)
  for chunk_size in chunk_sizes:
    got = retrieval_metrics(x, labels, metric=metric,
                            chunk_size=int(chunk_size))
    _assert_retrieval_close(got, want)
  assert got["num_queries_skipped"] == want["num_queries_skipped"] >= 3


def test_retrieval_progress_callback():
  x, labels = _random_data(4, 100, 3, 4)
  labels[:30] = np.arange(100, 130)  # a chunk of singletons is reported too
  calls = []
  got = retrieval_metrics(x, labels, chunk_size=30,
                          progress=lambda done, total: calls.append(
                              (done, total)))
  assert calls == [(30, 100), (60, 100), (90, 100), (100, 100)]
  assert got == retrieval_metrics(x, labels, chunk_size=30)
  with pytest.raises(TypeError, match="progress"):
    retrieval_metrics(x, labels, progress="yes")


# ---------------------------------------------------------------------------
# Compactness and separation.


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("seed,n,num_classes,dim", [
    (0, 60, 3, 2), (1, 150, 10, 8), (2, 200, 7, 16)])
def test_compactness_separation_matches_direct(metric, seed, n, num_classes,
                                               dim):
  x, labels = _random_data(seed, n, num_classes, dim)
  labels[0] = 77  # a singleton class
  got = compactness_separation(x, labels, metric=metric, chunk_size=16)
  want = _direct_compactness_separation(x, labels, metric)
  for key in ("compactness", "separation_min", "separation_mean"):
    assert got[key] == pytest.approx(want[key], abs=1e-12, rel=0), key
  assert got["ratio"] == pytest.approx(
      want["separation_mean"] / want["compactness"], rel=1e-12)
  assert list(got["per_class"]) == list(want["per_class"])
  for label, value in want["per_class"].items():
    assert got["per_class"][label]["compactness"] == pytest.approx(
        value, abs=1e-12, rel=0)
    assert got["per_class"][label]["count"] == int(np.sum(labels == label))
  assert got["per_class"][77] == {"compactness": 0.0, "count": 1}
  assert got["num_classes"] == len(want["per_class"])
  unchunked = compactness_separation(x, labels, metric=metric,
                                     chunk_size=1000)
  for key in ("compactness", "separation_min", "separation_mean", "ratio"):
    assert unchunked[key] == pytest.approx(got[key], abs=1e-12, rel=0), key
  json.loads(json.dumps(got))


def test_compactness_separation_hand_computed():
  # 1-D, euclidean. A = {0, 2}: centroid 1, distances 1, 1.
  # B = {10, 11, 15}: centroid 12, distances 2, 1, 3.  C = {20}: 0.
  # Compactness over the 6 examples: (1 + 1 + 2 + 1 + 3 + 0) / 6 = 4/3.
  # Centroids 1, 12, 20: pairs 11, 19, 8 -> min 8, mean 38/3.
  # Ratio (38/3) / (4/3) = 9.5.
  x = np.array([[0.0], [2.0], [10.0], [11.0], [15.0], [20.0]])
  labels = np.array(["A", "A", "B", "B", "B", "C"])
  got = compactness_separation(x, labels)
  assert got["compactness"] == pytest.approx(4 / 3, abs=1e-15)
  assert got["separation_min"] == 8.0
  assert got["separation_mean"] == pytest.approx(38 / 3, abs=1e-14)
  assert got["ratio"] == pytest.approx(9.5, abs=1e-14)
  assert got["per_class"] == {"A": {"compactness": 1.0, "count": 2},
                              "B": {"compactness": 2.0, "count": 3},
                              "C": {"compactness": 0.0, "count": 1}}


def test_compactness_separation_cosine_hand_computed():
  # Class 0 at angles +-30 degrees around the x axis (centroid angle 0),
  # class 1 at 90 degrees exactly, with two different lengths.
  # Compactness: (pi/6 + pi/6 + 0 + 0) / 4 = pi/12; separation pi/2.
  c, s = math.cos(math.pi / 6), math.sin(math.pi / 6)
  x = np.array([[c, s], [2 * c, -2 * s], [0.0, 1.0], [0.0, 3.0]])
  got = compactness_separation(x, np.array([0, 0, 1, 1]), metric="cosine")
  assert got["compactness"] == pytest.approx(math.pi / 12, abs=1e-15)
  assert got["separation_min"] == pytest.approx(math.pi / 2, abs=1e-15)
  assert got["ratio"] == pytest.approx(6.0, abs=1e-13)


def test_compactness_separation_degenerate_cases():
  x = np.random.default_rng(0).normal(size=(5, 3))
  one_class = compactness_separation(x, np.zeros(5, dtype=int))
  assert one_class["num_classes"] == 1
  assert math.isnan(one_class["separation_min"])
  assert math.isnan(one_class["separation_mean"])
  assert math.isnan(one_class["ratio"])
  assert one_class["compactness"] > 0
  singletons = compactness_separation(x, np.arange(5), metric="cosine")
  assert singletons["compactness"] == 0.0
  assert singletons["ratio"] == float("inf")
  single = compactness_separation(x[:1], np.array([4]))
  assert single["compactness"] == 0.0 and math.isnan(single["ratio"])
  with pytest.raises(ValueError, match="mean direction"):
    compactness_separation(np.array([[1.0, 0.0], [-1.0, 0.0], [0.0, 1.0]]),
                           np.array([0, 0, 1]), metric="cosine")


def test_perfect_clustering_compactness_zero_separation_positive():
  x = np.repeat(np.array([[0.0, 0.0], [3.0, 4.0]]), 3, axis=0)
  labels = np.repeat([0, 1], 3)
  got = compactness_separation(x, labels)
  assert got["compactness"] == 0.0 and got["separation_min"] == 5.0
  assert got["ratio"] == float("inf")
  for key in RETRIEVAL_KEYS:
    assert retrieval_metrics(x, labels)[key] == 1.0


# ---------------------------------------------------------------------------
# Scale.


@pytest.mark.slow
def test_retrieval_70k_by_128_bounded_memory():
  rng = np.random.default_rng(0)
  n, dim, num_classes = 70_000, 128, 10
  labels = rng.integers(0, num_classes, size=n)
  centres = rng.normal(size=(num_classes, dim))
  x = (centres[labels] + 2.0 * rng.normal(size=(n, dim))).astype(np.float32)
  before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  start = time.perf_counter()
  got = retrieval_metrics(x, labels)
  seconds = time.perf_counter() - start
  after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
  print(f"\n70k x 128 retrieval: {seconds:.1f} s, peak RSS {before / 1024:.0f}"
        f" MB before -> {after / 1024:.0f} MB after; {got}")
  assert got["num_queries"] == n
  assert 0 < got["map_at_r"] <= got["r_precision"] <= 1
  # An [N, N] float64 matrix alone would be 39 GB.
  assert after < 8 * 1024 * 1024
