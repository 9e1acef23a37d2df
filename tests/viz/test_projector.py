"""The projector files: metadata, sprite and config, from generated data
and through a real evaluator."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest
import tensorflow as tf
from google.protobuf import text_format
from PIL import Image
from tensorboard.plugins import projector

from cfal.report import tensorboard
from cfal.training import build as build_lib
from cfal.training.evaluator import Evaluator, evaluator_for
from support.strategies import mirrored_strategy
from support.training import small_config

NAMES = ["zero", "one", "two"]


def _config(folder: pathlib.Path) -> projector.ProjectorConfig:
  config = projector.ProjectorConfig()
  text_format.Parse((folder / "projector_config.pbtxt").read_text(), config)
  assert len(config.embeddings) == 1
  return config


def _metadata(folder: pathlib.Path) -> list[list[str]]:
  lines = (folder / "metadata.tsv").read_text(encoding="utf-8").splitlines()
  return [line.split("\t") for line in lines]


def _quadrant_images(n: int, size: int = 64) -> np.ndarray:
  """RGB images of four flat quadrants, a different colour set per image."""
  rng = np.random.default_rng(0)
  colours = rng.integers(0, 256, (n, 2, 2, 3)) / 255.0
  half = size // 2
  return np.repeat(np.repeat(colours, half, axis=1), half,
                   axis=2).astype(np.float32)


def _thumbnail(sheet: np.ndarray, k: int, grid: int, width: int,
               height: int) -> np.ndarray:
  row, column = divmod(k, grid)
  return sheet[row * height:(row + 1) * height,
               column * width:(column + 1) * width]


def test_projector_files_name_the_sprite_and_keep_the_points_order(
    tmp_path):
  n = 10
  images = _quadrant_images(n)
  labels = np.array([0, 1, 2, 0, 1, 2, 2, 1, 0, 0])
  predictions = np.array([0, 1, 1, 0, 2, 2, 2, 1, 0, 1])
  embeddings = np.random.default_rng(1).normal(size=(n, 5))
  tensorboard.write_projector(str(tmp_path), embeddings, labels, NAMES,
                              name="validation", predictions=predictions,
                              images=images)
  folder = tmp_path / "validation"

  entry = _config(folder).embeddings[0]
  assert entry.tensor_path == "embeddings.tsv"
  assert entry.metadata_path == "metadata.tsv"
  assert entry.sprite.image_path == "sprite.png"
  assert list(entry.sprite.single_image_dim) == [48, 48]  # 64 px -> 48

  sheet = Image.open(folder / "sprite.png")
  assert sheet.mode == "RGB"
  assert sheet.size == (4 * 48, 4 * 48)  # ceil(sqrt(10)) = 4 a side
  pixels = np.asarray(sheet)
  for k in range(n):
    thumb = _thumbnail(pixels, k, 4, 48, 48)
    expected = np.rint(images[k] * 255).astype(np.uint8)
    # Each quadrant is flat: away from the seams the downscaled thumbnail
    # holds exactly the quadrant's colour.
    for qy in range(2):
      for qx in range(2):
        region = thumb[qy * 24 + 2:qy * 24 + 22, qx * 24 + 2:qx * 24 + 22]
        np.testing.assert_array_equal(
            region, np.broadcast_to(expected[qy * 32, qx * 32], region.shape),
            err_msg=f"thumbnail {k}, quadrant {qy}{qx}")
  np.testing.assert_array_equal(pixels[3 * 48:, 2 * 48:], 0)  # empty cells

  rows = _metadata(folder)
  assert rows[0] == ["class", "label", "predicted", "correct"]
  assert len(rows) == n + 1
  assert rows[1:] == [[NAMES[y], str(y), NAMES[p], str(int(y == p))]
                      for y, p in zip(labels, predictions)]
  np.testing.assert_allclose(np.loadtxt(folder / "embeddings.tsv"),
                             embeddings, rtol=1e-5)


def test_small_greyscale_images_go_in_unscaled_and_wide_ones_keep_aspect(
    tmp_path):
  rng = np.random.default_rng(2)
  digits = rng.random((5, 28, 28, 1)).astype(np.float32)
  sheet, size = tensorboard.sprite(digits)
  assert sheet.mode == "L" and size == (28, 28)
  assert sheet.size == (3 * 28, 3 * 28)
  pixels = np.asarray(sheet)
  for k in range(5):
    np.testing.assert_array_equal(
        _thumbnail(pixels, k, 3, 28, 28),
        np.rint(digits[k, ..., 0] * 255).astype(np.uint8))

  wide = np.zeros((4, 30, 60, 1), np.float32)
  wide[:, :, 30:] = 1.0  # left half black, right half white
  tensorboard.write_projector(str(tmp_path), np.zeros((4, 2)),
                              np.array([0, 1, 2, 0]), NAMES, name="wide",
                              images=wide)
  entry = _config(tmp_path / "wide").embeddings[0]
  assert list(entry.sprite.single_image_dim) == [48, 24]  # [width, height]
  pixels = np.asarray(Image.open(tmp_path / "wide" / "sprite.png"))
  assert pixels.shape == (2 * 24, 2 * 48)
  thumb = _thumbnail(pixels, 3, 2, 48, 24)
  assert (thumb[:, :23] == 0).all() and (thumb[:, 25:] == 255).all()
  assert _metadata(tmp_path / "wide")[0] == ["class", "label"]


def test_without_images_there_is_no_sprite(tmp_path):
  args = (str(tmp_path), np.zeros((3, 2)), np.array([0, 1, 2]), NAMES)
  tensorboard.write_projector(*args, images=np.zeros((3, 8, 8, 3)))
  assert (tmp_path / "validation" / "sprite.png").exists()
  tensorboard.write_projector(*args)
  assert not (tmp_path / "validation" / "sprite.png").exists()
  assert not _config(tmp_path / "validation").embeddings[0].HasField("sprite")
  assert not list((tmp_path / "validation").glob(".*tmp"))


def test_points_past_the_last_image_get_a_blank_thumbnail():
  images = np.ones((2, 8, 8, 3), np.float32)
  sheet, size = tensorboard.sprite(images, count=5)
  pixels = np.asarray(sheet)
  assert size == (8, 8) and pixels.shape == (24, 24, 3)
  assert (_thumbnail(pixels, 1, 3, 8, 8) == 255).all()
  assert (_thumbnail(pixels, 2, 3, 8, 8) == 0).all()
  with pytest.raises(ValueError, match="images for"):
    tensorboard.sprite(images, count=1)
  with pytest.raises(ValueError, match="1 or 3"):
    tensorboard.sprite(np.ones((2, 8, 8, 4)))


def test_2000_folder_sized_images_fit_tensorboards_sprite_limit():
  n = 2000
  colours = np.random.default_rng(3).integers(0, 256, (n, 1, 1, 3)) / 255.0
  # A view, not 300 MB: each image is one flat colour.
  images = np.broadcast_to(colours.astype(np.float32), (n, 112, 112, 3))
  sheet, (width, height) = tensorboard.sprite(images)
  grid = 45  # ceil(sqrt(2000))
  assert (width, height) == (48, 48)
  assert sheet.size == (grid * 48, grid * 48)
  assert max(sheet.size) <= tensorboard.SPRITE_MAX_SIDE
  pixels = np.asarray(sheet)
  for k in (0, 1, 44, 45, 1999):
    np.testing.assert_array_equal(
        _thumbnail(pixels, k, grid, 48, 48)[5:40, 5:40],
        np.broadcast_to(np.rint(colours[k, 0, 0] * 255).astype(np.uint8),
                        (35, 35, 3)))


def test_many_points_shrink_the_thumbnails_to_the_limit():
  sheet, size = tensorboard.sprite(np.ones((3, 112, 112, 3)), count=40_000)
  assert size == (40, 40) and sheet.size == (200 * 40, 200 * 40)
  assert max(sheet.size) <= tensorboard.SPRITE_MAX_SIDE
  with pytest.raises(ValueError, match="do not fit"):
    tensorboard.sprite(np.ones((1, 4, 4, 1)), count=8193 ** 2)


def _flat_forward(images, labels):
  embeddings = tf.reduce_mean(images, axis=[1, 2])
  n = tf.shape(images)[0]
  return {"embeddings": embeddings,
          "predictions": tf.cast(labels, tf.int32),
          "scores": tf.zeros([n, 0], tf.float32)}


def test_the_evaluator_keeps_images_only_when_asked_in_dataset_order():
  rng = np.random.default_rng(4)
  images = rng.random((40, 112, 80, 3)).astype(np.float32)
  labels = (np.arange(40) % 3).astype(np.int32)
  dataset = tf.data.Dataset.from_tensor_slices((images, labels)).batch(8)

  def evaluate(**kwargs):
    return Evaluator(strategy=mirrored_strategy(2), forward=_flat_forward,
                     class_names=NAMES, **kwargs).evaluate(dataset)

  assert evaluate(keep=10).images is None
  result = evaluate(keep=10, keep_images=30)
  assert len(result.embeddings) == 10 and result.images.shape[0] == 30
  # Shrunk on the device to fit 48 px, aspect kept: 112 x 80 -> 48 x 34.
  expected = tf.image.resize(images[:30], [48, 34], method="area").numpy()
  np.testing.assert_allclose(result.images, expected, atol=1e-6)
  whole = evaluate(keep=None, keep_images=5, image_side=None)
  assert len(whole.embeddings) == 40
  np.testing.assert_array_equal(whole.images, images[:5])


def test_validation_through_a_real_evaluator_writes_the_datasets_images(
    tmp_path):
  config = small_config(tmp_path)
  built = build_lib.build(config, training=False)
  points = 50
  evaluator = evaluator_for(built, keep=points, keep_images=points)
  result = evaluator.evaluate(build_lib.validation_dataset(built))
  first = np.concatenate([
      x.numpy() for x, _ in build_lib.validation_dataset(built)])[:points]
  assert first.shape[1:] == (28, 28, 1)
  np.testing.assert_array_equal(result.images, first)

  writer = tf.summary.create_file_writer(str(tmp_path / "validation"))
  tensorboard.write_evaluation(
      writer, result, step=1, title="test", prototypes=None,
      metric="cosine", projector_dir=str(tmp_path),
      projector_name="validation")
  writer.close()
  folder = tmp_path / "validation"
  entry = _config(folder).embeddings[0]
  assert entry.sprite.image_path == "sprite.png"
  assert list(entry.sprite.single_image_dim) == [28, 28]
  pixels = np.asarray(Image.open(folder / "sprite.png"))
  assert pixels.shape == (8 * 28, 8 * 28)  # ceil(sqrt(50)) = 8
  for k in range(points):
    np.testing.assert_array_equal(
        _thumbnail(pixels, k, 8, 28, 28),
        np.rint(first[k, ..., 0] * 255).astype(np.uint8), err_msg=str(k))
  names = built.data.class_names
  rows = _metadata(folder)
  assert rows[0] == ["class", "label", "predicted", "correct"]
  assert rows[1:] == [
      [names[y], str(y), names[p], str(int(y == p))]
      for y, p in zip(result.labels, result.predictions)]
