"""tf.data pipelines whose order is a pure function of (seed, step).

Training batches never depend on iterator state: position `p` of epoch `e`
reads example `index_shuffle(p, seed=(seed, e))`, a stateless permutation.
A run resumed at step `s` therefore rebuilds exactly the batches an
uninterrupted run would have seen (the checkpointed step *is* the data
position), and augmentation is seeded by the same step and row. The
class-aware samplers (`cfal.data.sampling`) replace the permutation by
stateless draws keyed by (seed, step), with the same guarantees.

Under a strategy every input pipeline builds the same global batch and
keeps the rows of its own replicas, so any replica/worker layout trains on
exactly the batches one device would.

Image files are decoded one example per call, many calls in parallel
(`num_parallel_calls=AUTOTUNE`, `deterministic=True`), then batched: no
source holds decoded images unless `cached_source` was asked to.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import numpy as np
import tensorflow as tf

from cfal.data import sampling
from cfal.data.config import SAMPLERS
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
    paths: how each example's file is named in records (relative to its
      folder, or as a manifest writes it); None for in-memory sets.
    groups: each example's group (None where it has none), or None.
  """

  labels: np.ndarray
  class_names: tuple[str, ...]
  image_shape: tuple[int, int, int]
  load_batch: BatchLoader | None = None
  load_example: ExampleLoader | None = None
  paths: tuple[str, ...] | None = None
  groups: tuple[str | None, ...] | None = None

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


def cached_source(source: ImageSource, indices: np.ndarray, *,
                  memory_bytes: int | None = None) -> ImageSource:
  """`source` with the examples `indices` decoded once and kept in memory.

  A `tf.data` `.cache()` cannot serve the training stream: its order is
  drawn per epoch from (seed, epoch) by position, so no two epochs read
  the files in the same order and there is no first pass to replay.
  Instead every example of `indices` is decoded once (in parallel, by the
  source's own `load_example`) into one float32 table, and batches gather
  their rows from it: the same pixels as decoding, in the same order.

  Args:
    source: a source that decodes files (others are returned as they are).
    indices: the examples that pipelines will ask for (training and
      validation); asking for any other is an error.
    memory_bytes: the machine's memory (None: asked from the system); the
      table may take at most a quarter of it, since building it briefly
      needs about three times its size.

  Raises:
    ValueError: if the table would be too large for the machine.
  """
  if source.load_batch is not None:
    return source
  indices = np.unique(np.asarray(indices, np.int64))
  height, width, channels = source.image_shape
  table_bytes = indices.size * height * width * channels * 4
  memory = memory_bytes if memory_bytes is not None else _physical_memory()
  if memory and table_bytes > memory // 4:
    raise ValueError(
        f"--cache would keep {table_bytes / 1e9:.1f} GB of decoded images "
        f"({indices.size:,} of {height}x{width}x{channels} float32) in "
        f"memory, over a quarter of this machine's {memory / 1e9:.1f} GB; "
        "drop --cache or use a smaller --image_size.")
  table = np.empty((indices.size, height, width, channels), np.float32)
  decoded = tf.data.Dataset.from_tensor_slices(indices).map(
      _plain(source.load_example), num_parallel_calls=tf.data.AUTOTUNE,
      deterministic=True).batch(256).prefetch(2)
  filled = 0
  for batch in decoded:
    table[filled:filled + batch.shape[0]] = batch.numpy()
    filled += batch.shape[0]
  row_of = np.full(len(source), -1, np.int32)
  row_of[indices] = np.arange(indices.size, dtype=np.int32)
  images = tf.constant(table)
  del table
  rows = tf.constant(row_of)

  def load_batch(batch_indices: tf.Tensor) -> tf.Tensor:
    return tf.gather(images, tf.gather(rows, batch_indices))

  return dataclasses.replace(source, load_batch=load_batch,
                             load_example=None)


def _physical_memory() -> int | None:
  try:
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
  except (AttributeError, ValueError, OSError):
    return None


def _pixel_maps(height: int, width: int, kind: str) -> np.ndarray:
  """int32 `[K, H*W]`: for each transform, where each output pixel comes
  from. Transform `lr + 2 ud + 4 turns` flips left-right if `lr`, then
  up-down if `ud`, then turns `turns` right angles counter-clockwise
  ("flip" has only the first two, "flip_rotate" all 16)."""
  source = np.arange(height * width, dtype=np.int32).reshape(height, width)
  rotations, vertical = (4, 2) if kind == "flip_rotate" else (1, 1)
  maps = []
  for turns in range(rotations):
    for ud in range(vertical):
      for lr in range(2):
        moved = source[:, ::-1] if lr else source
        moved = moved[::-1] if ud else moved
        maps.append(np.rot90(moved, turns).reshape(-1))
  return np.stack(maps)


