"""The training stream: order, resume, replica split and augmentation.

Every image of the toy source encodes its own index in its pixels, so a
batch can be read back as the example indices it holds.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf

from cfal.data import pipeline

NUM = 50          # examples in the source
SIDE = 4


def index_images(num: int) -> np.ndarray:
  """uint8 `[num, SIDE, SIDE]`; pixel (0, 0) holds the index, the rest 0
  except pixel (0, 1) = 255, so flips and rotations move a known mark."""
  images = np.zeros([num, SIDE, SIDE], np.uint8)
  images[:, 0, 0] = np.arange(num)
  images[:, 0, 1] = 255
  return images


@pytest.fixture(name="source")
def fixture_source():
  labels = np.arange(NUM) % 5
  return pipeline.array_source(index_images(NUM), labels,
                               tuple(f"c{i}" for i in range(5)))


def read_indices(images: np.ndarray) -> np.ndarray:
  """The index each (unaugmented) image carries."""
  return np.rint(images[:, 0, 0, 0] * 255).astype(int)


def take(dataset: tf.data.Dataset, batches: int) -> list[tuple]:
  return [(x.numpy(), y.numpy()) for x, y in dataset.take(batches)]


def contract_order(indices: np.ndarray, seed: int, batch: int,
                   positions: range) -> np.ndarray:
  """What the module docstring promises, one scalar position at a time:
  position p of epoch e reads indices[index_shuffle(p mod E, (seed, e))],
  with E the examples of the whole batches of an epoch."""
  per_epoch = (len(indices) // batch) * batch
  out = []
  for p in positions:
    shuffled = tf.random.experimental.index_shuffle(
        tf.constant(p % per_epoch, tf.int64),
        seed=tf.constant([seed, p // per_epoch], tf.int64),
        max_index=len(indices) - 1)
    out.append(indices[int(shuffled)])
  return np.array(out)


def test_order_follows_the_position_contract_across_epochs(source):
  indices = np.arange(3, NUM)          # a training subset, not 0..N-1
  batch, seed = 8, 11                  # 47 examples: 5 batches per epoch
  got = take(pipeline.train_dataset(source, indices, global_batch_size=batch,
                                    seed=seed), 12)
  order = np.concatenate([read_indices(x) for x, _ in got])
  np.testing.assert_array_equal(
      order, contract_order(indices, seed, batch, range(12 * batch)))
  labels = np.concatenate([y for _, y in got])
  np.testing.assert_array_equal(labels, source.labels[order])


def test_every_epoch_visits_distinct_examples_in_a_new_order(source):
  indices = np.arange(NUM)
  batch = 10
  got = take(pipeline.train_dataset(source, indices, global_batch_size=batch,
                                    seed=0), 10)
  order = np.concatenate([read_indices(x) for x, _ in got])
  first, second = order[:NUM], order[NUM:]
  assert len(set(first)) == NUM and len(set(second)) == NUM
  assert not np.array_equal(first, second)


def test_a_resumed_stream_continues_exactly(source):
  indices = np.arange(NUM)
  whole = take(pipeline.train_dataset(source, indices, global_batch_size=8,
                                      seed=3, augment="flip_rotate"), 9)
  resumed = take(pipeline.train_dataset(source, indices, global_batch_size=8,
                                        seed=3, start_step=4,
                                        augment="flip_rotate"), 5)
  for (x, y), (rx, ry) in zip(whole[4:], resumed):
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)


@pytest.mark.parametrize("pipelines", [1, 2])
def test_replica_slices_add_up_to_the_global_batch(source, pipelines):
  indices = np.arange(NUM)
  batch, replicas = 8, 2
  whole = take(pipeline.train_dataset(source, indices, global_batch_size=batch,
                                      seed=5, augment="flip"), 3)
  per_pipeline = []
  for pipeline_id in range(pipelines):
    context = tf.distribute.InputContext(
        num_input_pipelines=pipelines, input_pipeline_id=pipeline_id,
        num_replicas_in_sync=replicas)
    per_pipeline.append(take(pipeline.train_dataset(
        source, indices, global_batch_size=batch, seed=5, augment="flip",
        input_context=context), 3 * replicas // pipelines))
  # Replica r of step s: with one pipeline the slices alternate, with one
  # pipeline per replica each holds its own.
  for step, (x, y) in enumerate(whole):
    if pipelines == 1:
      parts = per_pipeline[0][step * replicas:(step + 1) * replicas]
    else:
      parts = [per_pipeline[r][step] for r in range(replicas)]
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)


def dihedral(image: np.ndarray, kind: str) -> list[np.ndarray]:
  """The images `kind` may turn `image` into, written with NumPy."""
  flips = [image, image[:, ::-1]]
  if kind == "flip":
    return flips
  mirrored = flips + [f[::-1] for f in flips]
  return [np.rot90(m, k) for m in mirrored for k in range(4)]


@pytest.mark.parametrize("kind, distinct", [("flip", 2), ("flip_rotate", 8)])
def test_augmentation_gives_each_image_one_of_its_symmetries(source, kind,
                                                             distinct):
  indices = np.arange(NUM)
  plain = take(pipeline.train_dataset(source, indices, global_batch_size=NUM,
                                      seed=2), 1)[0][0][..., 0]
  moved = take(pipeline.train_dataset(source, indices, global_batch_size=NUM,
                                      seed=2, augment=kind), 1)[0][0][..., 0]
  seen = set()
  for before, after in zip(plain, moved):
    options = dihedral(before, kind)
    matches = [i for i, o in enumerate(options) if np.array_equal(after, o)]
    assert matches, "not a flip/rotation of its source image"
    seen.add(tuple(np.argwhere(after == 1.0)[0]))  # where the mark went
  # The mark at (0, 1) reaches every place the symmetries can put it.
  assert len(seen) == distinct, seen


def test_unknown_augmentation_is_refused(source):
  with pytest.raises(ValueError, match="augment"):
    pipeline.train_dataset(source, np.arange(NUM), global_batch_size=8,
                           seed=0, augment="mixup")


def test_rotations_need_square_images():
  wide = pipeline.array_source(np.zeros([10, 4, 6], np.uint8),
                               np.zeros(10, int), ("only",))
  with pytest.raises(ValueError, match="square images, not 4x6"):
    pipeline.train_dataset(wide, np.arange(10), global_batch_size=2, seed=0,
                           augment="flip_rotate")
  pipeline.train_dataset(wide, np.arange(10), global_batch_size=2, seed=0,
                         augment="flip")     # flips keep any shape

