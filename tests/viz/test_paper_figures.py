"""Figures a paper can use: formats, dpi, aspect, marker sizes, caption."""

from __future__ import annotations

import io
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from cfal.viz import (FIGURE_FORMATS, embedding_figure, figure_formats,
                      figure_to_bytes, figure_to_png)
from cfal.viz import plots

ROOT = pathlib.Path(__file__).resolve().parents[2]
MAGIC = {"png": b"\x89PNG\r\n\x1a\n", "pdf": b"%PDF-", "svg": b"<?xml"}


def _radiating(n: int, seed: int = 0):
  """Center-loss-like 2-D embeddings: 10 rays from the origin, and the
  class means (where center-loss centers end up)."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 10
  theta = 2 * np.pi * y / 10 + rng.normal(0, 0.12, n)
  r = 3 + rng.gamma(2.0, 6.0, n)
  x = np.stack([r * np.cos(theta), r * np.sin(theta)], 1)
  means = np.stack([x[y == c].mean(0) for c in range(10)])
  return x, y, means


def _cfal_like(n: int, dim: int = 64, seed: int = 0):
  """Ten Gaussian classes at norm 12 in `dim`-D, and their true means."""
  rng = np.random.default_rng(seed)
  y = np.arange(n) % 10
  means = rng.normal(size=(10, dim))
  means *= 12 / np.linalg.norm(means, axis=1, keepdims=True)
  return means[y] + rng.normal(0, 2.0, (n, dim)), y, means


def _points(fig):
  """The scatter of the embeddings (the first collection of the axes)."""
  return fig.axes[0].collections[0]


def _caption(fig) -> str:
  return fig.get_supxlabel()


def test_figure_formats_checks_and_normalises():
  assert FIGURE_FORMATS == ("png", "pdf", "svg")
  assert figure_formats("png") == ("png",)
  assert figure_formats(" PDF, svg ,pdf") == ("pdf", "svg")
  assert figure_formats(["svg", "png"]) == ("svg", "png")
  for bad in ("jpg", ["png", "eps"], ""):
    with pytest.raises(ValueError) as error:
      figure_formats(bad)
    message = str(error.value)
    assert "\n" not in message and "png, pdf, svg" in message


def test_formats_load_without_tensorflow_or_matplotlib():
  code = ("import sys; from cfal.viz import FIGURE_FORMATS, figure_formats; "
          "import cfal.viz.formats; "
          "print(sorted(m for m in ('tensorflow', 'matplotlib', 'sklearn') "
          "if m in sys.modules))")
  done = subprocess.run([sys.executable, "-c", code], cwd=ROOT,
                        capture_output=True, text=True, check=True)
  assert done.stdout.strip() == "[]"


def test_figure_to_bytes_writes_each_format():
  x, y, means = _radiating(600)
  fig = embedding_figure(x, y, None, "t", prototypes=means)
  assert _points(fig).get_rasterized()
  files = figure_to_bytes(fig, ("png", "pdf", "svg"))
  assert list(files) == ["png", "pdf", "svg"]
  for fmt, data in files.items():
    assert data.startswith(MAGIC[fmt]), fmt
  svg = files["svg"].decode()
  # The points are one embedded image; text and axes stay vector paths.
  assert "<svg" in svg and svg.count("<image") == 1
  assert svg.count("<path") > 20


def test_figure_to_bytes_rejects_a_bad_format_in_one_line():
  fig = embedding_figure(*_radiating(50)[:2])
  with pytest.raises(ValueError, match=r"'jpeg'.*png, pdf, svg") as error:
    figure_to_bytes(fig, ("png", "jpeg"))
  assert "\n" not in str(error.value)


def test_dpi_sets_the_png_pixel_size():
  x, y, _ = _radiating(200)
  small = Image.open(io.BytesIO(figure_to_png(embedding_figure(x, y),
                                              dpi=50)))
  large = Image.open(io.BytesIO(figure_to_bytes(embedding_figure(x, y),
                                                dpi=100)["png"]))
  assert large.size == (2 * small.size[0], 2 * small.size[1])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_2d_embeddings_have_equal_axis_scales(metric):
  x, y, means = _radiating(500)
  fig = embedding_figure(x, y, None, "", prototypes=means, metric=metric)
  ax = fig.axes[0]
  assert ax.get_aspect() == 1.0
  # The raw points are drawn, not a projection.
  np.testing.assert_allclose(np.sort(_points(fig).get_offsets()[:, 0]),
                             np.sort(x[:, 0]))
  fig.clear()
  fig = embedding_figure(*_cfal_like(300, dim=16)[:2])
  assert fig.axes[0].get_aspect() == "auto"     # PCA: unchanged
  fig.clear()


def test_markers_shrink_and_fade_as_points_grow():
  styles = []
  for n in (500, 2000, 10_000):
    x, y, _ = _radiating(n)
    fig = embedding_figure(x, y, max_points=10_000)
    points = _points(fig)
    assert len(points.get_offsets()) == n
    styles.append((float(points.get_sizes()[0]), points.get_alpha()))
    fig.clear()
  sizes, alphas = zip(*styles)
  assert sizes[0] > sizes[1] > sizes[2] and alphas[0] > alphas[1] > alphas[2]
  assert sizes[0] >= 3 * sizes[2] and alphas[2] >= 0.4
  # Clamped outside the range it interpolates over.
  assert plots.marker_style(10) == plots.marker_style(300)
  assert plots.marker_style(10**6) == pytest.approx(plots.MARKER_MANY[1:])


@pytest.mark.parametrize("dim", [2, 3, 64])
def test_caption_when_prototypes_sit_at_0_4_of_their_class_means(dim):
  x, y, means = _cfal_like(2000, dim=dim)
  fig = embedding_figure(x, y, None, "", prototypes=0.4 * means)
  caption = _caption(fig)
  assert caption.startswith("Prototypes (\u2605) sit at 0.4\u00d7 the norm "
                            "of their class means (median of 10)")
  assert "embeddings lie beyond them" in caption
  assert "not a plotting error" in caption
  fig.clear()


@pytest.mark.parametrize("dim", [2, 64])
def test_no_caption_when_prototypes_sit_on_their_class_means(dim):
  x, y, means = _cfal_like(2000, dim=dim)
  fig = embedding_figure(x, y, None, "", prototypes=means)
  assert _caption(fig) == ""
  fig.clear()
  x, y, means = _radiating(2000)
  fig = embedding_figure(x, y, None, "", prototypes=means)
  assert _caption(fig) == ""
  fig.clear()


def test_no_caption_for_cosine_or_without_prototypes():
  x, y, means = _cfal_like(1000)
  for kwargs in ({"prototypes": 0.4 * means, "metric": "cosine"}, {}):
    fig = embedding_figure(x, y, None, "", **kwargs)
    assert _caption(fig) == ""
    fig.clear()


def test_caption_for_prototypes_off_their_classes_sideways():
  x, y, means = _cfal_like(2000, dim=2)
  shifted = means + np.array([15.0, -15.0])     # not toward the origin
  fig = embedding_figure(x, y, None, "", prototypes=shifted)
  caption = _caption(fig)
  assert "class radii from their class means (median of 10)" in caption
  fig.clear()


def test_multi_center_prototypes_on_their_sub_clusters_get_no_caption():
  rng = np.random.default_rng(3)
  centers = rng.normal(size=(4, 2, 8)) * 10      # 4 classes, 2 centers
  y = np.arange(1200) % 4
  k = rng.integers(0, 2, 1200)
  x = centers[y, k] + rng.normal(size=(1200, 8))
  fig = embedding_figure(x, y, None, "", prototypes=centers)
  assert _caption(fig) == ""
  fig.clear()
  fig = embedding_figure(x, y, None, "", prototypes=0.4 * centers)
  assert "0.4\u00d7" in _caption(fig)
  fig.clear()


def test_caption_when_prototypes_sit_beyond_their_class_means():
  x, y, means = _cfal_like(2000, dim=16)
  fig = embedding_figure(x, y, None, "", prototypes=2.5 * means)
  caption = _caption(fig)
  assert caption.startswith("Prototypes (\u2605) sit at 2.5\u00d7 the norm")
  assert "the embeddings lie short of them" in caption
  fig.clear()
