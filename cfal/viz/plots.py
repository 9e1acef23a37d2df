"""Figures for evaluation: confusion matrices and embedding scatter plots.

Figures are built as `matplotlib.figure.Figure` objects on an explicit Agg
canvas, never through pyplot, so they never open a window, work on headless
machines and in threads, and leave the process-wide matplotlib backend
alone (a notebook that imports cfal keeps its inline backend).
`figure_to_bytes` (PNG, PDF, SVG), `figure_to_png` and
`figure_to_image_tensor` turn a figure into file contents or into the
`[1, H, W, 4]` uint8 tensor `tf.summary.image` wants.
"""

from __future__ import annotations

import io
import math
import sys
import warnings
from typing import Sequence, Union

import matplotlib
import matplotlib.colors as mcolors
import numpy as np
import tensorflow as tf
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.lines import Line2D
from matplotlib.path import Path
from matplotlib.textpath import TextPath
from matplotlib.transforms import Affine2D
from sklearn.decomposition import PCA

from cfal.metrics.embedding import prototype_offsets
from cfal.viz.formats import figure_formats

# NumPy arrays, tf.Tensors and tf.Variables (anything `np.asarray` takes).
ArrayLike = Union[np.ndarray, tf.Tensor, tf.Variable, Sequence]

# Annotating cells stops being readable beyond this many classes.
MAX_ANNOTATED_CLASSES = 30
# Beyond this many classes only every k-th tick label is drawn.
MAX_TICK_LABELS = 60
# Embedding scatter markers, (points, area in points^2, alpha) at both ends
# of the range `marker_style` interpolates over.
MARKER_FEW = (300, 24.0, 0.9)
MARKER_MANY = (10_000, 4.0, 0.5)
# PDF and SVG rasterise the scatter points at least at this resolution.
VECTOR_RASTER_DPI = 200
# The caption about prototypes away from their classes appears when more
# than half of the prototypes sit farther than this many class radii from
# the mean of their points (`cfal.metrics.embedding.prototype_offsets`).
PROTOTYPE_OFFSET_RADII = 1.0


def _new_figure(width: float, height: float) -> Figure:
  """A figure on its own Agg canvas, with constrained layout."""
  fig = Figure(figsize=(width, height), layout="constrained")
  FigureCanvasAgg(fig)
  return fig


def _to_numpy(x: ArrayLike) -> np.ndarray:
  """NumPy view of an array, tensor or variable."""
  if hasattr(x, "numpy"):
    x = x.numpy()
  return np.asarray(x)


def _class_names(class_names: Sequence[str] | None,
                 num_classes: int) -> list[str]:
  if class_names is None:
    return [str(c) for c in range(num_classes)]
  names = [str(name) for name in class_names]
  if len(names) != num_classes:
    raise ValueError(f"`class_names` has {len(names)} names for "
                     f"{num_classes} classes.")
  return names


def class_colors(num_classes: int) -> np.ndarray:
  """Distinct RGBA colours `[C, 4]` from qualitative colormaps.

  tab10 up to 10 classes, tab20 up to 20 (all distinct), then tab20b and
  tab20c appended (60 colours), then the list repeats.

  Args:
    num_classes: number of classes C.
  """
  if num_classes <= 10:
    palette = matplotlib.colormaps["tab10"].colors
  else:
    palette = (matplotlib.colormaps["tab20"].colors
               + matplotlib.colormaps["tab20b"].colors
               + matplotlib.colormaps["tab20c"].colors)
  rgba = mcolors.to_rgba_array(palette)
  return rgba[np.arange(num_classes) % len(rgba)]


# ---------------------------------------------------------------------------
# Confusion matrix.


def _compact_count(value: float) -> str:
  """A count in at most ~4 characters: 7, 512, 12k, 3.4M."""
  if value != round(value):
    return f"{value:.3g}"
  value = int(round(value))
  if value < 10_000:
    return str(value)
  if value < 1_000_000:
    return f"{value / 1000:.0f}k"
  return f"{value / 1e6:.2g}M"


def _luminance(rgba: np.ndarray) -> np.ndarray:
  """Relative luminance (sRGB, WCAG) of RGBA colours `[..., 4]`."""
  rgb = rgba[..., :3]
  linear = np.where(rgb <= 0.03928, rgb / 12.92,
                    ((rgb + 0.055) / 1.055) ** 2.4)
  return linear @ np.array([0.2126, 0.7152, 0.0722])


