"""cfal.viz: figures render off-screen to PNGs and image tensors."""

from __future__ import annotations

import io

import matplotlib
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure
from PIL import Image
from sklearn.decomposition import PCA

from cfal.viz.plots import CellValues
from cfal.viz import (class_colors, confusion_matrix_figure, embedding_figure,
                      figure_to_image_tensor, figure_to_png, pca)

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal",
           "Shirt", "Sneaker", "Bag", "Ankle boot"]
TITLE = "cfal head on fashion_mnist — validation, step 1200"


def _confusion(num_classes: int, seed: int = 0) -> np.ndarray:
  rng = np.random.default_rng(seed)
  counts = rng.integers(0, 20, (num_classes, num_classes))
  counts[np.diag_indices(num_classes)] += 200
  return counts


def _blobs(num_classes: int, dim: int, n: int, centers_per_class: int = 1,
           seed: int = 0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_classes, centers_per_class, dim)) * 3
  y = np.arange(n) % num_classes
  k = rng.integers(0, centers_per_class, n)
  x = centers[y, k] + rng.normal(size=(n, dim))
  return x.astype(np.float32), y.astype(np.int32), centers.astype(np.float32)


def _decode(png: bytes) -> np.ndarray:
  assert png[:8] == b"\x89PNG\r\n\x1a\n"
  return np.asarray(Image.open(io.BytesIO(png)))


def _cells(ax) -> CellValues | None:
  """The panel's cell annotations, if any."""
  found = [c for c in ax.collections if isinstance(c, CellValues)]
  assert len(found) <= 1
  return found[0] if found else None


def test_rendering_leaves_the_matplotlib_backend_alone():
  backend = matplotlib.get_backend()
  figure_to_png(confusion_matrix_figure(_confusion(3), None, "t"))
  assert matplotlib.get_backend() == backend


@pytest.mark.parametrize("num_classes", [2, 10])
def test_confusion_figure(num_classes):
  names = FASHION[:num_classes]
  confusion = _confusion(num_classes)
  fig = confusion_matrix_figure(confusion, names, TITLE)
  assert isinstance(fig, Figure)
  assert TITLE in fig.get_suptitle()
  panels = [ax for ax in fig.axes if ax.get_title()]
  assert [ax.get_title() for ax in panels] == [
      "counts", "row-normalised (recall)"]
  assert len(fig.axes) == 4                    # two panels, two colour bars
  for ax in panels:
    assert [t.get_text() for t in ax.get_xticklabels()] == names
    assert [t.get_text() for t in ax.get_yticklabels()] == names
    assert ax.get_xlabel() == "predicted" and ax.get_ylabel() == "true"
    assert len(_cells(ax).texts) == num_classes ** 2
  counts_ax, recall_ax = panels
  counts_cells, recall_cells = _cells(counts_ax), _cells(recall_ax)
  assert counts_cells.texts[:2] == [str(confusion[0, 0]),
                                    str(confusion[0, 1])]
  recall = confusion[0, 0] / confusion[0].sum()
  assert recall_cells.texts[0] == f"{recall:.2f}"
  # Cell (row 0, column 1) is drawn at x=1, y=0.
  np.testing.assert_array_equal(counts_cells.get_offsets()[1], [1, 0])
  # The dark diagonal is annotated in white, the pale off-diagonal in black.
  colors = counts_cells.get_facecolors()
  np.testing.assert_array_equal(colors[0], [1, 1, 1, 1])
  np.testing.assert_array_equal(colors[1], [0, 0, 0, 1])
  image = _decode(figure_to_png(fig))
  assert image.ndim == 3 and image.shape[2] == 4 and image.dtype == np.uint8


