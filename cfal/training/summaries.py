"""What a run writes for TensorBoard: scalars, images, projector, hparams."""

from __future__ import annotations

import pathlib
import re
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hparams_api


class Writers:
  """The run's two event-file writers: `<logdir>/train`, `<logdir>/validation`."""

  def __init__(self, logdir: str):
    self.logdir = pathlib.Path(logdir)
    self.train = tf.summary.create_file_writer(str(self.logdir / "train"))
    self.validation = tf.summary.create_file_writer(
        str(self.logdir / "validation"))

  def flush(self) -> None:
    self.train.flush()
    self.validation.flush()


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
