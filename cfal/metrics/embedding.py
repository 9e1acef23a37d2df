"""Embedding-space metrics: class compactness/separation and retrieval scores.

Both functions run on the host in NumPy, accumulate in float64 and never
build an `[N, N]` matrix: the retrieval scores process `chunk_size` queries
at a time against all N embeddings, so 70,000 x 512 embeddings need about
`chunk_size * N * 8` bytes of working memory (~570 MB at the default 1024)
on top of a float64 copy of the embeddings.

* `compactness_separation(embeddings, labels, metric)`: how tight each class
  is around its centroid and how far apart the centroids are.
* `retrieval_metrics(embeddings, labels, metric)`: precision@1, R-precision
  and MAP@R with every embedding used as a query against all the others,
  defined as in Musgrave, Belongie & Lim, "A Metric Learning Reality Check"
  (ECCV 2020).

`metric` is `"euclidean"` (L2 distance) or `"cosine"` (the embeddings are L2
normalised first; compactness and separation are then angles in radians and
retrieval ranks by cosine distance `1 - cos`). Every returned number is a
plain Python `float` or `int`, so the dicts can go straight to JSON.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

METRICS = ("euclidean", "cosine")


# ---------------------------------------------------------------------------
# Validation and small helpers.


def _check_metric(metric: str) -> str:
  """Returns `metric` if it is one of `METRICS`, else raises ValueError."""
  if metric not in METRICS:
    raise ValueError(f"`metric` must be one of {METRICS}, got {metric!r}.")
  return metric


def _check_chunk_size(chunk_size: int) -> int:
  """Returns `chunk_size` as an int if it is an integer >= 1."""
  if isinstance(chunk_size, bool) or not isinstance(chunk_size,
                                                    (int, np.integer)):
    raise TypeError(f"`chunk_size` must be an integer, got {chunk_size!r}.")
  if chunk_size < 1:
    raise ValueError(f"`chunk_size` ({chunk_size}) must be >= 1.")
  return int(chunk_size)


def _prepare(embeddings: np.ndarray, labels: np.ndarray,
             metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                   np.ndarray]:
  """Validates the inputs, casts to float64 and normalises for cosine.

  Args:
    embeddings: real `[N, D]` array, N >= 1, D >= 1, all finite.
    labels: `[N]` class labels of any type `np.unique` can sort.
    metric: `"euclidean"` or `"cosine"`.

  Returns:
    `(x, classes, class_index, counts)`: the float64 `[N, D]` embeddings
    (unit rows for cosine), the sorted unique labels `[C]`, each example's
    class as an index into them `[N]` and the class sizes `[C]`.
  """
  _check_metric(metric)
  x = np.asarray(embeddings)
  if x.ndim != 2 or x.shape[0] < 1 or x.shape[1] < 1:
    raise ValueError(f"`embeddings` must be a non-empty [N, D] array, got "
                     f"shape {x.shape}.")
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise TypeError(f"`embeddings` must be real numbers, got dtype {x.dtype}.")
  x = x.astype(np.float64)  # always a copy: normalising below is in place
  if not np.all(np.isfinite(x)):
    raise ValueError("`embeddings` must be finite (no NaN or inf).")
  y = np.asarray(labels)
  if y.ndim != 1 or y.shape[0] != x.shape[0]:
    raise ValueError(f"`labels` must have shape [{x.shape[0]}], got "
                     f"{y.shape}.")
  classes, class_index, counts = np.unique(y, return_inverse=True,
                                           return_counts=True)
  if metric == "cosine":
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))
    if np.any(norms == 0):
      raise ValueError("`metric='cosine'` needs non-zero embeddings; "
                       f"{int(np.sum(norms == 0))} rows are all zeros.")
    x /= norms[:, None]
  return x, classes, class_index.reshape(-1), counts


def _angle(u: np.ndarray, c: np.ndarray) -> np.ndarray:
  """Angle in radians between the rows of `u` `[M, D]` and a unit `c` `[D]`.

  `atan2(|u - (u.c) c|, u.c)` is accurate near 0 and near pi, where
  `arccos(u.c)` loses half the digits; for unit rows it is the angle.

  Args:
    u: `[M, D]` unit vectors.
    c: `[D]` unit vector.

  Returns:
    float64 `[M]` angles in `[0, pi]`.
  """
  cos = u @ c
  perp = u - cos[:, None] * c[None, :]
  return np.arctan2(np.sqrt(np.einsum("md,md->m", perp, perp)), cos)


def _python_key(label) -> int | float | str | bool:
  """A label as a JSON-friendly Python scalar, for the `per_class` keys."""
  return label.item() if isinstance(label, np.generic) else label


# ---------------------------------------------------------------------------
# Compactness and separation.


def compactness_separation(embeddings: np.ndarray, labels: np.ndarray,
                           metric: str = "euclidean",
                           chunk_size: int = 1024) -> dict:
  """Intra-class compactness, inter-class separation and their ratio.

  Class centroids: for `"euclidean"` the mean embedding of the class; for
  `"cosine"` the mean of the L2-normalised embeddings, normalised again (the
  mean direction). The distance between an embedding and a centroid, or
  between two centroids, is the L2 distance for `"euclidean"` and the angle
  in radians, in `[0, pi]`, for `"cosine"`.

  * `compactness`: mean over all N examples of the distance to their own
    class centroid; `per_class[label]["compactness"]` is the same mean within
    one class. A class with a single member has compactness exactly 0.
  * `separation_min` / `separation_mean`: minimum and mean over the
    `C (C - 1) / 2` pairs of distinct classes of the centroid distance. With
    a single class there is no pair and both are NaN.
  * `ratio`: `separation_mean / compactness` (larger is better). NaN when
    the separation is NaN (one class) or both are 0; `inf` when the
    compactness is 0 (every class a single point) and the separation is not.

  Args:
    embeddings: real `[N, D]` array (any float or int dtype), all finite.
    labels: `[N]` class labels (ints or strings); only the classes present
      count.
    metric: `"euclidean"` or `"cosine"`. With `"cosine"` no embedding may be
      all zeros, and a class whose normalised embeddings sum to exactly zero
      (e.g. two opposite vectors) has no mean direction: ValueError.
    chunk_size: rows processed at a time (memory `chunk_size * max(C, D)`).

  Returns:
    A dict with `metric` (str), `num_samples` and `num_classes` (ints),
    `compactness`, `separation_min`, `separation_mean` and `ratio` (floats),
    and `per_class`: `{label: {"compactness": float, "count": int}}` in
    sorted label order, labels as Python scalars.
  """
  chunk_size = _check_chunk_size(chunk_size)
  x, classes, class_index, counts = _prepare(embeddings, labels, metric)
  n, dim = x.shape
  num_classes = classes.shape[0]

  # Per-class sums with a one-hot matmul per chunk of rows.
  sums = np.zeros((num_classes, dim))
  for start in range(0, n, chunk_size):
    idx = class_index[start:start + chunk_size]
    one_hot = np.zeros((idx.shape[0], num_classes))
    one_hot[np.arange(idx.shape[0]), idx] = 1.0
    sums += one_hot.T @ x[start:start + chunk_size]
  centroids = sums / counts[:, None]
  if metric == "cosine":
    norms = np.sqrt(np.einsum("cd,cd->c", centroids, centroids))
    if np.any(norms == 0):
      bad = [_python_key(c) for c in classes[norms == 0]]
      raise ValueError(f"Classes {bad} have no mean direction: their "
                       "normalised embeddings sum to zero.")
    centroids = centroids / norms[:, None]

  # Distance of every example to its class centroid.
  to_centroid = np.empty(n)
  for start in range(0, n, chunk_size):
    rows = x[start:start + chunk_size]
    own = centroids[class_index[start:start + chunk_size]]
    if metric == "euclidean":
      diff = rows - own
      dist = np.sqrt(np.einsum("md,md->m", diff, diff))
    else:
      cos = np.einsum("md,md->m", rows, own)
      perp = rows - cos[:, None] * own
      dist = np.arctan2(np.sqrt(np.einsum("md,md->m", perp, perp)), cos)
    to_centroid[start:start + chunk_size] = dist
  to_centroid[counts[class_index] == 1] = 0.0  # exact, not rounding noise
  per_class_sum = np.bincount(class_index, weights=to_centroid,
                              minlength=num_classes)
  per_class_compactness = per_class_sum / counts
  compactness = float(np.mean(to_centroid))

  # Centroid pairs i < j, one centroid at a time against the later ones
  # (C - 1 - i rows of D), keeping a running min and sum rather than all
  # C (C - 1) / 2 distances. Direct differences, not the |a|^2 + |b|^2 - 2ab
  # expansion, so close centroids keep their digits; the cost is O(C^2 D).
  separation_min = math.inf
  separation_sum = 0.0
  for i in range(num_classes - 1):
    others = centroids[i + 1:]
    if metric == "euclidean":
      diff = others - centroids[i]
      dist = np.sqrt(np.einsum("md,md->m", diff, diff))
    else:
      dist = _angle(others, centroids[i])
    separation_min = min(separation_min, float(np.min(dist)))
    separation_sum += float(np.sum(dist))
  num_pairs = num_classes * (num_classes - 1) // 2
  if num_pairs:
    separation_mean = separation_sum / num_pairs
  else:
    separation_min = separation_mean = float("nan")

  if math.isnan(separation_mean) or (separation_mean == 0
                                     and compactness == 0):
    ratio = float("nan")
  elif compactness == 0:
    ratio = float("inf")
  else:
    ratio = separation_mean / compactness

  per_class = {
      _python_key(label): {"compactness": float(per_class_compactness[c]),
                           "count": int(counts[c])}
      for c, label in enumerate(classes)}
  return {
      "metric": metric,
      "num_samples": int(n),
      "num_classes": int(num_classes),
      "compactness": compactness,
      "separation_min": separation_min,
      "separation_mean": separation_mean,
      "ratio": float(ratio),
      "per_class": per_class,
  }


# ---------------------------------------------------------------------------
# Retrieval: precision@1, R-precision, MAP@R.


def _ranked_neighbours(keys: np.ndarray, r: int) -> np.ndarray:
  """The `r` smallest entries of one row, ordered by (key, index).

  The r-th smallest key `v` is found with a partition; every entry `<= v`
  is a candidate (more than `r` only when `v` is tied), `np.flatnonzero`
  lists the candidates in increasing index order, and a stable sort by key
  then keeps smaller indices first among equal keys. The stable sort is
  only run when the candidates hold a tie: without one, the (several times
  faster) default sort gives the same unique order.

  Args:
    keys: float64 `[N]` ranking keys of one query (itself set to `+inf`).
    r: number of neighbours, `1 <= r < N`.

  Returns:
    int64 `[r]` indices of the neighbours, nearest first.
  """
  kth = np.partition(keys, r - 1)[r - 1]
  candidates = np.flatnonzero(keys <= kth)
  values = keys[candidates]
  order = np.argsort(values)
  ranked = values[order]
  if np.any(ranked[1:] == ranked[:-1]):
    order = np.argsort(values, kind="stable")
  return candidates[order[:r]]


def retrieval_metrics(embeddings: np.ndarray, labels: np.ndarray,
                      metric: str = "euclidean",
                      chunk_size: int = 1024,
                      progress: Callable[[int, int], None] | None = None
                      ) -> dict:
  """Leave-one-out retrieval scores: precision@1, R-precision and MAP@R.

  Every embedding is a query against all the OTHER N - 1 embeddings (itself
  is left out by index, never by distance, so a duplicate of the query at
  distance 0 is still a neighbour). For a query of class y, R is the number
  of other examples of class y, the neighbours are ranked by distance, and
  `rel(i)` is 1 if the i-th nearest has class y. As in Musgrave, Belongie &
  Lim (2020):

  * `precision_at_1`: `rel(1)`.
  * `r_precision`: `(1/R) sum_{i<=R} rel(i)`, the fraction of the R nearest
    neighbours that have class y.
  * `map_at_r`: `(1/R) sum_{i<=R} P(i) rel(i)` with `P(i)` the precision of
    the i nearest neighbours.

  each averaged over the queries. A query whose class has no other member
  (R = 0) has no relevant neighbour: it is left out of all three averages
  and counted in `num_queries_skipped`. If every query is skipped (every
  class a singleton, or N = 1) the three scores are NaN.

  Ranking and ties: the euclidean rank key of neighbour j for query q is
  `|x_j|^2 - 2 q.x_j`, the squared distance minus the query's own `|q|^2`
  (the same order as the distance, without adding a constant that only
  rounds); the cosine key is `-q.x_j` on the normalised embeddings, the
  cosine distance minus 1. Neighbours are sorted by key and, among equal
  keys, by index, smaller index first (a stable sort on the index order).
  Identical embeddings (identical after normalisation for cosine) always get
  bit-identical keys, so they are always tied and ordered by index; distinct
  embeddings at mathematically equal distances tie only if their computed
  keys are equal (always, e.g., for small integer coordinates).

  Cost: `O(N^2 D)` for the matmuls plus, per query, an `O(N)` partition and
  an `O(R log R)` sort. Memory: one float64 `[chunk_size, N]` block of keys,
  allocated once and reused by every chunk (two briefly, when the
  embeddings hold duplicates), never `[N, N]`.

  Args:
    embeddings: real `[N, D]` array (any float or int dtype), all finite.
    labels: `[N]` class labels (ints or strings).
    metric: `"euclidean"` or `"cosine"` (no embedding may be all zeros).
    chunk_size: queries processed at a time. The scores do not depend on
      it, up to rounding: BLAS may pick a different kernel for a different
      number of query rows and change a dot product in its last bits, which
      can only swap two neighbours whose distances agree to ~1e-12 relative
      (identical embeddings stay exactly tied).
    progress: optional `progress(done, total)`, called after each chunk
      with the number of queries processed so far and N, e.g. to print a
      progress line on a long run. Default None: silent.

  Returns:
    A dict with `metric` (str), the floats `precision_at_1`, `r_precision`
    and `map_at_r`, and the ints `num_samples` (N), `num_queries` (queries
    averaged over) and `num_queries_skipped` (queries with R = 0).
  """
  chunk_size = _check_chunk_size(chunk_size)
  if progress is not None and not callable(progress):
    raise TypeError(f"`progress` must be callable or None, got "
                    f"{progress!r}.")
  x, _, class_index, counts = _prepare(embeddings, labels, metric)
  n = x.shape[0]
  r_of = counts[class_index] - 1  # R of each query

  # Identical rows become one column of the matmul, so their keys are
  # bit-identical whatever the BLAS kernel does with different columns.
  unique_rows, inverse = np.unique(x, axis=0, return_inverse=True)
  inverse = inverse.reshape(-1)
  if unique_rows.shape[0] == n:
    unique_rows, inverse = x, None
  if metric == "euclidean":
    unique_sq = np.einsum("ud,ud->u", unique_rows, unique_rows)

  p_at_1 = np.full(n, np.nan)
  r_prec = np.full(n, np.nan)
  map_r = np.full(n, np.nan)
  products = None  # the [chunk, U] matmul output, reused by every chunk
  for start in range(0, n, chunk_size):
    stop = min(start + chunk_size, n)
    if not np.any(r_of[start:stop] > 0):
      if progress is not None:
        progress(stop, n)
      continue
    if products is None:
      products = np.empty((min(chunk_size, n), unique_rows.shape[0]))
    keys = products[:stop - start]
    # Scaling the queries by -2 (or -1) is exact, so this is bit for bit
    # -2 (or -1) times the dot products, without another pass over them.
    if metric == "euclidean":
      np.matmul(-2.0 * x[start:stop], unique_rows.T, out=keys)  # [chunk, U]
      keys += unique_sq[None, :]
    else:
      np.matmul(-x[start:stop], unique_rows.T, out=keys)
    if inverse is not None:
      keys = keys[:, inverse]                # [chunk, N]
    rows = np.arange(stop - start)
    keys[rows, start + rows] = np.inf        # leave the query itself out
    for row in rows:
      query = start + row
      r = int(r_of[query])
      if r == 0:
        continue
      neighbours = _ranked_neighbours(keys[row], r)
      rel = class_index[neighbours] == class_index[query]
      hits = np.flatnonzero(rel)             # 0-based ranks of relevant ones
      p_at_1[query] = float(rel[0])
      r_prec[query] = hits.shape[0] / r
      # P(i) at a relevant rank i (1-based) is (number of hits so far) / i.
      map_r[query] = np.sum(np.arange(1, hits.shape[0] + 1) / (hits + 1)) / r
    del keys  # the duplicates' expanded block, before the next one
    if progress is not None:
      progress(stop, n)

  evaluated = r_of > 0
  num_queries = int(np.sum(evaluated))

  def mean(values: np.ndarray) -> float:
    return float(np.mean(values[evaluated])) if num_queries else float("nan")

  return {
      "metric": metric,
      "precision_at_1": mean(p_at_1),
      "r_precision": mean(r_prec),
      "map_at_r": mean(map_r),
      "num_samples": int(n),
      "num_queries": num_queries,
      "num_queries_skipped": int(n - num_queries),
  }
