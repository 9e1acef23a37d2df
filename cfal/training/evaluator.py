"""The one evaluator: validation during training, eval.py and bench/ use it.

A compiled, strategy-aware eval step runs the model over a dataset; the
confusion counts and the loss are summed in the graph and reduced across
replicas (and workers), so N replicas count exactly what one device would.
The first `keep` embeddings, labels, predictions and scores come back to
the host for pictures, the projector and retrieval metrics; when asked, the
first `keep_images` input images too, for the projector's sprite.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import tensorflow as tf

from cfal.metrics.classification import (classification_report,
                                         confusion_matrix_update)

if TYPE_CHECKING:
  from cfal.training.build import Built

# images -> {"embeddings" [N, D], "predictions" [N], "scores" [N, C]} and,
# with labels, "loss" (per-example [N]); run once per replica.
Forward = Callable[..., dict]

# Kept images are shrunk to at most this many pixels a side: the largest
# thumbnail the projector's sprite draws (`tensorboard.SPRITE_THUMBNAIL`).
KEPT_IMAGE_SIDE = 48


@dataclasses.dataclass
class EvalResult:
  """What one evaluation produced.

  Attributes:
    confusion: int64 `[C, C]` counts over every example (rows: labels),
      summed over all replicas and workers.
    loss: mean per-example loss (NaN when the model has no loss, as a
      SavedModel).
    report: `classification_report` of `confusion`, plus "loss".
    embeddings, labels, predictions, scores: this worker's first `keep`
      examples, in dataset order (`scores` is `[n, 0]` when the forward
      pass computes none).
    images: float32 `[n, h, w, c]`, this worker's first `keep_images` input
      images in dataset order, shrunk to at most `image_side` pixels a side;
      None unless the evaluator was asked for them.
  """

  confusion: np.ndarray
  loss: float
  report: dict
  embeddings: np.ndarray
  labels: np.ndarray
  predictions: np.ndarray
  scores: np.ndarray
  images: np.ndarray | None = None


class Evaluator:
  """Runs a dataset through a model under a strategy and reduces the counts.

  Args:
    strategy: the strategy the model's variables live under.
    forward: the per-replica model call (see `model_forward`,
      `saved_model_forward`).
    class_names: one name per class.
    keep: how many examples' embeddings etc. to bring back (None: all).
    keep_images: how many of the first input images to bring back as well,
      for the projector's sprite (0, the default: none, and the compiled
      step does not return them at all).
    image_side: kept images larger than this are shrunk on the device to
      at most this many pixels a side (aspect kept, area averaging), so
      they cost little to copy and hold; None keeps them whole.
    mode: "function" (compiled) or "eager".
  """

  def __init__(self, *, strategy: tf.distribute.Strategy, forward: Forward,
               class_names: Sequence[str], keep: int | None = None,
               keep_images: int = 0,
               image_side: int | None = KEPT_IMAGE_SIDE,
               mode: str = "function"):
    if keep_images < 0:
      raise ValueError(f"keep_images must be >= 0, got {keep_images}")
    self.strategy = strategy
    self.forward = forward
    self.class_names = tuple(class_names)
    self.num_classes = len(self.class_names)
    self.keep = keep
    self.keep_images = int(keep_images)
    self.image_side = image_side
    step = self._step
    self._compiled = (step if mode == "eager" else
                      tf.function(step, autograph=False,
                                  reduce_retracing=True))

  def _replica(self, images, labels):
    out = self.forward(images, labels)
    confusion = confusion_matrix_update(labels, out["predictions"],
                                        self.num_classes)
    loss = out.get("loss")
    loss_sum = (tf.reduce_sum(loss) if loss is not None
                else tf.constant(np.nan, tf.float32))
    kept = (out["embeddings"], labels, out["predictions"], out["scores"])
    if self.keep_images:
      kept += (_shrunk(images, self.image_side),)
    return (confusion, loss_sum, *kept)

  def _step(self, images, labels):
    confusion, loss, *kept = self.strategy.run(
        tf.autograph.experimental.do_not_convert(self._replica),
        args=(images, labels))
    total = lambda v: self.strategy.reduce(  # noqa: E731
        tf.distribute.ReduceOp.SUM, v, axis=None)
    return total(confusion), total(loss), kept

  def evaluate(self, dataset: tf.data.Dataset) -> EvalResult:
    """Evaluates every batch of `dataset` (of `(images, labels)`)."""
    strategy = self.strategy
    confusion = np.zeros((self.num_classes, self.num_classes), np.int64)
    loss_sum = 0.0
    parts: list[list[np.ndarray]] = [[], [], [], []]
    pictures: list[np.ndarray] = []
    kept = kept_images = 0
    for images, labels in strategy.experimental_distribute_dataset(dataset):
      counts, loss, values = self._compiled(images, labels)
      confusion += counts.numpy().astype(np.int64)
      loss_sum += float(loss)
      want_rows = self.keep is None or kept < self.keep
      want_images = kept_images < self.keep_images
      if not (want_rows or want_images):
        continue
      local = [strategy.experimental_local_results(v) for v in values]
      for replica in zip(*local):
        if want_rows:
          for part, value in zip(parts, replica[:4]):
            part.append(value.numpy())
          kept += int(replica[1].shape[0])
        if want_images:
          pictures.append(replica[4].numpy())
          kept_images += int(replica[4].shape[0])
    arrays = [np.concatenate(p) if p else np.zeros((0,)) for p in parts]
    if self.keep is not None:
      arrays = [a[:self.keep] for a in arrays]
    embeddings, labels, predictions, scores = arrays
    kept_pictures = None
    if self.keep_images:
      kept_pictures = (np.concatenate(pictures)[:self.keep_images]
                       if pictures else np.zeros((0, 1, 1, 1), np.float32))
    report = classification_report(confusion, self.class_names)
    loss = loss_sum / max(int(confusion.sum()), 1)
    report["loss"] = loss
    return EvalResult(confusion=confusion, loss=loss, report=report,
                      embeddings=embeddings.astype(np.float32),
                      labels=labels.astype(np.int64),
                      predictions=predictions.astype(np.int64),
                      scores=scores.astype(np.float32),
                      images=(None if kept_pictures is None else
                              kept_pictures.astype(np.float32)))


def _shrunk(images: tf.Tensor, side: int | None) -> tf.Tensor:
  """`images` as float32, those larger than `side` pixels a side shrunk
  (area averaging) to fit in `side` x `side` with their aspect kept."""
  images = tf.cast(images, tf.float32)
  if side is None:
    return images
  shape = tf.shape(images)
  height_width = tf.cast(shape[1:3], tf.float32)
  scale = tf.minimum(1.0, side / tf.reduce_max(height_width))
  size = tf.maximum(tf.cast(tf.round(height_width * scale), tf.int32), 1)
  return tf.cond(scale < 1.0,
                 lambda: tf.image.resize(images, size, method="area"),
                 lambda: images)


def model_forward(backbone, head, *, scores: bool = True) -> Forward:
  """The forward pass of a backbone + head (inference mode, float32).

  With `scores=False` the `[N, C]` scores are not computed (validation
  needs predictions, embeddings and the loss; eval.py saves the scores).
  """
  def forward(images, labels):
    embeddings = tf.cast(backbone(images, training=False), tf.float32)
    out = {"embeddings": embeddings, "predictions": head.predict(embeddings),
           "loss": head.loss(embeddings, labels)}
    out["scores"] = (head(embeddings) if scores else
                     tf.zeros([tf.shape(embeddings)[0], 0], tf.float32))
    return out
  return forward


def saved_model_forward(model) -> Forward:
  """The forward pass of an exported cfal SavedModel (`classify`); it has
  no loss."""
  def forward(images, labels):
    del labels
    out = model.classify(images)
    return {"embeddings": out["embeddings"],
            "predictions": tf.cast(out["class_ids"], tf.int32),
            "scores": out["scores"]}
  return forward


def corrected_forward(forward: Forward,
                      correct: Callable[[tf.Tensor, tf.Tensor], tf.Tensor]
                      ) -> Forward:
  """`forward` with its scores replaced by `correct(embeddings, scores)`
  (e.g. a `cfal.heads.posthoc.PostHoc`) and its predictions by their
  argmax, in the graph, so the confusion counts and everything after them
  see the corrected model. The embeddings are kept; the loss is dropped
  (it is the uncorrected head's, not that of the scores evaluated)."""
  def wrapped(images, labels):
    out = dict(forward(images, labels))
    scores = correct(out["embeddings"], out["scores"])
    out.pop("loss", None)
    out.update(scores=scores, predictions=tf.argmax(
        scores, axis=-1, output_type=tf.int32))
    return out
  return wrapped


def evaluator_for(built: "Built", *, keep: int | None, keep_images: int = 0,
                  mode: str = "function") -> Evaluator:
  """The evaluator of a built run's backbone + head for validation and
  bench: no scores (eval.py's `evaluate_run` keeps them).

  Args:
    built: the built run.
    keep: how many examples' embeddings etc. to bring back (None: all).
    keep_images: how many first input images to bring back too (shrunk,
      see `Evaluator`), for the projector's sprite; 0 for none.
    mode: "eager" or anything else for compiled.
  """
  return Evaluator(strategy=built.strategy,
                   forward=model_forward(built.backbone, built.head,
                                         scores=False),
                   class_names=built.data.class_names, keep=keep,
                   keep_images=keep_images,
                   mode="eager" if mode == "eager" else "function")
