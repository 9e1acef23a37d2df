"""What a run writes for TensorBoard: scalars, images, projector, hparams.

`write_evaluation` is the one writer of an evaluation's summaries, used for
validation during training and by eval.py alike.
"""

from __future__ import annotations

import math
import os
import pathlib
import re
from typing import Any, Mapping, Sequence

import numpy as np
import tensorflow as tf
from PIL import Image
from tensorboard.plugins import projector
from tensorboard.plugins.hparams import api as hparams_api


# TensorBoard's projector refuses a sprite wider or taller than this
# (`ky = 8192` in tf_projector_plugin/projector_binary.js, checked when the
# sprite loads).
SPRITE_MAX_SIDE = 8192
# The largest thumbnail side in a sprite; a sprite of many points uses less.
SPRITE_THUMBNAIL = 48


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
                    *, predictions: np.ndarray | None = None,
                    images: np.ndarray | None = None) -> None:
  """Embeddings, metadata and a sprite of thumbnails for the projector.

  Files go to `<logdir>/<name>`, next to that run's event files, so the
  projector tab shows them under that run: embeddings.tsv, metadata.tsv,
  sprite.png (with images only) and projector_config.pbtxt naming them.

  metadata.tsv has a header and one row per point, in the embeddings'
  order: `class` (the label's name), `label` (its id) and, with
  predictions, `predicted` (the predicted class's name) and `correct`
  (1 or 0: colour by it, or search it for 0, to find the errors).

  Colour: the projector always opens with "Color by" on "No color map";
  no metadata can change that. Its data panel (`metadataChanged` in
  tf_projector_plugin/projector_binary.js) sets `selectedColorOptionName`
  to `colorOptions[0]`, the fixed "No color map" entry, whenever no option
  is selected yet; only a click or a loaded bookmark sets another. What the
  metadata does decide: "Label by" (and the inspector's search field)
  start on the first non-numeric column, or the first column if all are
  numeric; hence `class` comes first and `correct` is numeric, so digit
  class names ("0".."9") still label points by class, not by `correct`.
  "Color by" lists, in column order after "No color map", the columns
  with at most 50 distinct values (by category) and the numeric ones
  (else a gradient), so `class` is its first metadata entry, one click
  away. With more than 50 classes `class` is not offered; the numeric
  `label` is, and its "force categorical" box colours it by class.

  Args:
    logdir: the run's folder.
    embeddings: `[N, D]` points.
    labels: `[N]` class ids.
    class_names: one name per class.
    name: the run (subfolder) the files belong to.
    predictions: `[N]` predicted class ids, or None.
    images: float32 `[M, H, W, C]` in [0, 1] (C is 1 or 3), the pictures
      of the first M <= N points; None for no sprite. Points past the
      last image get a black thumbnail.
  """
  folder = pathlib.Path(logdir) / name
  folder.mkdir(parents=True, exist_ok=True)
  n = len(embeddings)
  names = [_tsv_field(c) for c in class_names]
  columns = ["class", "label"]
  if predictions is not None:
    columns += ["predicted", "correct"]
  rows = ["\t".join(columns)]
  for k in range(n):
    label = int(labels[k])
    row = [names[label], str(label)]
    if predictions is not None:
      predicted = int(predictions[k])
      row += [names[predicted], str(int(predicted == label))]
    rows.append("\t".join(row))
  # Files are replaced whole: TensorBoard may read them during training.
  _replace(folder / "embeddings.tsv", lambda path: np.savetxt(
      path, embeddings, delimiter="\t", fmt="%.6g"))
  _replace(folder / "metadata.tsv", lambda path: pathlib.Path(
      path).write_text("\n".join(rows) + "\n", encoding="utf-8"))
  config = projector.ProjectorConfig()
  entry = config.embeddings.add()
  entry.tensor_name = f"{name}_embeddings"
  entry.tensor_path = "embeddings.tsv"
  entry.metadata_path = "metadata.tsv"
  if images is not None:
    sheet, (width, height) = sprite(images, n)
    _replace(folder / "sprite.png",
             lambda path: sheet.save(path, format="PNG"))
    entry.sprite.image_path = "sprite.png"
    entry.sprite.single_image_dim.extend([width, height])
  else:
    (folder / "sprite.png").unlink(missing_ok=True)
  projector.visualize_embeddings(str(folder), config)