def test_confusion_figure_25_classes_and_absent_class():
  confusion = _confusion(25)
  confusion[3] = 0                             # class 3 absent from labels
  names = [f"class_{i:02d}" for i in range(25)]
  fig = confusion_matrix_figure(tf.constant(confusion), names, TITLE)
  counts_ax, recall_ax = (ax for ax in fig.axes if ax.get_title())
  assert len(_cells(counts_ax).texts) == 25 * 25     # still annotated
  assert len(_cells(recall_ax).texts) == 24 * 25     # empty row left blank
  image = figure_to_image_tensor(fig)
  assert image.dtype == tf.uint8
  assert image.shape[0] == 1 and image.shape[3] == 4
  assert image.shape[1] >= 1000 and image.shape[2] >= 2000


def test_confusion_figure_drops_annotations_above_30_classes():
  fig = confusion_matrix_figure(_confusion(35), None, "")
  panels = [ax for ax in fig.axes if ax.get_title()]
  assert all(_cells(ax) is None for ax in panels)
  assert [t.get_text() for t in panels[0].get_xticklabels()] == [
      str(i) for i in range(35)]
  assert "accuracy" in fig.get_suptitle()
  fig.clear()


def test_confusion_figure_errors():
  with pytest.raises(ValueError, match="square"):
    confusion_matrix_figure(np.ones((2, 3)))
  with pytest.raises(ValueError, match="2 names for 3"):
    confusion_matrix_figure(np.eye(3), ["a", "b"])


@pytest.mark.parametrize("dim, metric, prototype_shape", [
    (2, "euclidean", None),
    (2, "cosine", "CD"),
    (3, "euclidean", "CD"),
    (3, "cosine", "CmD"),
    (16, "euclidean", "CmD"),
    (16, "cosine", None),
])
def test_embedding_figure(dim, metric, prototype_shape):
  x, y, centers = _blobs(10, dim, 600, centers_per_class=3)
  prototypes = {None: None, "CD": centers[:, 0],
                "CmD": tf.Variable(centers)}[prototype_shape]
  fig = embedding_figure(x, y, FASHION, TITLE, prototypes=prototypes,
                         metric=metric)
  assert fig.get_suptitle() == TITLE
  ax = fig.axes[0]
  assert "600 points" in ax.get_title()
  if dim == 3:
    assert ax.name == "3d" and ax.get_zlabel() == "dim 3"
  elif dim == 2:
    assert ax.get_xlabel() == "dim 1"
  else:
    assert ax.get_xlabel().startswith("PC1 (") and "% of variance" in (
        ax.get_xlabel())
    assert ax.get_ylabel().startswith("PC2 (")
    assert "PCA of" in ax.get_title()
  legend = fig.legends[0]
  labels = [t.get_text() for t in legend.get_texts()]
  assert labels[:10] == FASHION
  assert ("prototype" in labels) == (prototypes is not None)
  # Points plus, when given, one star per prototype.
  offsets = [len(c.get_offsets()) for c in ax.collections
             if c.get_offsets().size]
  assert 600 in offsets
  if prototype_shape == "CD":
    assert 10 in offsets
  elif prototype_shape == "CmD":
    assert 30 in offsets
  image = figure_to_image_tensor(fig)
  assert image.dtype == tf.uint8 and image.shape[0] == 1
  assert image.shape[3] == 4 and image.shape[1] > 300 and image.shape[2] > 300


def test_embedding_figure_25_classes_subsampled():
  x, y, centers = _blobs(25, 8, 900)
  fig = embedding_figure(x, y, None, "25 classes", prototypes=centers,
                         max_points=400)
  ax = fig.axes[0]
  assert "400 of 900 points" in ax.get_title()
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels == [str(i) for i in range(25)] + ["prototype"]
  png = figure_to_png(fig)
  assert _decode(png).shape[2] == 4
  # The subsample is fixed by the seed: the same figure twice is identical.
  again = embedding_figure(x, y, None, "25 classes", prototypes=centers,
                           max_points=400)
  assert figure_to_png(again) == png


def test_embedding_figure_cosine_sphere_is_unit():
  x, y, centers = _blobs(4, 3, 200)
  fig = embedding_figure(x * 7.0, y, None, "", prototypes=centers * 0.1,
                         metric="cosine")
  ax = fig.axes[0]
  points = [c for c in ax.collections if hasattr(c, "_offsets3d")]
  assert len(points) == 2
  for collection in points:
    xs, ys, zs = (np.asarray(a) for a in collection._offsets3d)
    np.testing.assert_allclose(np.sqrt(xs**2 + ys**2 + zs**2), 1.0,
                               rtol=1e-6)
  fig.clear()


