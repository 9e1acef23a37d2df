"""The training stream of a folder source: files decoded one per element in
parallel, put back in order, so the stream is the same pure function of
(seed, step) as for in-memory sets, across resumes and replica layouts."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfal.data import datasets, pipeline

SIZE = 4
COUNT = 21


@pytest.fixture(name="bundle")
def fixture_bundle(tmp_path):
  root = tmp_path / "tiles"
  for i in range(COUNT):
    (root / f"c{i % 3}").mkdir(parents=True, exist_ok=True)
    pixels = np.full((SIZE, SIZE, 3), 0, np.uint8)
    pixels[0, 0] = i * 10          # each file carries its index
    pixels[0, 1] = 255             # a mark that flips and turns move
    Image.fromarray(pixels).save(root / f"c{i % 3}" / f"{i:02d}.png")
  return datasets.load_data(datasets.DataConfig(
      name=f"folder:{root}", image_size=SIZE, validation_split=0.0))


def file_index(images: np.ndarray) -> np.ndarray:
  """The index each image carries, wherever augmentation put the mark."""
  flat = images[..., 0].reshape(len(images), -1)
  values = np.where(np.isclose(flat, 1.0), 0.0, flat).max(axis=1)
  return np.rint(values * 255 / 10).astype(int)


def take(ds, n):
  return [(x.numpy(), y.numpy()) for x, y in ds.take(n)]


def test_folder_order_follows_the_position_contract(bundle):
  batch, seed = 4, 9
  got = take(pipeline.train_dataset(bundle.source, bundle.train_indices,
                                    global_batch_size=batch, seed=seed), 10)
  per_epoch = (len(bundle.train_indices) // batch) * batch
  want = []
  for p in range(10 * batch):
    shuffled = tf.random.experimental.index_shuffle(
        tf.constant(p % per_epoch, tf.int64),
        seed=tf.constant([seed, p // per_epoch], tf.int64),
        max_index=len(bundle.train_indices) - 1)
    want.append(bundle.train_indices[int(shuffled)])
  names = [bundle.source.paths[i] for i in want]
  carried = [int(name.split("/")[1][:2]) for name in names]
  order = np.concatenate([file_index(x) for x, _ in got])
  np.testing.assert_array_equal(order, carried)
  np.testing.assert_array_equal(np.concatenate([y for _, y in got]),
                                bundle.source.labels[want])


def test_folder_stream_resumes_and_splits_over_replicas(bundle):
  def stream(**kw):
    return pipeline.train_dataset(bundle.source, bundle.train_indices,
                                  global_batch_size=6, seed=2,
                                  augment="flip_rotate", **kw)

  whole = take(stream(), 6)
  for (x, y), (rx, ry) in zip(whole[2:], take(stream(start_step=2), 4)):
    np.testing.assert_array_equal(rx, x)
    np.testing.assert_array_equal(ry, y)
  for pipelines in (1, 3):
    parts = []
    for pid in range(pipelines):
      context = tf.distribute.InputContext(
          num_input_pipelines=pipelines, input_pipeline_id=pid,
          num_replicas_in_sync=3)
      parts.append(take(stream(input_context=context),
                        6 * 3 // pipelines))
    for step, (x, y) in enumerate(whole):
      if pipelines == 1:
        slices = parts[0][step * 3:(step + 1) * 3]
      else:
        slices = [parts[r][step] for r in range(3)]
      np.testing.assert_array_equal(np.concatenate([s[0] for s in slices]), x)
      np.testing.assert_array_equal(np.concatenate([s[1] for s in slices]), y)