def sprite(images: np.ndarray, count: int | None = None,
           thumbnail: int = SPRITE_THUMBNAIL
           ) -> tuple[Image.Image, tuple[int, int]]:
  """The projector's sprite: thumbnails in a square grid, row by row.

  Args:
    images: float32 `[M, H, W, C]` in [0, 1] (clipped), C 1 or 3.
    count: the number of points, >= M (default M); the grid has room for
      all of them, those without an image stay black.
    thumbnail: the largest thumbnail side; it shrinks so the sprite keeps
      within `SPRITE_MAX_SIDE` pixels a side.

  Returns:
    The sprite (mode "L" for one channel, else "RGB") and one thumbnail's
    `(width, height)`, the config's `single_image_dim`.

  Raises:
    ValueError: for images of another rank or channel count, more images
      than points, or more points than a sprite can hold.
  """
  images = np.asarray(images)
  count = len(images) if count is None else int(count)
  if images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"sprite images must be [N, H, W, 1 or 3], got "
                     f"{images.shape}")
  if len(images) > count:
    raise ValueError(f"{len(images)} images for {count} points")
  grid = max(math.isqrt(max(count - 1, 0)) + 1, 1)
  side = min(thumbnail, SPRITE_MAX_SIDE // grid)
  if side < 1:
    raise ValueError(f"{count} points do not fit in a "
                     f"{SPRITE_MAX_SIDE} px sprite")
  height, width = images.shape[1:3]
  scale = min(1.0, side / max(height, width))
  size = (max(1, min(side, round(width * scale))),
          max(1, min(side, round(height * scale))))
  mode = "L" if images.shape[-1] == 1 else "RGB"
  sheet = Image.new(mode, (grid * size[0], grid * size[1]))
  for k, image in enumerate(images):  # one at a time: no [M, H, W, C] copy
    pixels = np.rint(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)
    thumb = Image.fromarray(pixels[..., 0] if mode == "L" else pixels, mode)
    if thumb.size != size:
      thumb = thumb.resize(size, Image.Resampling.BOX)
    sheet.paste(thumb, ((k % grid) * size[0], (k // grid) * size[1]))
  return sheet, size


def _tsv_field(text: str) -> str:
  """A class name fit for one TSV field (no tabs or line breaks)."""
  return re.sub(r"[\t\r\n]+", " ", str(text)).strip() or "?"


def _replace(path: pathlib.Path, write) -> None:
  """Writes `path` through `write(temporary_path)`, then renames it in."""
  temporary = path.with_name(f".{path.name}.tmp")
  write(str(temporary))
  os.replace(temporary, path)


def _tag(name: str) -> str:
  """A class name made safe for a summary tag."""
  return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "class"


def long_tail_scalars(long_tail: Mapping[str, Any]) -> dict[str, float]:
  """`long_tail/many_recall`, `long_tail/many_accuracy`, ... of a
  `long_tail_report` (groups whose values are None are left out)."""
  values = {}
  for name, group in long_tail["groups"].items():
    for key in ("recall", "accuracy"):
      if group.get(key) is not None:
        values[f"long_tail/{name}_{key}"] = group[key]
  return values


# The medians of `prototype_geometry` written as `prototypes/<key>`.
PROTOTYPE_SCALARS = ("norm_ratio_median", "fraction_to_mean_median",
                     "offset_median")


def prototype_scalars(geometry: Mapping[str, Any]) -> dict[str, float]:
  """`prototypes/norm_ratio_median`, `prototypes/fraction_to_mean_median`
  and `prototypes/offset_median` of a `prototype_geometry` (medians that
  are None are left out)."""
  return {f"prototypes/{key}": geometry[key] for key in PROTOTYPE_SCALARS
          if geometry.get(key) is not None}


def write_evaluation(writer, result: Any, *, step: int, title: str,
                     prototypes: np.ndarray | None, metric: str,
                     projector_dir: str | None = None,
                     projector_name: str = "validation",
                     projector_points: int | None = None,
                     pngs: Mapping[str, bytes] | None = None,
                     long_tail: Mapping[str, Any] | None = None,
                     prototype_geometry: Mapping[str, Any] | None = None
                     ) -> None:
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
    projector_points: at most this many embeddings in the projector. The
      points carry their predicted class, and thumbnails of the images
      `result.images` holds (an evaluator asked for `keep_images`), if any.
    pngs: the two pictures already rendered ("confusion_matrix",
      "embeddings" -> PNG bytes, as `documents.write_outputs` returns
      them), so they are not drawn twice.
    long_tail: `cfal.metrics.long_tail.long_tail_report` of the result,
      written as `long_tail/<group>_recall` and `long_tail/<group>_accuracy`
      (groups many, medium, few; a group without examples writes none).
    prototype_geometry: `cfal.metrics.embedding.prototype_geometry` of the
      result and the head's prototypes, written as the scalars of
      `prototype_scalars`.
  """
  from cfal.viz import plots  # pylint: disable=import-outside-toplevel
  report = result.report
  class_names = list(report["per_class"])
  scalars = {key: report[key] for key in
             ("loss", "accuracy", "balanced_accuracy", "macro_f1")
             if key in report and np.isfinite(report[key])}
  if long_tail is not None:
    scalars.update(long_tail_scalars(long_tail))
  if prototype_geometry is not None:
    scalars.update(prototype_scalars(prototype_geometry))
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
    embeddings = result.embeddings[keep]
    images = getattr(result, "images", None)
    write_projector(projector_dir, embeddings, result.labels[keep],
                    class_names, name=projector_name,
                    predictions=result.predictions[keep],
                    images=(None if images is None or not len(images)
                            else images[:len(embeddings)]))
