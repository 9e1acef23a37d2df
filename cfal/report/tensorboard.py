"""What a run writes for TensorBoard: scalars, images, projector, hparams.

`write_evaluation` is the one writer of an evaluation's summaries, used for
validation during training and by eval.py alike.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hparams_api


def write_scalars(writer, values: Mapping[str, float], step: int) -> None:
  with writer.as_default(step=step):
    for name, value in values.items():
      tf.summary.scalar(name, float(value))


def write_per_class(writer, prefix: str, values: Sequence[float],
                    class_names: Sequence[str], step: int) -> None:
  """One scalar per class, e.g. `per_class_recall/Trouser`."""
  with writer.as_default(step=step):
    for name, value in zip(class_names, values):
      tf.summary.scalar(f"{prefix}/{_tag(name)}", float(value))


def write_image(writer, name: str, image: tf.Tensor, step: int) -> None:
  with writer.as_default(step=step):
    tf.summary.image(name, image, step=step)


def write_hparams(writer, hparams: Mapping[str, object]) -> None:
  """Records the run's hyper-parameters for TensorBoard's HParams tab."""
  clean = {k: (v if isinstance(v, (bool, int, float, str)) else str(v))
           for k, v in hparams.items()}
  with writer.as_default():
    hparams_api.hparams(clean)


def write_projector(logdir: str, embeddings: np.ndarray, labels: np.ndarray,
                    class_names: Sequence[str], name: str = "validation",
                    ) -> None:
  """Embeddings as TSV plus class metadata for TensorBoard's projector.

  Files go to `<logdir>/<name>`, next to that run's event files, so the
  projector tab shows them under the validation run.
  """
  folder = pathlib.Path(logdir) / name
  folder.mkdir(parents=True, exist_ok=True)
  np.savetxt(folder / "embeddings.tsv", embeddings, delimiter="\t",
             fmt="%.6g")
  with open(folder / "metadata.tsv", "w", encoding="utf-8") as f:
    f.write("label\tclass\n")
    for label in labels:
      f.write(f"{int(label)}\t{class_names[int(label)]}\n")
  config = projector.ProjectorConfig()
  entry = config.embeddings.add()
  entry.tensor_name = f"{name}_embeddings"
  entry.tensor_path = "embeddings.tsv"
  entry.metadata_path = "metadata.tsv"
  projector.visualize_embeddings(str(folder), config)


def _tag(name: str) -> str:
  """A class name made safe for a summary tag."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def write_evaluation(writer, result: Any, *, step: int, title: str,
                     prototypes: np.ndarray | None, metric: str,
                     projector_dir: str | None = None,
                     projector_name: str = "validation",
                     projector_points: int | None = None,
                     pngs: Mapping[str, bytes] | None = None) -> None:
  """An evaluation's summaries at `step`: the headline scalars, per-class
  recall, the confusion-matrix and embedding pictures, projector files.

  Args:
    writer: the run's event-file writer for this split.
    result: a `cfal.training.evaluator.EvalResult`.
    step: the training step of the weights evaluated (never 0 for a
      trained checkpoint: TensorBoard lines pictures up by step).
    title: the pictures' title (head, backbone, data, split).
    prototypes: the head's prototypes to mark, or None.
    metric: "cosine" or "euclidean", the head's geometry.
    projector_dir, projector_name: projector files go to
      `<projector_dir>/<projector_name>` (skipped when None).
    projector_points: at most this many embeddings in the projector.
    pngs: the two pictures already rendered ("confusion_matrix",
      "embeddings" -> PNG bytes, as `documents.write_outputs` returns
      them), so they are not drawn twice.
  """
  from cfal.viz import plots  # pylint: disable=import-outside-toplevel
  report = result.report
  class_names = list(report["per_class"])
  scalars = {key: report[key] for key in
             ("loss", "accuracy", "balanced_accuracy", "macro_f1")
             if key in report and np.isfinite(report[key])}
  write_scalars(writer, scalars, step)
  write_per_class(writer, "per_class_recall",
                  [report["per_class"][n]["recall"] for n in class_names],
                  class_names, step)
  if pngs is not None:
    images = {name: tf.io.decode_png(png)[None] for name, png in pngs.items()}
  else:
    images = {
        "confusion_matrix": plots.figure_to_image_tensor(
            plots.confusion_matrix_figure(result.confusion, class_names,
                                          title)),
        "embeddings": plots.figure_to_image_tensor(plots.embedding_figure(
            result.embeddings, result.labels, class_names, title,
            prototypes=prototypes, metric=metric)),
    }
  for name, image in images.items():
    write_image(writer, name, image, step)
  writer.flush()
  if projector_dir is not None:
    keep = slice(0, projector_points)
    write_projector(projector_dir, result.embeddings[keep],
                    result.labels[keep], class_names, name=projector_name)
