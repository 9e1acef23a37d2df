"""Export a trained backbone + head as a self-contained SavedModel."""

from __future__ import annotations

import os
import pathlib
import shutil
from typing import Sequence

import keras
import tensorflow as tf

from cfal.heads import Head


class _Classifier(tf.Module):
  """What the SavedModel holds: the networks and two signatures."""

  def __init__(self, backbone: keras.Model, head: Head,
               image_shape: Sequence[int], class_names: Sequence[str],
               step: int):
    super().__init__(name="cfal_classifier")
    self.backbone = backbone
    self.head = head
    # The training step of the exported weights, so evaluations of the
    # export line up with the checkpoints' in TensorBoard.
    self.step = tf.Variable(int(step), dtype=tf.int64, trainable=False,
                            name="step")
    self.class_names = tf.Variable(list(class_names), trainable=False,
                                   name="class_names")
    # "cosine" or "euclidean": how the head compares embeddings, for
    # retrieval metrics on the exported model.
    self.embedding_metric = tf.Variable(head.embedding_metric,
                                        trainable=False,
                                        name="embedding_metric")
    spec = tf.TensorSpec([None, *image_shape], tf.float32, name="images")
    self.embed = tf.function(self._embed, input_signature=[spec],
                             autograph=False)
    self.classify = tf.function(self._classify, input_signature=[spec],
                                autograph=False)

  def _embed(self, images):
    """images float32 [N, H, W, C] in [0, 1] -> {"embeddings": [N, D]}."""
    return {"embeddings": tf.cast(self.backbone(images, training=False),
                                  tf.float32)}

  def _classify(self, images):
    """images -> class ids, their names, the head's scores, embeddings."""
    embeddings = self._embed(images)["embeddings"]
    class_ids = self.head.predict(embeddings)
    return {"class_ids": class_ids,
            "class_names": tf.gather(self.class_names, class_ids),
            "scores": self.head(embeddings),
            "embeddings": embeddings}


def export_saved_model(path: str | os.PathLike, *, backbone: keras.Model,
                       head: Head, image_shape: Sequence[int],
                       class_names: Sequence[str],
                       step: int = 0) -> pathlib.Path:
  """Writes the SavedModel into a temporary folder, then swaps it in.

  A kill at any moment leaves a complete model at `path` or at
  `path.old` (between the swap's two renames); the next export puts the
  old one back first, so readers only ever see complete models.

  Loading needs only TensorFlow: `m = tf.saved_model.load(path)`, then
  `m.signatures["classify"](images=x)` or `m.embed(x)`.
  """
  path = pathlib.Path(path)
  tmp = path.with_name(path.name + ".tmp")
  old = path.with_name(path.name + ".old")
  if old.exists() and not path.exists():
    old.rename(path)   # a previous swap was killed half-way
  shutil.rmtree(tmp, ignore_errors=True)
  module = _Classifier(backbone, head, image_shape, class_names, step)
  tf.saved_model.save(module, str(tmp),
                      signatures={"embed": module.embed,
                                  "classify": module.classify})
  shutil.rmtree(old, ignore_errors=True)
  if path.exists():
    path.rename(old)
  tmp.rename(path)
  shutil.rmtree(old, ignore_errors=True)
  return path