def test_embedding_figure_drops_non_finite_rows():
  x, y, _ = _blobs(3, 2, 90)
  x[:5] = np.nan
  fig = embedding_figure(x, y, None, "")
  assert "85 points, 5 non-finite dropped" in fig.axes[0].get_title()
  fig.clear()


@pytest.mark.parametrize("kwargs, error, fragment", [
    ({"embeddings": np.zeros((4, 1))}, ValueError, "D >= 2"),
    ({"labels": np.array([0, 1, 2, 5])}, ValueError, "labels"),
    ({"prototypes": np.zeros((3, 4))}, ValueError, "prototypes"),
    ({"metric": "dot"}, ValueError, "metric"),
])
def test_embedding_figure_errors(kwargs, error, fragment):
  args = {"embeddings": np.zeros((4, 3)), "labels": np.array([0, 1, 2, 0]),
          "class_names": ["a", "b", "c"]}
  args.update(kwargs)
  with pytest.raises(error, match=fragment):
    embedding_figure(**args)


@pytest.mark.parametrize("seed", [0, 1])
def test_pca_matches_sklearn_up_to_sign(seed):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(300, 16)) @ rng.normal(size=(16, 16)) + 5.0
  mean, components, ratio = pca(x, 2)
  ours = (x - mean) @ components.T
  reference = PCA(n_components=2).fit(x)
  theirs = reference.transform(x)
  signs = np.sign(np.sum(ours * theirs, axis=0))
  np.testing.assert_allclose(ours, theirs * signs, rtol=1e-6, atol=1e-8)
  np.testing.assert_allclose(ratio, reference.explained_variance_ratio_,
                             rtol=1e-8)


def test_class_colors_distinct_up_to_20():
  for num_classes in (2, 10, 20):
    colors = class_colors(num_classes)
    assert colors.shape == (num_classes, 4)
    assert len({tuple(c) for c in colors}) == num_classes
  assert len({tuple(c) for c in class_colors(60)}) == 60


def test_figure_to_png_closes_pyplot_figures():
  import matplotlib.pyplot as plt  # only here: the library never imports it
  previous = plt.get_backend()
  plt.switch_backend("Agg")
  try:
    fig = plt.figure()
    fig.gca().plot([0, 1], [1, 0])
    number = fig.number
    assert plt.fignum_exists(number)
    image = _decode(figure_to_png(fig))
    assert image.shape == (480, 640, 4)
    assert not plt.fignum_exists(number)
  finally:
    plt.switch_backend(previous)


def test_embedding_figure_two_classes_pca_with_multi_center_prototypes():
  x, y, centers = _blobs(2, 6, 120, centers_per_class=2)
  fig = embedding_figure(x, y, ["benign", "malignant"], "two classes",
                         prototypes=centers)
  labels = [t.get_text() for t in fig.legends[0].get_texts()]
  assert labels == ["benign", "malignant", "prototype"]
  offsets = sorted(len(c.get_offsets()) for c in fig.axes[0].collections)
  assert offsets == [4, 120]
  image = figure_to_image_tensor(fig)
  assert image.dtype == tf.uint8 and image.shape[-1] == 4


def test_pca_signs_deterministic_and_constant_data():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
  _, components, _ = pca(x, 3)
  biggest = np.argmax(np.abs(components), axis=1)
  assert np.all(components[np.arange(3), biggest] > 0)
  _, flipped, _ = pca(-x, 3)      # the same axes, whatever the data's sign
  np.testing.assert_allclose(flipped, components, atol=1e-10)
  mean, _, ratio = pca(np.full((5, 4), 3.0), 2)
  np.testing.assert_array_equal(mean, 3.0)
  np.testing.assert_array_equal(ratio, 0.0)
