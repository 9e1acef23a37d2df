"""Evaluation figures, rendered off-screen (Agg) for files and TensorBoard.

`confusion_matrix_figure(confusion, class_names, title)` and
`embedding_figure(embeddings, labels, class_names, title, prototypes,
metric)` build figures; `figure_to_png(fig)` and
`figure_to_image_tensor(fig)` (for `tf.summary.image`) render and close
them.
"""

from cfal.viz.plots import (class_colors, confusion_matrix_figure,
                            embedding_figure, figure_to_image_tensor,
                            figure_to_png, pca)

__all__ = ["class_colors", "confusion_matrix_figure", "embedding_figure",
           "figure_to_image_tensor", "figure_to_png", "pca"]
