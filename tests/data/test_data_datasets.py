"""Datasets by name (cfal.data.datasets): image folders decode lazily.

A folder source holds the scanned paths and labels only; the training and
evaluation pipelines read and decode each file when they make its batch,
with exactly the pixels `decode_image` gives for that file.
"""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from cfal.data import datasets, folder, pipeline

SIZE = 8
# (class, file name, Pillow mode, format): both decode paths (TensorFlow
# for PNG/GIF/JPEG, Pillow for TIFF/BMP) and a greyscale file in an RGB set.
FILES = [
    ("ant", "a0.png", "RGB", "PNG"), ("ant", "a1.tif", "RGB", "TIFF"),
    ("ant", "a2.png", "L", "PNG"), ("ant", "a3.bmp", "RGB", "BMP"),
    ("bee", "b0.png", "RGB", "PNG"), ("bee", "b1.gif", "P", "GIF"),
    ("bee", "b2.png", "RGB", "PNG"), ("bee", "b3.tiff", "RGB", "TIFF"),
    ("cat", "c0.png", "RGBA", "PNG"), ("cat", "c1.png", "RGB", "PNG"),
    ("cat", "c2.bmp", "RGB", "BMP"), ("cat", "c3.png", "RGB", "PNG"),
]


def write_tree(root, seed: int) -> None:
  """Every file gets its own random pixels; sizes differ from SIZE."""
  rng = np.random.default_rng(seed)
  for i, (cls, name, mode, fmt) in enumerate(FILES):
    (root / cls).mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (10 + i % 3, 12 + i % 4, 3), np.uint8)
    Image.fromarray(pixels, "RGB").convert(mode).save(root / cls / name, fmt)


def reference(source_paths, channels: int) -> np.ndarray:
  """The pixels of each file decoded on its own, eagerly."""
  return np.stack([
      decode(path, channels) for path in source_paths])


def decode(path: str, channels: int) -> np.ndarray:
  return folder.decode_image(tf.constant(path), image_size=(SIZE, SIZE),
                             channels=channels).numpy()


@pytest.fixture(name="tree")
def fixture_tree(tmp_path):
  root = tmp_path / "root"
  write_tree(root, seed=0)
  return root


def load(root) -> datasets.DataBundle:
  return datasets.load_data(datasets.DataConfig(
      name=f"folder:{root}", image_size=SIZE, validation_split=0.25))


def eval_images(bundle, indices) -> tuple[np.ndarray, np.ndarray]:
  batches = list(pipeline.eval_dataset(bundle.source, indices, batch_size=5))
  return (np.concatenate([x.numpy() for x, _ in batches]),
          np.concatenate([y.numpy() for _, y in batches]))


def test_eval_pipeline_gives_each_files_own_pixels(tree):
  bundle = load(tree)
  index = folder.scan_image_folder(tree)
  want = reference(index.paths, index.channels)
  everything = np.arange(len(bundle.source))
  images, labels = eval_images(bundle, everything)
  assert images.shape == (len(FILES), SIZE, SIZE, 3)
  np.testing.assert_allclose(images, want, rtol=0, atol=1e-6)
  np.testing.assert_array_equal(labels, index.labels)
  images, labels = eval_images(bundle, bundle.validation_indices)
  np.testing.assert_allclose(images, want[bundle.validation_indices],
                             rtol=0, atol=1e-6)


def test_train_pipeline_gives_each_files_own_pixels(tree):
  bundle = load(tree)
  index = folder.scan_image_folder(tree)
  want = reference(index.paths, index.channels)
  train = bundle.train_indices
  stream = pipeline.train_dataset(bundle.source, train, global_batch_size=3,
                                  seed=5)
  seen = []
  for images, labels in stream.take(2 * len(train) // 3):   # two epochs
    for image, label in zip(images.numpy(), labels.numpy()):
      # Every file's pixels are random, so the closest reference is its own.
      distance = np.abs(want - image).max(axis=(1, 2, 3))
      found = int(distance.argmin())
      assert distance[found] <= 1e-6
      assert label == index.labels[found]
      seen.append(found)
  assert sorted(seen) == sorted(np.concatenate([train, train]))


def test_files_are_read_when_batches_are_made_not_at_load(tree):
  """Rewriting every file after `load_data` changes what the pipelines
  yield: the source keeps no decoded copy of any image."""
  bundle = load(tree)
  write_tree(tree, seed=1)
  index = folder.scan_image_folder(tree)
  want = reference(index.paths, index.channels)
  images, _ = eval_images(bundle, bundle.validation_indices)
  np.testing.assert_allclose(images, want[bundle.validation_indices],
                             rtol=0, atol=1e-6)
  images, _ = next(iter(pipeline.train_dataset(
      bundle.source, bundle.train_indices, global_batch_size=4, seed=0)))
  for image in images.numpy():
    assert np.abs(want - image).max(axis=(1, 2, 3)).min() <= 1e-6


def test_loading_decodes_nothing(tree, monkeypatch):
  """`load_data` only scans; `decode_image` is first used inside a
  pipeline (traced once there, not run per file)."""
  calls = []
  real = folder.decode_image

  def counting(*args, **kwargs):
    calls.append(args)
    return real(*args, **kwargs)

  monkeypatch.setattr(folder, "decode_image", counting)
  bundle = load(tree)
  assert not calls
  assert bundle.source.load_batch is None
  eval_images(bundle, np.arange(len(bundle.source)))
  assert len(calls) == 1
