"""Evaluation figures, rendered off-screen (Agg) for files and TensorBoard.

`confusion_matrix_figure(confusion, class_names, title)` and
`embedding_figure(embeddings, labels, class_names, title, prototypes,
metric)` build figures; `figure_to_png(fig)`, `figure_to_bytes(fig,
formats, dpi)` and `figure_to_image_tensor(fig)` (for `tf.summary.image`)
render and close them.

`FIGURE_FORMATS` and `figure_formats` (`cfal.viz.formats`) name and check
the file formats. Importing this package loads nothing heavy: the figure
functions (`cfal.viz.plots`, which imports matplotlib, scikit-learn and
TensorFlow) load on first use, so a command line can check a format flag
before TensorFlow starts.
"""

from __future__ import annotations

from cfal.viz.formats import FIGURE_FORMATS, figure_formats

_PLOTS = ("class_colors", "confusion_matrix_figure", "embedding_figure",
          "figure_to_bytes", "figure_to_image_tensor", "figure_to_png",
          "pca")

__all__ = ["FIGURE_FORMATS", "figure_formats", *_PLOTS]


def __getattr__(name: str):
  if name in _PLOTS:
    from cfal.viz import plots  # pylint: disable=import-outside-toplevel
    return getattr(plots, name)
  raise AttributeError(f"module 'cfal.viz' has no attribute {name!r}")
