"""tf.data pipelines whose order is a pure function of (seed, step).

Training batches never depend on iterator state: position `p` of epoch `e`
reads example `index_shuffle(p, seed=(seed, e))`, a stateless permutation.
A run resumed at step `s` therefore rebuilds exactly the batches an
uninterrupted run would have seen (the checkpointed step *is* the data
position), and augmentation is seeded by the same global position.

Under a strategy every input pipeline builds the same global batch and
keeps the rows of its own replicas, so any replica/worker layout trains on
exactly the batches one device would.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np
import tensorflow as tf

from cfal.data.errors import DataError

AUGMENTATIONS = ("none", "flip", "flip_rotate")

# Loads a batch of images (float32 [B, H, W, C] in [0, 1]) from a batch of
# integer indices into the source.
BatchLoader = Callable[[tf.Tensor], tf.Tensor]
# Loads one image from one index (for decoded-from-disk sources).
ExampleLoader = Callable[[tf.Tensor], tf.Tensor]


@dataclasses.dataclass(frozen=True)
class ImageSource:
  """An indexable set of labelled images.

  Exactly one of `load_batch` (cheap gathers from an in-memory array) or
  `load_example` (decode one file) is set.

  Attributes:
    labels: int32 class ids of every example `[N]`.
    class_names: one name per class.
    image_shape: (H, W, C) of the loaded float32 images.
    load_batch: indices [B] -> images [B, H, W, C].
    load_example: index [] -> image [H, W, C].
  """

  labels: np.ndarray
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  load_batch: BatchLoader | None = None
  load_example: ExampleLoader | None = None

  @property
  def num_classes(self) -> int:
    return len(self.class_names)

  def __len__(self) -> int:
    return int(self.labels.shape[0])


def array_source(images: np.ndarray, labels: np.ndarray,
                 class_names: tuple[str, ...]) -> ImageSource:
  """An in-memory source over uint8 images `[N, H, W]` or `[N, H, W, C]`.

  Raises:
    DataError: if a label is outside [0, len(class_names)): a head would
      silently train it as no class at all.
  """
  if images.ndim == 3:
    images = images[..., None]
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= len(class_names)):
    bad = labels.min() if labels.min() < 0 else labels.max()
    where = int(np.flatnonzero(labels == bad)[0])
    raise DataError(f"label {int(bad)} (example {where}) is outside [0, "
                    f"{len(class_names)}) for {len(class_names)} classes; "
                    f"fix the labels or the class list.")
  labels = labels.astype(np.int32)
  table = tf.constant(images)

  def load_batch(indices: tf.Tensor) -> tf.Tensor:
    return tf.cast(tf.gather(table, indices), tf.float32) / 255.0

  return ImageSource(labels=labels, class_names=tuple(class_names),
                     image_shape=tuple(images.shape[1:]),
                     load_batch=load_batch)


def _augment(images: tf.Tensor, positions: tf.Tensor, seed: int,
             kind: str) -> tf.Tensor:
  """Flips (and right-angle rotations) seeded by each example's position."""
  if kind == "none":
    return images

  def one(args):
    image, position = args
    key = tf.stack([tf.constant(seed, tf.int64), position])
    # Fold in a constant per transform: key + k would shift seed and
    # position together and correlate runs with neighbouring seeds.
    fold = lambda k: tf.random.experimental.stateless_fold_in(key, k)  # noqa: E731
    image = tf.image.stateless_random_flip_left_right(image, seed=fold(0))
    if kind == "flip_rotate":
      image = tf.image.stateless_random_flip_up_down(image, seed=fold(1))
      turns = tf.random.stateless_uniform([], seed=fold(2), maxval=4,
                                          dtype=tf.int32)
      image = tf.image.rot90(image, turns)
    return image

  return tf.map_fn(one, (images, positions),
                   fn_output_signature=tf.TensorSpec(images.shape[1:],
                                                     images.dtype))


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is dropped each epoch)."""
  return max(1, num_examples // global_batch_size)


def train_dataset(source: ImageSource, indices: np.ndarray, *,
                  global_batch_size: int, seed: int, start_step: int = 0,
                  augment: str = "none",
                  input_context: tf.distribute.InputContext | None = None,
                  ) -> tf.data.Dataset:
  """The endless training stream from `start_step` on.

  Args:
    source: where the images come from.
    indices: the examples of `source` that form the training set.
    global_batch_size: examples per step over all replicas.
    seed: fixes the order and augmentation of every epoch.
    start_step: the first step to produce (resume position).
    augment: one of `AUGMENTATIONS`.
    input_context: from `strategy.distribute_datasets_from_function`; the
      pipeline then yields one per-replica batch per local replica for each
      global batch.

  Returns:
    A dataset of (images float32 [b, H, W, C], labels int32 [b]).
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f"`augment` ({augment!r}) must be one of "
                     f"{', '.join(AUGMENTATIONS)}.")
  n = len(indices)
  per_epoch = steps_per_epoch(n, global_batch_size) * global_batch_size
  index_table = tf.constant(np.asarray(indices, np.int64))
  label_table = tf.constant(source.labels.astype(np.int32))

  def positions_to_indices(positions):
    # An epoch is a whole number of global batches, so every position of
    # one batch (or of a replica's slice of it) lies in the same epoch and
    # one vectorised shuffle, keyed by that epoch, serves them all.
    epoch = positions[0] // per_epoch
    shuffled = tf.random.experimental.index_shuffle(
        positions % per_epoch,
        seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1)
    return tf.gather(index_table, shuffled)

  start = int(start_step) * global_batch_size
  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  ds = ds.batch(global_batch_size, drop_remainder=True)
  replicas, first = 1, 0
  if input_context is not None:
    replicas = input_context.num_replicas_in_sync
    local = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local
  if global_batch_size % replicas:
    raise ValueError(f"`batch_size` ({global_batch_size}) must be divisible "
                     f"by the number of replicas ({replicas}).")
  per_replica = global_batch_size // replicas

  def load(positions):
    if input_context is not None:   # keep this pipeline's replicas' rows
      local_rows = per_replica * (replicas // input_context.num_input_pipelines)
      positions = positions[first * per_replica:
                            first * per_replica + local_rows]
    example = positions_to_indices(positions)
    labels = tf.gather(label_table, example)
    if source.load_batch is not None:
      images = source.load_batch(example)
    else:
      images = tf.map_fn(source.load_example, example,
                         fn_output_signature=tf.TensorSpec(source.image_shape,
                                                           tf.float32))
    return _augment(images, positions, seed, augment), labels

  ds = ds.map(_plain(load), num_parallel_calls=tf.data.AUTOTUNE,
              deterministic=True)
  if input_context is not None:
    ds = ds.unbatch().batch(per_replica, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE)


def eval_dataset(source: ImageSource, indices: np.ndarray, *,
                 batch_size: int) -> tf.data.Dataset:
  """Every example of `indices` once, in order, in batches (last partial)."""
  label_table = tf.constant(source.labels.astype(np.int32))
  ds = tf.data.Dataset.from_tensor_slices(np.asarray(indices, np.int64))
  if source.load_batch is not None:
    ds = ds.batch(batch_size).map(
        _plain(lambda i: (source.load_batch(i), tf.gather(label_table, i))),
        num_parallel_calls=tf.data.AUTOTUNE)
  else:
    ds = ds.map(
        _plain(lambda i: (source.load_example(i), tf.gather(label_table, i))),
        num_parallel_calls=tf.data.AUTOTUNE).batch(batch_size)
  return ds.prefetch(tf.data.AUTOTUNE)


def _plain(fn):
  """Marks a map function as needing no AutoGraph (saves tracing time)."""
  return tf.autograph.experimental.do_not_convert(fn)