def _augment(images: tf.Tensor, positions: tf.Tensor, seed: int,
             kind: str, global_batch_size: int) -> tf.Tensor:
  """Flips (and right-angle rotations): one gather over the batch.

  Every transform is a permutation of pixels, so each image is gathered
  through its transform's pixel map. An example's draws depend only on the
  seed, the global batch size and its position: the whole global batch's
  draws come from one stateless call keyed by (seed, step), and each
  pipeline keeps its own rows, so any replica layout, and a resumed run,
  augments an example the same way.
  """
  if kind == "none":
    return images
  _, height, width, channels = images.shape
  maps = tf.constant(_pixel_maps(height, width, kind))
  step = positions[0] // global_batch_size
  rows = positions - step * global_batch_size
  draws = tf.gather(tf.random.stateless_uniform(
      [global_batch_size, 3], seed=tf.stack([tf.constant(seed, tf.int64),
                                             step])), rows)
  bits = tf.cast(draws * [2.0, 2.0, 4.0], tf.int32)        # lr, ud, turns
  transform = bits[:, 0]
  if kind == "flip_rotate":
    transform += 2 * bits[:, 1] + 4 * bits[:, 2]
  flat = tf.reshape(images, [-1, height * width, channels])
  moved = tf.gather(flat, tf.gather(maps, transform), batch_dims=1)
  return tf.reshape(moved, [-1, height, width, channels])


def steps_per_epoch(num_examples: int, global_batch_size: int) -> int:
  """Full global batches per epoch (the remainder is dropped each epoch)."""
  return max(1, num_examples // global_batch_size)


def train_dataset(source: ImageSource, indices: np.ndarray, *,
                  global_batch_size: int, seed: int, start_step: int = 0,
                  augment: str = "none", sampler: str = "instance",
                  total_steps: int | None = None,
                  input_context: tf.distribute.InputContext | None = None,
                  ) -> tf.data.Dataset:
  """The endless training stream from `start_step` on.

  An epoch is `steps_per_epoch(len(indices), global_batch_size)` steps
  whatever the sampler; only "instance" visits each example once in it.

  Args:
    source: where the images come from.
    indices: the examples of `source` that form the training set.
    global_batch_size: examples per step over all replicas.
    seed: fixes the order and augmentation of every epoch.
    start_step: the first step to produce (resume position).
    augment: one of `AUGMENTATIONS`.
    sampler: one of `cfal.data.config.SAMPLERS`: "instance" (a fresh
      permutation every epoch), or a class-aware scheme of
      `cfal.data.sampling` (independent draws: a class, then one of its
      examples).
    total_steps: the run's length, which "progressive" moves towards
      class-balanced over (unused by the others).
    input_context: from `strategy.distribute_datasets_from_function`; the
      pipeline then yields one per-replica batch per local replica for each
      global batch.

  Returns:
    A dataset of (images float32 [b, H, W, C], labels int32 [b]).
  """
  if augment not in AUGMENTATIONS:
    raise ValueError(f"`augment` ({augment!r}) must be one of "
                     f"{', '.join(AUGMENTATIONS)}.")
  height, width = source.image_shape[:2]
  if augment == "flip_rotate" and height != width:
    raise ValueError(f"augment='flip_rotate' turns images by right angles, "
                     f"which needs square images, not {height}x{width}.")
  if sampler not in SAMPLERS:
    raise ValueError(f"`sampler` ({sampler!r}) must be one of "
                     f"{', '.join(SAMPLERS)}.")
  n = len(indices)
  per_epoch = steps_per_epoch(n, global_batch_size) * global_batch_size
  index_table = tf.constant(np.asarray(indices, np.int64))
  label_table = tf.constant(source.labels.astype(np.int32))

  def shuffled_indices(positions):
    # An epoch is a whole number of global batches, so every position of
    # one batch (or of a replica's slice of it) lies in the same epoch and
    # one vectorised shuffle, keyed by that epoch, serves them all.
    epoch = positions[0] // per_epoch
    shuffled = tf.random.experimental.index_shuffle(
        positions % per_epoch,
        seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1)
    return tf.gather(index_table, shuffled)

  positions_to_indices = shuffled_indices
  if sampler != "instance":
    positions_to_indices = sampling.class_sampler(
        source.labels, indices, source.num_classes, sampler=sampler,
        seed=seed, global_batch_size=global_batch_size,
        total_steps=total_steps)

  start = int(start_step) * global_batch_size
  ds = tf.data.Dataset.range(start, np.iinfo(np.int64).max)
  ds = ds.batch(global_batch_size, drop_remainder=True)
  replicas, local, first = 1, 1, 0
  if input_context is not None:
    replicas = input_context.num_replicas_in_sync
    local = replicas // input_context.num_input_pipelines
    first = input_context.input_pipeline_id * local
  if global_batch_size % replicas:
    raise ValueError(f"`batch_size` ({global_batch_size}) must be divisible "
                     f"by the number of replicas ({replicas}).")
  per_replica = global_batch_size // replicas
  local_rows = per_replica * local        # this pipeline's rows of a batch

  def select(positions):
    """This pipeline's rows of a global batch and the examples they read."""
    if input_context is not None:
      positions = positions[first * per_replica:
                            first * per_replica + local_rows]
    return positions, positions_to_indices(positions)

  def augment_batch(positions, images, labels):
    return (_augment(images, positions, seed, augment, global_batch_size),
            labels)

  ds = ds.map(_plain(select))
  if source.load_batch is not None:
    ds = ds.map(_plain(lambda positions, example: (
        positions, source.load_batch(example),
        tf.gather(label_table, example))),
                num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  else:
    # Files decode one per element, many at a time, in order: a batch's
    # images come from parallel calls and are put back in position order,
    # so the stream stays a pure function of (seed, step).
    ds = ds.unbatch().map(
        _plain(lambda position, example: (
            position, source.load_example(example),
            tf.gather(label_table, example))),
        num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(local_rows, drop_remainder=True)
  ds = ds.map(_plain(augment_batch), num_parallel_calls=tf.data.AUTOTUNE,
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
