"""Embedding-space metrics: class compactness/separation, retrieval scores
and where the prototypes sit.

All run on the host in NumPy and accumulate in float64. The first two never
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
* `prototype_geometry(embeddings, labels, prototypes, metric)`: each
  prototype's norm, direction and distance relative to the mean of its
  class's points (`prototype_offsets` does the math in given coordinates,
  also for the embedding picture's caption).

`metric` is `"euclidean"` (L2 distance) or `"cosine"` (the embeddings are L2
normalised first; compactness and separation are then angles in radians and
retrieval ranks by cosine distance `1 - cos`). The dicts hold plain Python
`float`s and `int`s (and None for a prototype value that is undefined), so
they can go straight to JSON.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

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


# ---------------------------------------------------------------------------
# Where the prototypes sit relative to their classes.

# A prototype with fewer of its class's points than this is not measured.
MIN_POINTS_PER_PROTOTYPE = 5
# The per-prototype quantities, in the order reports list them.
PROTOTYPE_QUANTITIES = ("norm_ratio", "cosine", "fraction_to_mean",
                        "offset")


def prototype_offsets(points: np.ndarray, labels: np.ndarray,
                      prototypes: np.ndarray,
                      min_points: int = MIN_POINTS_PER_PROTOTYPE
                      ) -> dict[str, np.ndarray]:
  """Where each prototype sits relative to the points it stands for.

  Each point of class c belongs to the nearest (L2) of class c's K
  prototypes; with one prototype per class, all of them do. For a
  prototype p whose points have mean mu and class radius r (the RMS
  distance of those points to mu), with norms and angles taken from the
  origin of the coordinates given:

  * `norm_ratio` = |p| / |mu|;
  * `cosine` = p.mu / (|p| |mu|);
  * `fraction_to_mean` = p.mu / |mu|^2 = norm_ratio * cosine: how far p
    has come along the way from the origin to mu (0.4: p projects onto
    the segment 40% of the way out; 1: level with mu);
  * `offset` = |p - mu| / r: 0 on the mean, above 1 outside the class's
    typical radius.

  A prototype with fewer than `min_points` points gets NaN everywhere. The
  others get NaN where a value is undefined: `norm_ratio`, `cosine` and
  `fraction_to_mean` when mu = 0, `cosine` when p = 0, `offset` when r = 0
  (all points on one spot), and any value a non-finite prototype makes.

  Args:
    points: float `[N, k]` finite coordinates (N may be 0).
    labels: int `[N]` classes, in `[0, C)`.
    prototypes: float `[C, K, k]` prototypes in the same coordinates.
    min_points: the fewest points a prototype is measured on.

  Returns:
    `{"points": int64 [C, K]}` (points assigned to each prototype) and
    float64 `[C, K]` arrays under each name of `PROTOTYPE_QUANTITIES`.
  """
  x = np.asarray(points, dtype=np.float64)
  y = np.asarray(labels).reshape(-1)
  protos = np.asarray(prototypes, dtype=np.float64)
  num_classes, per_class = protos.shape[:2]
  out = {key: np.full((num_classes, per_class), np.nan)
         for key in PROTOTYPE_QUANTITIES}
  out["points"] = np.zeros((num_classes, per_class), np.int64)
  order = np.argsort(y, kind="stable")
  bounds = np.searchsorted(y[order], np.arange(num_classes + 1))
  for c in range(num_classes):
    pts = x[order[bounds[c]:bounds[c + 1]]]
    if per_class == 1:
      nearest = np.zeros(pts.shape[0], np.int64)
    else:
      # One prototype at a time: an [n_c, K, D] difference can be large.
      distances = np.empty((pts.shape[0], per_class))
      for j in range(per_class):
        diff = pts - protos[c, j]
        distances[:, j] = np.einsum("nd,nd->n", diff, diff)
      distances[~np.isfinite(distances)] = np.inf
      nearest = np.argmin(distances, axis=1)
    out["points"][c] = np.bincount(nearest, minlength=per_class)
    for j in range(per_class):
      mine = pts[nearest == j]
      if mine.shape[0] < max(min_points, 1):
        continue
      p = protos[c, j]
      mean = mine.mean(axis=0)
      radius = math.sqrt(np.mean(np.sum((mine - mean) ** 2, axis=1)))
      p_norm, m_norm = float(np.linalg.norm(p)), float(np.linalg.norm(mean))
      dot = float(p @ mean)
      if radius > 0:
        out["offset"][c, j] = np.linalg.norm(p - mean) / radius
      if m_norm > 0:
        out["norm_ratio"][c, j] = p_norm / m_norm
        out["fraction_to_mean"][c, j] = dot / (m_norm * m_norm)
        if p_norm > 0:
          out["cosine"][c, j] = dot / (p_norm * m_norm)
  for key in PROTOTYPE_QUANTITIES:
    out[key][~np.isfinite(out[key])] = np.nan
  return out


def _json_number(value: float) -> float | None:
  """A float, or None (JSON null) for NaN and inf."""
  return float(value) if math.isfinite(value) else None


def prototype_geometry(embeddings: np.ndarray, labels: np.ndarray,
                       prototypes: np.ndarray, metric: str = "euclidean",
                       class_names: Sequence[str] | None = None,
                       min_points: int = MIN_POINTS_PER_PROTOTYPE) -> dict:
  """Where a head's prototypes sit relative to their class means.

  The quantities of `prototype_offsets` for every prototype, and their
  medians, so a report can say e.g. "the prototypes end at 0.4 of the way
  to their class means" (`fraction_to_mean_median` = 0.4).

  The space: for `"euclidean"` the embedding space itself, origin at 0.
  For `"cosine"` (heads that only see directions) the L2-normalised
  embeddings and prototypes, as the embedding picture draws them: the
  points lie on the unit sphere, a class mean inside it, so a prototype
  on its class's mean direction has `norm_ratio` = 1 / |mu| >= 1 and
  `fraction_to_mean` the same; all-zero prototypes stay at 0 there.

  With K prototypes per class (`[C, K, D]`, e.g. sub-centers), each point
  of class c belongs to the nearest of class c's K prototypes and each
  prototype is measured on its own points. A prototype with fewer than
  `min_points` points (e.g. a class absent from `labels`, or an unused
  sub-center) gets null values and is left out of the medians, as is any
  value that is undefined (see `prototype_offsets`). Rows of `embeddings`
  with NaN or inf, and for `"cosine"` all-zero rows, are left out and
  counted in `num_dropped`.

  Args:
    embeddings: real `[N, D]` array (N may be 0).
    labels: `[N]` integer classes in `[0, C)`, indices into `prototypes`.
    prototypes: `[C, D]` or `[C, K, D]` class prototypes (`head.prototypes`).
    metric: `"euclidean"` or `"cosine"`, the head's `embedding_metric`.
    class_names: C names for the `per_class` keys; default the class
      indices.
    min_points: the fewest points a prototype is measured on.

  Returns:
    A JSON-ready dict: `metric`, `space` (what was measured in),
    `num_classes`, `prototypes_per_class`, `num_samples` (rows used),
    `num_dropped`, `min_points`, `measured` (prototypes with at least
    `min_points` points), the medians `norm_ratio_median`,
    `cosine_median`, `fraction_to_mean_median` and `offset_median` (each
    over the prototypes where it is defined; None if none is), and
    `per_class`: `{name: {"count": points of the class, "points",
    "norm_ratio", "cosine", "fraction_to_mean", "offset"}}`, where the
    last five are numbers for `[C, D]` prototypes and lists of K for
    `[C, K, D]`; undefined values are None.
  """
  _check_metric(metric)
  x = np.asarray(embeddings)
  if x.ndim != 2:
    raise ValueError(f"`embeddings` must be an [N, D] array, got shape "
                     f"{x.shape}.")
  if not np.issubdtype(x.dtype, np.number) or np.iscomplexobj(x):
    raise TypeError(f"`embeddings` must be real numbers, got dtype {x.dtype}.")
  x = x.astype(np.float64)
  protos = np.asarray(prototypes, dtype=np.float64)
  flat = protos.ndim == 2
  if flat:
    protos = protos[:, None, :]
  if protos.ndim != 3 or protos.shape[0] < 1 or protos.shape[1] < 1 or (
      protos.shape[-1] != x.shape[1]):
    raise ValueError(f"`prototypes` must be [C, {x.shape[1]}] or "
                     f"[C, K, {x.shape[1]}], got shape "
                     f"{np.shape(prototypes)}.")
  num_classes, per_class = protos.shape[:2]
  y = np.asarray(labels).reshape(-1)
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} embeddings.")
  if y.size and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0
                 or y.max() >= num_classes):
    raise ValueError(f"`labels` must be integers in [0, {num_classes}), "
                     f"the rows of `prototypes`.")
  names = (list(range(num_classes)) if class_names is None
           else [str(n) for n in class_names])
  if len(names) != num_classes:
    raise ValueError(f"{len(names)} class names for {num_classes} "
                     f"prototype classes.")
  keep = np.all(np.isfinite(x), axis=1)
  if metric == "cosine":
    norms = np.sqrt(np.einsum("nd,nd->n", x, x))
    keep &= norms > 0
    x = x / np.where(keep, norms, 1.0)[:, None]
    p_norms = np.linalg.norm(protos, axis=-1, keepdims=True)
    protos = protos / np.where(p_norms > 0, p_norms, 1.0)
  x, y = x[keep], y[keep]
  values = prototype_offsets(x, y, protos, min_points)
  counts = np.bincount(y.astype(np.int64), minlength=num_classes)

  def cell(array: np.ndarray, c: int):
    row = [_json_number(v) if array.dtype.kind == "f" else int(v)
           for v in array[c]]
    return row[0] if flat else row

  summary = {}
  for key in PROTOTYPE_QUANTITIES:
    defined = values[key][np.isfinite(values[key])]
    summary[f"{key}_median"] = (float(np.median(defined)) if defined.size
                                else None)
  return {
      "metric": metric,
      "space": ("embeddings" if metric == "euclidean" else
                "L2-normalised embeddings and prototypes"),
      "num_classes": int(num_classes),
      "prototypes_per_class": int(per_class),
      "num_samples": int(x.shape[0]),
      "num_dropped": int(np.sum(~keep)),
      "min_points": int(min_points),
      "measured": int(np.sum(values["points"] >= max(min_points, 1))),
      **summary,
      "per_class": {
          name: {"count": int(counts[c]), "points": cell(values["points"], c),
                 **{key: cell(values[key], c) for key in PROTOTYPE_QUANTITIES}}
          for c, name in enumerate(names)},
  }