def _matrix_panel(fig: Figure, ax: Axes, values: np.ndarray, labels: list[str],
                  *, title: str, cmap: str, vmin: float, vmax: float,
                  texts: list[str] | None, colorbar_label: str,
                  fontsize: float) -> None:
  """One annotated heat map with its colour bar."""
  num_classes = len(labels)
  colormap = matplotlib.colormaps[cmap].with_extremes(bad="#dddddd")
  # Without numbers in the cells, a square-root colour scale keeps the
  # small off-diagonal confusions visible next to the large diagonal.
  norm = (mcolors.Normalize(vmin=vmin, vmax=vmax) if texts is not None
          else mcolors.PowerNorm(0.5, vmin=vmin, vmax=vmax))
  image = ax.imshow(np.ma.masked_invalid(values), cmap=colormap, norm=norm,
                    interpolation="nearest", aspect="equal")
  colorbar = fig.colorbar(image, ax=ax, shrink=0.8)
  colorbar.set_label(colorbar_label if texts is not None
                     else f"{colorbar_label} (square-root scale)")

  step = max(1, math.ceil(num_classes / MAX_TICK_LABELS))
  ticks = np.arange(0, num_classes, step)
  tick_labels = [labels[i] for i in ticks]
  tick_size = 9.0 if num_classes <= MAX_ANNOTATED_CLASSES else 7.0
  ax.set_xticks(ticks, labels=tick_labels, rotation=45, ha="right",
                rotation_mode="anchor", fontsize=tick_size)
  ax.set_yticks(ticks, labels=tick_labels, fontsize=tick_size)
  ax.set_xlabel("predicted")
  ax.set_ylabel("true")
  ax.set_title(title)
  # Thin white lines between cells (two collections, cheaper than ticks).
  edges = np.arange(num_classes + 1) - 0.5
  ax.hlines(edges, -0.5, num_classes - 0.5, color="white", linewidth=0.5)
  ax.vlines(edges, -0.5, num_classes - 0.5, color="white", linewidth=0.5)

  if texts is None:
    return
  cell_colors = colormap(norm(np.nan_to_num(values, nan=vmin)))
  dark = _luminance(cell_colors) < 0.35
  cells = [(i, j) for i in range(num_classes) for j in range(num_classes)
           if texts[i * num_classes + j]]
  ax.add_collection(CellValues(
      fig, [texts[i * num_classes + j] for i, j in cells],
      [(j, i) for i, j in cells], ax.transData, fontsize,
      ["white" if dark[i, j] else "black" for i, j in cells]),
      autolim=False)


class CellValues(PathCollection):
  """Centred text labels drawn as one collection of glyph outlines.

  Hundreds of `Text` artists (a 25-class matrix has 1250 cell labels) take
  seconds to lay out and draw; the same strings as cached `TextPath`s in a
  single `PathCollection` draw in a fraction of that and look the same.
  The strings stay readable from `texts` (for tests and inspection).

  Args:
    fig: the figure (its dpi scales the glyphs from points to pixels).
    texts: the strings.
    offsets: `[(x, y)]` centre of each string, in `offset_transform` units.
    offset_transform: e.g. `ax.transData`.
    fontsize: in points.
    colors: one colour per string.
  """

  def __init__(self, fig: Figure, texts: Sequence[str],
               offsets: Sequence[tuple[float, float]], offset_transform,
               fontsize: float, colors: Sequence):
    prop = FontProperties(size=fontsize)
    glyphs: dict[str, Path] = {}
    for text in set(texts):
      path = TextPath((0.0, 0.0), text, size=fontsize, prop=prop)
      box = path.get_extents()
      glyphs[text] = path.transformed(Affine2D().translate(
          -(box.x0 + box.x1) / 2, -(box.y0 + box.y1) / 2))
    super().__init__([glyphs[text] for text in texts],
                     offsets=np.asarray(offsets, dtype=np.float64).reshape(
                         -1, 2),
                     offset_transform=offset_transform,
                     facecolors=list(colors), edgecolors="none",
                     linewidths=0.0)
    # Glyphs are in points: points -> inches -> pixels at the render dpi.
    self.set_transform(Affine2D().scale(1 / 72) + fig.dpi_scale_trans)
    self.texts = list(texts)


