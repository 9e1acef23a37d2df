"""Tests for class-per-subfolder image trees (cfal.data.folder)."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import cfal.data
from cfal.data import DataError
from cfal.data.folder import (FolderIndex, decode_image, folder_class_counts,
                              scan_image_folder)

TOL = 1 / 255 + 1e-6


def rgb_array(h: int, w: int, seed: int) -> np.ndarray:
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


# (class, relative path, Pillow mode, format, channels after conversion)
GOOD = [
    ("alpha", "a_rgb.png", "RGB", "PNG", 3),
    ("alpha", "a_gray.jpg", "L", "JPEG", 1),
    ("alpha", "a_rgba.png", "RGBA", "PNG", 3),
    ("alpha", "a.tif", "RGB", "TIFF", 3),
    ("beta", "b.bmp", "RGB", "BMP", 3),
    ("beta", "b_palette.bmp", "P", "BMP", 3),
    ("beta", "b.gif", "P", "GIF", 3),
    ("beta", "b_gray.tiff", "L", "TIFF", 1),
    ("beta", "UPPER.PNG", "RGB", "PNG", 3),
    ("gamma", "c_rgba.TIF", "RGBA", "TIFF", 3),
    ("gamma", "c_16bit.tif", "I;16", "TIFF", 1),
    ("gamma", "tiff_named.png", "RGB", "TIFF", 3),
    ("gamma", "nested/deeper/c_gray.png", "L", "PNG", 1),
]
BAD = [("alpha", "truncated.png"), ("beta", "random.jpg")]


def save(path, mode: str, fmt: str, seed: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  h, w = 9 + seed % 5, 11 + seed % 3
  rgb = rgb_array(h, w, seed)
  if mode == "I;16":
    image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
  else:
    image = Image.fromarray(rgb, "RGB").convert(mode)
  image.save(path, fmt)


@pytest.fixture
def tree(tmp_path):
  """root/{alpha,beta,gamma}/... with good, corrupt and ignored files."""
  root = tmp_path / "root"
  for seed, (cls, rel, mode, fmt, _) in enumerate(GOOD):
    save(root / cls / rel, mode, fmt, seed)
  # Half of a valid PNG: its header opens, its pixels do not decode.
  big = root / "alpha" / "truncated.png"
  Image.fromarray(rgb_array(64, 64, 99)).save(big, "PNG")
  data = big.read_bytes()
  big.write_bytes(data[: len(data) // 2])
  (root / "beta" / "random.jpg").write_bytes(
      np.random.default_rng(5).bytes(500))
  # Ignored: other extensions, hidden files and folders, files in root.
  (root / "alpha" / "notes.txt").write_text("not an image")
  save(root / "alpha" / ".hidden.png", "RGB", "PNG", 1)
  save(root / ".cache" / "x.png", "RGB", "PNG", 2)
  save(root / "gamma" / ".thumbs" / "y.png", "RGB", "PNG", 3)
  save(root / "stray.png", "RGB", "PNG", 4)
  return root


def expected_good(root) -> tuple[list[str], list[int]]:
  classes = ["alpha", "beta", "gamma"]
  pairs = sorted((classes.index(c), str(root / c / rel))
                 for c, rel, *_ in GOOD)
  return [p for _, p in pairs], [label for label, _ in pairs]


def test_scan_full(tree):
  index = scan_image_folder(tree)
  assert isinstance(index, FolderIndex)
  assert index.class_names == ("alpha", "beta", "gamma")
  paths, labels = expected_good(tree)
  assert list(index.paths) == paths
  assert index.labels.dtype == np.int32
  np.testing.assert_array_equal(index.labels, labels)
  assert not index.labels.flags.writeable
  bad = dict(index.bad_files)
  assert sorted(bad) == sorted(str(tree / c / f) for c, f in BAD)
  assert "truncated" in bad[str(tree / "alpha" / "truncated.png")].lower()
  assert "cannot identify" in bad[str(tree / "beta" / "random.jpg")]
  assert all("\n" not in reason for reason in bad.values())
  assert index.channels == 3 and index.mixed_channels
  np.testing.assert_array_equal(folder_class_counts(index), [4, 5, 4])


def test_scan_header_only(tree):
  index = scan_image_folder(tree, verify="header", num_workers=1)
  # Opening reads only the header: the truncated PNG passes.
  assert [p for p, _ in index.bad_files] == [str(tree / "beta" /
                                                 "random.jpg")]
  assert str(tree / "alpha" / "truncated.png") in index.paths


def test_scan_channels_majority(tmp_path):
  root = tmp_path / "root"
  for i in range(3):
    save(root / "a" / f"{i}.png", "L", "PNG", i)
  save(root / "b" / "rgb.png", "RGB", "PNG", 5)
  index = scan_image_folder(root)
  assert index.channels == 1 and index.mixed_channels
  # RGB and RGBA both become 3 channels: not mixed.
  root2 = tmp_path / "root2"
  save(root2 / "a" / "x.png", "RGBA", "PNG", 1)
  save(root2 / "b" / "y.jpg", "RGB", "JPEG", 2)
  index = scan_image_folder(root2)
  assert index.channels == 3 and not index.mixed_channels


def decode_all(paths, size, channels) -> list[np.ndarray]:
  ds = tf.data.Dataset.from_tensor_slices(list(paths)).map(
      lambda p: decode_image(p, image_size=size, channels=channels),
      num_parallel_calls=2)
  assert ds.element_spec.shape == (*size, channels)
  assert ds.element_spec.dtype == tf.float32
  return [x.numpy() for x in ds]


@pytest.mark.parametrize("channels", [3, 1])
def test_decode_in_dataset(tree, channels):
  index = scan_image_folder(tree)
  images = decode_all(index.paths, (12, 10), channels)
  assert len(images) == len(index.paths)
  for image in images:
    assert image.shape == (12, 10, channels) and image.dtype == np.float32
    assert image.min() >= 0 and image.max() <= 1
    assert image.max() > 0.5  # Random pixels: not a blank image.


def pillow_reference(path: str, channels: int) -> np.ndarray:
  with Image.open(path) as image:
    if image.mode == "I;16":
      gray = np.asarray(image, np.float64)[..., None] / 65535
      return gray if channels == 1 else np.repeat(gray, 3, -1)
    mode = "L" if channels == 1 else "RGB"
    array = np.asarray(image.convert(mode), np.float64) / 255
    return array.reshape(*array.shape[:2], channels)


@pytest.mark.parametrize("channels", [3, 1])
def test_pillow_decoded_pixels_match_pillow(tree, channels):
  """TIFF (and BMP) pixels, at their own size, are what Pillow reads."""
  for cls, rel, _, fmt, _ in GOOD:
    if fmt not in ("TIFF", "BMP"):
      continue
    path = str(tree / cls / rel)
    want = pillow_reference(path, channels)
    got = decode_image(tf.constant(path), image_size=want.shape[:2],
                       channels=channels).numpy()
    np.testing.assert_allclose(got, want, atol=TOL, rtol=0, err_msg=path)


def test_tensorflow_decoded_pixels_match_pillow(tree):
  """Lossless formats decoded by TensorFlow agree with Pillow too."""
  for cls, rel, _, fmt, _ in GOOD:
    if fmt not in ("PNG", "GIF"):
      continue
    path = str(tree / cls / rel)
    for channels in (3, 1):
      want = pillow_reference(path, channels)
      got = decode_image(tf.constant(path), image_size=want.shape[:2],
                         channels=channels).numpy()
      # Luma weights differ in the last digit between the two libraries.
      atol = TOL if channels == 3 else 2 / 255
      np.testing.assert_allclose(got, want, atol=atol, rtol=0,
                                 err_msg=path)


def test_decode_argument_errors(tree):
  path = tf.constant(str(tree / "alpha" / "a_rgb.png"))
  with pytest.raises(ValueError, match="channels"):
    decode_image(path, image_size=(4, 4), channels=4)
  with pytest.raises(ValueError, match="image_size"):
    decode_image(path, image_size=(4,), channels=3)


def test_lazy_exports():
  assert cfal.data.scan_image_folder is scan_image_folder
  assert {"scan_image_folder", "decode_image", "FolderIndex",
          "folder_class_counts"} <= set(cfal.data.__all__)


# --- Errors

def assert_one_line(err: pytest.ExceptionInfo) -> str:
  msg = str(err.value)
  assert msg and "\n" not in msg
  return msg


def test_missing_root(tmp_path):
  with pytest.raises(DataError) as err:
    scan_image_folder(tmp_path / "nope")
  assert "not found" in assert_one_line(err)


def test_root_is_a_file(tmp_path):
  path = tmp_path / "file.png"
  save(path, "RGB", "PNG", 0)
  with pytest.raises(DataError) as err:
    scan_image_folder(path)
  assert "not a folder" in assert_one_line(err)


def test_empty_root(tmp_path):
  (tmp_path / "a").mkdir()
  (tmp_path / "a" / "readme.txt").write_text("x")
  save(tmp_path / "loose.png", "RGB", "PNG", 0)
  with pytest.raises(DataError) as err:
    scan_image_folder(tmp_path)
  assert "no image files" in assert_one_line(err)


def test_one_class_only(tmp_path):
  save(tmp_path / "only" / "x.png", "RGB", "PNG", 0)
  save(tmp_path / "only" / "y.png", "RGB", "PNG", 1)
  with pytest.raises(DataError) as err:
    scan_image_folder(tmp_path)
  msg = assert_one_line(err)
  assert "only one class" in msg and "only" in msg


def test_class_folder_without_images(tmp_path):
  save(tmp_path / "a" / "x.png", "RGB", "PNG", 0)
  save(tmp_path / "b" / "y.png", "RGB", "PNG", 1)
  (tmp_path / "empty").mkdir()
  with pytest.raises(DataError) as err:
    scan_image_folder(tmp_path)
  assert "empty hold no image files" in assert_one_line(err)


def test_class_folder_all_bad(tmp_path):
  save(tmp_path / "a" / "x.png", "RGB", "PNG", 0)
  (tmp_path / "b").mkdir()
  (tmp_path / "b" / "1.png").write_bytes(b"\x89PNG garbage")
  (tmp_path / "b" / "2.jpg").write_bytes(b"")
  with pytest.raises(DataError) as err:
    scan_image_folder(tmp_path)
  msg = assert_one_line(err)
  assert str(tmp_path / "b") in msg and "all 2 image files" in msg


def test_bad_arguments(tree):
  with pytest.raises(ValueError, match="verify"):
    scan_image_folder(tree, verify="none")
  with pytest.raises(ValueError, match="num_workers"):
    scan_image_folder(tree, num_workers=0)