def confusion_matrix_figure(confusion: ArrayLike,
                            class_names: Sequence[str] | None = None,
                            title: str = "") -> Figure:
  """Counts and row-normalised (recall) confusion matrices side by side.

  Rows are the true class, columns the predicted class. Cells are annotated
  with their values up to `MAX_ANNOTATED_CLASSES` (30) classes, in white on
  dark cells; beyond that the colours alone carry the values, on a
  square-root scale so that small confusions stay visible. Rows with no
  examples (a class absent from the labels) are grey in the normalised
  panel. The figure grows with the number of classes and stays readable up
  to about 20-30 classes.

  Args:
    confusion: `[C, C]` counts (array, tensor or variable).
    class_names: C names for the axes; default "0", "1", ...
    title: figure title, e.g. "cfal head on fashion_mnist — validation,
      step 1200".

  Returns:
    The `matplotlib.figure.Figure` (Agg canvas; pass it to `figure_to_png`
    or `figure_to_image_tensor`).
  """
  counts = _to_numpy(confusion).astype(np.float64)
  if counts.ndim != 2 or counts.shape[0] != counts.shape[1]:
    raise ValueError(f"`confusion` must be a square [C, C] matrix, got shape "
                     f"{counts.shape}.")
  num_classes = counts.shape[0]
  labels = _class_names(class_names, num_classes)
  support = counts.sum(axis=1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    normalised = np.where(support > 0, counts / support, np.nan)

  annotate = num_classes <= MAX_ANNOTATED_CLASSES
  # About 0.45 inch per cell while annotated, within sane figure sizes.
  cell = 0.45 if annotate else 0.25
  panel = min(max(4.0, cell * num_classes + 1.5), 14.0)
  longest = max(len(name) for name in labels)
  label_room = min(0.07 * longest, 2.0)
  fig = _new_figure(2 * panel + 2.0 + label_room, panel + 0.6 + label_room)
  fontsize = 9.0 if num_classes <= 15 else 8.0

  count_texts = recall_texts = None
  if annotate:
    count_texts = [_compact_count(v) for v in counts.ravel()]
    recall_texts = ["" if np.isnan(v) else ("0" if v == 0 else f"{v:.2f}")
                    for v in normalised.ravel()]
  ax_counts, ax_recall = fig.subplots(1, 2)
  _matrix_panel(fig, ax_counts, counts, labels, title="counts", cmap="Blues",
                vmin=0.0, vmax=max(float(counts.max()), 1.0),
                texts=count_texts, colorbar_label="examples",
                fontsize=fontsize)
  _matrix_panel(fig, ax_recall, normalised, labels,
                title="row-normalised (recall)",
                cmap="Blues", vmin=0.0, vmax=1.0, texts=recall_texts,
                colorbar_label="fraction of the true class",
                fontsize=fontsize)
  total = counts.sum()
  accuracy = np.trace(counts) / total if total > 0 else float("nan")
  subtitle = f"{_compact_count(total)} examples, accuracy {accuracy:.3f}"
  fig.suptitle(f"{title}\n{subtitle}" if title else subtitle)
  return fig


# ---------------------------------------------------------------------------
# Embeddings.


def pca(x: np.ndarray, num_components: int = 2
        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Principal axes of `x`, by `sklearn.decomposition.PCA` (full SVD).

  Each component's sign is then fixed so its largest-magnitude loading is
  positive, which makes the projection deterministic (it is sklearn's
  projection up to the sign of each component).

  Args:
    x: `[N, D]` data, N >= 2.
    num_components: k <= min(N, D).

  Returns:
    `(mean [D], components [k, D], explained_variance_ratio [k])`; project
    with `(x - mean) @ components.T`. The ratios are 0 when every row of
    `x` is the same.
  """
  x = np.asarray(x, dtype=np.float64)
  if x.ndim != 2 or x.shape[0] < 2:
    raise ValueError(f"`x` must be [N, D] with N >= 2, got shape {x.shape}.")
  if not 1 <= num_components <= min(x.shape):
    raise ValueError(f"`num_components` ({num_components}) must be in "
                     f"[1, {min(x.shape)}].")
  with warnings.catch_warnings():
    # Constant data: sklearn divides by a total variance of 0 (ratio NaN).
    warnings.simplefilter("ignore", category=RuntimeWarning)
    fitted = PCA(n_components=num_components, svd_solver="full").fit(x)
  components = fitted.components_
  biggest = np.argmax(np.abs(components), axis=1)
  signs = np.sign(components[np.arange(num_components), biggest])
  components = components * np.where(signs == 0, 1.0, signs)[:, None]
  ratio = np.nan_to_num(fitted.explained_variance_ratio_, nan=0.0)
  return fitted.mean_, components, ratio


def _unit(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (zero rows stay zero)."""
  norm = np.linalg.norm(x, axis=-1, keepdims=True)
  return x / np.maximum(norm, 1e-12)


def _legend_handles(names: list[str], colors: np.ndarray,
                    with_prototypes: bool) -> list[Line2D]:
  handles = [Line2D([], [], linestyle="none", marker="o", markersize=7,
                    markerfacecolor=colors[c], markeredgecolor="none",
                    label=name) for c, name in enumerate(names)]
  if with_prototypes:
    handles.append(Line2D([], [], linestyle="none", marker="*",
                          markersize=13, markerfacecolor="white",
                          markeredgecolor="black", label="prototype"))
  return handles


def marker_style(num_points: int) -> tuple[float, float]:
  """Scatter marker area (points^2) and alpha for `num_points` points.

  Interpolated in log(num_points) between `MARKER_FEW` (few points: big,
  nearly opaque dots) and `MARKER_MANY` (many points: small translucent
  dots, so dense clusters show their density and overlaps show both
  classes), clamped outside that range.

  Args:
    num_points: how many points the scatter draws.

  Returns:
    `(size, alpha)` for `Axes.scatter(s=size, alpha=alpha)`.
  """
  (n0, s0, a0), (n1, s1, a1) = MARKER_FEW, MARKER_MANY
  t = (math.log(max(num_points, 1)) - math.log(n0)) / (
      math.log(n1) - math.log(n0))
  t = min(max(t, 0.0), 1.0)
  size = math.exp(math.log(s0) + t * (math.log(s1) - math.log(s0)))
  return size, a0 + t * (a1 - a0)


def _prototype_caption(points: np.ndarray, labels: np.ndarray,
                       prototypes: np.ndarray,
                       origin: np.ndarray) -> str | None:
  """One line saying where the prototypes sit, if most are off their class.

  Measured in the plotted coordinates by
  `cfal.metrics.embedding.prototype_offsets`, with norms and angles from
  `origin` (where the embedding space's 0 is plotted). Shown when more
  than half of the judged prototypes (those with an offset) lie more than
  `PROTOTYPE_OFFSET_RADII` class radii from the mean of their points.
  When they are in the direction of their class means (median cosine >=
  0.9) at a clearly different norm (median ratio off 1 by 0.2 or more) the
  line gives the median norm ratio, else the median offset in class radii.

  Args:
    points: `[N, k]` plotted points.
    labels: `[N]` their classes in `[0, C)`.
    prototypes: `[C, K, k]` plotted prototypes.
    origin: `[k]` the embedding space's origin in these coordinates.
  """
  offsets = prototype_offsets(points - origin, labels, prototypes - origin)
  offsets = {key: value.reshape(-1) for key, value in offsets.items()}
  judged = ~np.isnan(offsets["offset"])
  if not judged.any():
    return None
  away = offsets["offset"][judged] > PROTOTYPE_OFFSET_RADII
  if away.mean() <= 0.5:
    return None
  count = int(judged.sum())
  cosine = offsets["cosine"][judged]
  ratio = offsets["norm_ratio"][judged]
  r = float(np.median(ratio)) if not np.isnan(ratio).any() else 1.0
  if (not np.isnan(cosine).any() and np.median(cosine) >= 0.9
      and abs(r - 1) >= 0.2):
    where = ("the embeddings lie beyond them" if r < 1
             else "the embeddings lie short of them")
    return (f"Prototypes (\u2605) sit at {r:.2g}\u00d7 the norm of their "
            f"class means (median of {count}): {where}, not a plotting "
            f"error.")
  return (f"Prototypes (\u2605) sit {np.median(offsets['offset'][judged]):.2g}"
          f" class radii from their class means (median of {count}), not a "
          f"plotting error.")


def embedding_figure(embeddings: ArrayLike, labels: ArrayLike,
                     class_names: Sequence[str] | None = None,
                     title: str = "", prototypes: ArrayLike | None = None,
                     metric: str = "euclidean", max_points: int = 5000,
                     seed: int = 0) -> Figure:
  """Scatter plot of embeddings coloured by class, with class prototypes.

  * D == 2: the embeddings as they are, with equal scales on both axes
    (a center-loss picture's rays keep their angles and lengths).
  * D == 3: a 3-D scatter; with `metric="cosine"` the points and
    prototypes are first normalised onto the unit sphere (a faint wire
    sphere is drawn), as in the ArcFace-on-MNIST pictures.
  * D > 3: a PCA projection to 2-D (scikit-learn's PCA of the plotted
    points, signs fixed as in `pca`; axis labels give each component's
    share of the variance), with the prototypes projected by the same
    PCA. With `metric="cosine"` the points and prototypes are normalised
    to unit length before the PCA, since cosine heads only see directions.

  For `metric="cosine"` in 2-D the prototypes are directions of arbitrary
  length, so they are drawn at unit direction times the 90th percentile of
  the embedding norms, on a dashed ray from the origin.

  At most `max_points` points are drawn, a random subset chosen with
  `seed`, in random order so no class is systematically painted over.
  Their size and opacity shrink as their number grows (`marker_style`),
  and they are one rasterised layer in PDF and SVG. Rows with NaN or inf
  are dropped (and counted in the panel title), so a diverging run still
  gets its picture.

  With `metric="euclidean"` and prototypes, a one-line caption under the
  axes says where the prototypes sit when more than half of them are
  farther than `PROTOTYPE_OFFSET_RADII` class radii from the mean of their
  class's plotted points (`cfal.metrics.embedding.prototype_offsets`,
  measured in the plotted coordinates: after the PCA for D > 3, so its
  numbers can differ from those of `prototype_geometry` in report.json,
  which are measured in the embedding space). Trained CFAL/affinity heads
  leave the embeddings beyond their prototypes, which otherwise looks like
  a plotting error; the caption then gives the median |prototype| / |class
  mean| (norms from the embedding space's origin).

  Args:
    embeddings: `[N, D]`, D >= 2 (array, tensor or variable).
    labels: `[N]` integer classes in `[0, C)`.
    class_names: C names for the legend; default "0", "1", ... (C is then
      the number of prototypes if given, else `max(labels) + 1`).
    title: figure title.
    prototypes: optional `[C, D]` or `[C, m, D]` class prototypes (e.g.
      `head.prototypes`), drawn as black-edged stars in the class colour.
    metric: "euclidean" or "cosine", the head's `embedding_metric`.
    max_points: the most points drawn.
    seed: seed of the subsample.

  Returns:
    The `matplotlib.figure.Figure`.
  """
  if metric not in ("euclidean", "cosine"):
    raise ValueError(f"`metric` must be 'euclidean' or 'cosine', got "
                     f"{metric!r}.")
  if max_points < 1:
    raise ValueError(f"`max_points` ({max_points}) must be >= 1.")
  x = _to_numpy(embeddings).astype(np.float64)
  y = _to_numpy(labels).reshape(-1)
  if x.ndim != 2 or x.shape[1] < 2:
    raise ValueError(f"`embeddings` must be [N, D] with D >= 2, got shape "
                     f"{x.shape}.")
  if y.shape[0] != x.shape[0]:
    raise ValueError(f"{y.shape[0]} labels for {x.shape[0]} embeddings.")
  if y.size and not np.issubdtype(y.dtype, np.integer):
    if not np.all(np.equal(np.mod(y, 1), 0)):
      raise ValueError("`labels` must be integer class ids.")
  y = y.astype(np.int64)
  dim = x.shape[1]

  protos = None
  if prototypes is not None:
    protos = _to_numpy(prototypes).astype(np.float64)
    if protos.ndim == 2:
      protos = protos[:, None, :]
    if protos.ndim != 3 or protos.shape[-1] != dim:
      raise ValueError(f"`prototypes` must be [C, {dim}] or [C, m, {dim}], "
                       f"got shape {protos.shape}.")
  if class_names is not None:
    num_classes = len(class_names)
  elif protos is not None:
    num_classes = protos.shape[0]
  else:
    num_classes = int(y.max()) + 1 if y.size else 1
  names = _class_names(class_names, num_classes)
  if protos is not None and protos.shape[0] != num_classes:
    raise ValueError(f"`prototypes` has {protos.shape[0]} classes, "
                     f"`class_names` {num_classes}.")
  if y.size and (y.min() < 0 or y.max() >= num_classes):
    raise ValueError(f"`labels` must be in [0, {num_classes}), got "
                     f"[{y.min()}, {y.max()}].")

  finite = np.all(np.isfinite(x), axis=1)
  dropped = int((~finite).sum())
  x, y = x[finite], y[finite]
  total = x.shape[0]
  rng = np.random.default_rng(seed)
  order = rng.permutation(total)[:max_points]
  x, y = x[order], y[order]

  proto_classes = None
  if protos is not None:
    proto_classes = np.repeat(np.arange(num_classes), protos.shape[1])
    protos = protos.reshape(-1, dim)
  if metric == "cosine" and dim >= 3:
    x = _unit(x)
    if protos is not None:
      protos = _unit(protos)

  colors = class_colors(num_classes)
  shown = (f"{x.shape[0]:,} of {total:,} points" if x.shape[0] < total
           else f"{total:,} points")
  if dropped:
    shown += f", {dropped:,} non-finite dropped"
  size, alpha = marker_style(x.shape[0])
  legend_cols = max(1, math.ceil(num_classes / 20))
  fig = _new_figure(7.0 + 1.4 * legend_cols, 6.2)

  if dim == 3:
    # Draw in call order (prototypes last, on top) rather than by depth.
    ax = fig.add_subplot(projection="3d", computed_zorder=False)
    if metric == "cosine":
      u, v = np.mgrid[0:2 * np.pi:25j, 0:np.pi:13j]
      ax.plot_wireframe(np.cos(u) * np.sin(v), np.sin(u) * np.sin(v),
                        np.cos(v), color="0.8", linewidth=0.4)
    ax.scatter(x[:, 0], x[:, 1], x[:, 2], c=colors[y], s=size,
               linewidths=0, alpha=alpha, depthshade=False, rasterized=True)
    if protos is not None:
      ax.scatter(protos[:, 0], protos[:, 1], protos[:, 2],
                 c=colors[proto_classes], s=220, marker="*",
                 edgecolors="black", linewidths=1.0, depthshade=False,
                 zorder=3)
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    ax.set_zlabel("dim 3")
    points, origin = x, np.zeros(3)
    view = ("unit sphere (cosine)" if metric == "cosine"
            else "3-D embeddings")
    if metric == "cosine":
      ax.set_box_aspect((1, 1, 1))
      for axis in (ax.xaxis, ax.yaxis, ax.zaxis):
        axis.set_ticks([-1.0, -0.5, 0.0, 0.5, 1.0])
  else:
    ax = fig.add_subplot()
    if dim == 2:
      points, origin = x, np.zeros(2)
      ax.set_xlabel("dim 1")
      ax.set_ylabel("dim 2")
      view = "2-D embeddings"
      if protos is not None and metric == "cosine":
        norms = np.linalg.norm(x, axis=1)
        radius = float(np.percentile(norms, 90)) if norms.size else 1.0
        protos = _unit(protos) * (radius if radius > 0 else 1.0)
        for p, c in zip(protos, proto_classes):
          ax.plot([0.0, p[0]], [0.0, p[1]], linestyle="--", linewidth=1.0,
                  color=colors[c], zorder=2)
    else:
      if x.shape[0] >= 2:
        mean, components, ratio = pca(x, 2)
      else:
        mean, components, ratio = np.zeros(dim), np.eye(2, dim), np.zeros(2)
      points = (x - mean) @ components.T
      origin = -mean @ components.T   # where the embeddings' 0 lands
      if protos is not None:
        protos = (protos - mean) @ components.T
      ax.set_xlabel(f"PC1 ({100 * ratio[0]:.1f}% of variance)")
      ax.set_ylabel(f"PC2 ({100 * ratio[1]:.1f}% of variance)")
      kind = "unit-normalised " if metric == "cosine" else ""
      view = f"PCA of {kind}{dim}-D embeddings"
    # Rasterised: in PDF/SVG the points become one image at the save dpi
    # (10,000 vector dots would make a file of megabytes), while text,
    # axes and prototypes stay vector.
    ax.scatter(points[:, 0], points[:, 1], c=colors[y], s=size,
               linewidths=0, alpha=alpha, zorder=1, rasterized=True)
    if protos is not None:
      ax.scatter(protos[:, 0], protos[:, 1], c=colors[proto_classes], s=260,
                 marker="*", edgecolors="black", linewidths=1.2, zorder=3)
    if dim == 2:
      # One unit is as long on both axes, so radial clusters (center loss,
      # cosine heads) keep their angles and lengths.
      ax.set_aspect("equal", adjustable="datalim")
    ax.grid(True, linewidth=0.3, alpha=0.5)
  ax.set_title(f"{view}, {shown}", fontsize=10)
  if protos is not None and metric == "euclidean":
    caption = _prototype_caption(
        points, y, protos.reshape(num_classes, -1, protos.shape[-1]), origin)
    if caption:
      fig.supxlabel(caption, fontsize=8.5, color="0.2")
  fig.legend(handles=_legend_handles(names, colors, protos is not None),
             loc="outside right center", ncols=legend_cols, fontsize=8,
             frameon=False, title="class")
  if title:
    fig.suptitle(title)
  return fig


# ---------------------------------------------------------------------------
# Export.


def _close(fig: Figure) -> None:
  """Releases a figure; unregisters it from pyplot if pyplot made it."""
  pyplot = sys.modules.get("matplotlib.pyplot")
  if pyplot is not None and getattr(fig.canvas, "manager", None) is not None:
    pyplot.close(fig)
  fig.clear()


def figure_to_bytes(fig: Figure, formats: Sequence[str] = ("png",),
                    dpi: float = 100, *, close: bool = True
                    ) -> dict[str, bytes]:
  """Renders a figure once per format and closes it (unless `close` is
  False, for another rendering).

  PDF and SVG keep text, lines and markers as vectors; the embedding
  scatter points are rasterised (`rasterized=True`) at `dpi`, or at
  `VECTOR_RASTER_DPI` if that is more, so that print stays sharp.

  Args:
    fig: a matplotlib figure (from this module or from pyplot).
    formats: any of `FIGURE_FORMATS` ("png", "pdf", "svg").
    dpi: resolution of PNGs (pixels per inch of the figure's size).

  Returns:
    `{format: file contents}`, in the order of `formats`.

  Raises:
    ValueError: a format not in `FIGURE_FORMATS`.
  """
  formats = figure_formats(formats)
  try:
    rendered = {}
    for fmt in formats:
      buffer = io.BytesIO()
      fig.savefig(buffer, format=fmt, dpi=dpi if fmt == "png"
                  else max(dpi, VECTOR_RASTER_DPI))
      rendered[fmt] = buffer.getvalue()
  finally:
    if close:
      _close(fig)
  return rendered


def figure_to_png(fig: Figure, dpi: float = 100) -> bytes:
  """Renders a figure to PNG bytes and closes it.

  Args:
    fig: a matplotlib figure (from this module or from pyplot).
    dpi: resolution; the default 100 keeps TensorBoard images moderate.

  Returns:
    The PNG file contents.
  """
  return figure_to_bytes(fig, ("png",), dpi)["png"]


def figure_to_image_tensor(fig: Figure, dpi: float = 100) -> tf.Tensor:
  """Renders a figure to a uint8 `[1, H, W, 4]` RGBA tensor and closes it.

  The result goes straight into `tf.summary.image(name, image, step)`.

  Args:
    fig: a matplotlib figure.
    dpi: resolution.

  Returns:
    uint8 tensor `[1, H, W, 4]`.
  """
  image = tf.io.decode_png(figure_to_png(fig, dpi=dpi), channels=4)
  return image[tf.newaxis]
