"""Tests for cfal.data: the IDX reader and the Fashion-MNIST loader."""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.server
import os
import struct
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import cfal.data
from cfal.data import (DataError, FASHION_MNIST_CLASSES, load_fashion_mnist,
                       read_idx)
from cfal.data import fashion_mnist as fm

SYSTEM_DIR = "/usr/share/datasets/fashion-mnist"
_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09,
          np.dtype(np.int16): 0x0B, np.dtype(np.int32): 0x0C,
          np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(array: np.ndarray) -> bytes:
  """Encodes `array` as an IDX file (test-only writer)."""
  header = struct.pack(">BBBB", 0, 0, _CODES[array.dtype], array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_split(directory, prefix: str, images: np.ndarray,
                labels: np.ndarray, compress: bool) -> None:
  for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
    name = f"{prefix}-{kind}-ubyte"
    payload = idx_bytes(arr)
    if compress:
      (directory / (name + ".gz")).write_bytes(gzip.compress(payload))
    else:
      (directory / name).write_bytes(payload)


def small_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  rng = np.random.default_rng(seed)
  images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
  labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
  return images, labels


@pytest.fixture
def isolated(monkeypatch, tmp_path):
  """Hides every real copy: empty env dir, no system dir, no Keras cache."""
  empty = tmp_path / "empty"
  empty.mkdir()
  monkeypatch.setenv("CFAL_DATA_DIR", str(empty))
  monkeypatch.setattr(fm, "SYSTEM_DATA_DIR", str(tmp_path / "no-system"))
  monkeypatch.setattr(fm, "KERAS_CACHE_DIR", str(tmp_path / "no-keras"))
  return empty


def assert_one_line(err: pytest.ExceptionInfo) -> str:
  msg = str(err.value)
  assert msg and "\n" not in msg
  return msg


# --- Real data

needs_real = pytest.mark.skipif(
    not os.path.isdir(SYSTEM_DIR) and not os.environ.get("CFAL_DATA_DIR"),
    reason="no Fashion-MNIST (apt-get install dataset-fashion-mnist)")


@needs_real
@pytest.mark.parametrize("split,n", [("train", 60000), ("test", 10000)])
def test_real_split(split, n):
  images, labels = load_fashion_mnist(split)
  assert images.shape == (n, 28, 28) and images.dtype == np.uint8
  assert labels.shape == (n,) and labels.dtype == np.int32
  assert labels.min() == 0 and labels.max() == 9
  np.testing.assert_array_equal(np.bincount(labels, minlength=10),
                                np.full(10, n // 10))
  assert images.max() == 255 and images.min() == 0


def test_classes_and_exports():
  assert len(FASHION_MNIST_CLASSES) == 10
  assert FASHION_MNIST_CLASSES[0] == "T-shirt/top"
  assert FASHION_MNIST_CLASSES[9] == "Ankle boot"
  assert issubclass(DataError, ValueError)
  assert set(cfal.data.__all__) >= {"DataError", "FASHION_MNIST_CLASSES",
                                    "load_fashion_mnist", "read_idx"}


# --- Small synthetic copies

@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_data_dir_gz_and_raw(tmp_path, isolated, compress):
  train = small_split(7, seed=0)
  test = small_split(3, seed=1)
  write_split(tmp_path, "train", *train, compress=compress)
  write_split(tmp_path, "t10k", *test, compress=compress)
  for split, (want_x, want_y) in (("train", train), ("test", test)):
    x, y = load_fashion_mnist(split, data_dir=str(tmp_path))
    assert x.dtype == np.uint8 and y.dtype == np.int32
    np.testing.assert_array_equal(x, want_x)
    np.testing.assert_array_equal(y, want_y)


def test_env_var_dir_is_searched(tmp_path, isolated):
  write_split(isolated, "t10k", *small_split(4, seed=2), compress=True)
  x, y = load_fashion_mnist("test", data_dir=str(tmp_path / "nowhere"))
  assert x.shape == (4, 28, 28) and y.shape == (4,)


def test_gzip_detected_by_magic_not_extension(tmp_path):
  arr = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
  gz_named_raw = tmp_path / "a.gz"
  gz_named_raw.write_bytes(idx_bytes(arr))
  raw_named_gz = tmp_path / "b-ubyte"
  raw_named_gz.write_bytes(gzip.compress(idx_bytes(arr)))
  for path in (gz_named_raw, raw_named_gz):
    out = read_idx(path)
    assert out.dtype == np.int32 and out.dtype.isnative
    np.testing.assert_array_equal(out, arr)


@pytest.mark.parametrize("dtype", sorted(_CODES, key=str))
def test_read_idx_dtypes(tmp_path, dtype):
  arr = (np.arange(6) - 2).astype(dtype).reshape(3, 2)
  path = tmp_path / "x"
  path.write_bytes(idx_bytes(arr))
  out = read_idx(str(path))
  assert out.dtype == dtype
  np.testing.assert_array_equal(out, arr)


# --- Malformed files

def _corrupt_dir(tmp_path, images_bytes: bytes, compress: bool):
  images, labels = small_split(5, seed=3)
  write_split(tmp_path, "t10k", images, labels, compress=False)
  name = tmp_path / "t10k-images-idx3-ubyte"
  name.unlink()
  if compress:
    (tmp_path / (name.name + ".gz")).write_bytes(gzip.compress(images_bytes))
  else:
    name.write_bytes(images_bytes)
  return str(tmp_path)


@pytest.mark.parametrize("compress", [True, False], ids=["gz", "raw"])
def test_truncated_payload(tmp_path, isolated, compress):
  good = idx_bytes(small_split(5, seed=3)[0])
  d = _corrupt_dir(tmp_path, good[:-100], compress)
  with pytest.raises(DataError) as err:
    load_fashion_mnist("test", data_dir=d)
  msg = assert_one_line(err)
  assert "t10k-images-idx3-ubyte" in msg and "truncated" in msg


def test_truncated_gzip_stream(tmp_path, isolated):
  good = gzip.compress(idx_bytes(small_split(5, seed=3)[0]))
  path = tmp_path / "t10k-images-idx3-ubyte.gz"
  path.write_bytes(good[: len(good) // 2])
  with pytest.raises(DataError) as err:
    read_idx(path)
  msg = assert_one_line(err)
  assert str(path) in msg and "gzip" in msg


def test_bad_magic(tmp_path, isolated):
  good = idx_bytes(small_split(5, seed=3)[0])
  d = _corrupt_dir(tmp_path, b"\x12\x34" + good[2:], compress=False)
  with pytest.raises(DataError) as err:
    load_fashion_mnist("test", data_dir=d)
  msg = assert_one_line(err)
  assert "t10k-images-idx3-ubyte" in msg and "magic" in msg


@pytest.mark.parametrize("payload,needle", [
    (b"\x00\x00\x07\x01\x00\x00\x00\x01x", "dtype code 0x07"),
    (b"\x00\x00\x08\x03\x00\x00", "truncated IDX header"),
    (b"\x00\x00", "too short"),
    (b"\x00\x00\x08\x01\x00\x00\x00\x02abc", "trailing data"),
], ids=["dtype", "header", "short", "trailing"])
def test_read_idx_malformed(tmp_path, payload, needle):
  path = tmp_path / "bad"
  path.write_bytes(payload)
  with pytest.raises(DataError) as err:
    read_idx(path)
  msg = assert_one_line(err)
  assert needle in msg and str(path) in msg


def test_wrong_image_shape(tmp_path, isolated):
  images = np.zeros((2, 14, 14), np.uint8)
  write_split(tmp_path, "t10k", images, np.zeros(2, np.uint8), compress=True)
  with pytest.raises(DataError, match=r"\[N, 28, 28\]"):
    load_fashion_mnist("test", data_dir=str(tmp_path))


def test_label_count_mismatch(tmp_path, isolated):
  images, _ = small_split(3, seed=4)
  write_split(tmp_path, "t10k", images, np.zeros(2, np.uint8), compress=True)
  with pytest.raises(DataError, match="2 labels for 3 images"):
    load_fashion_mnist("test", data_dir=str(tmp_path))


def test_bad_split():
  with pytest.raises(ValueError, match="split"):
    load_fashion_mnist("validation")


# --- Missing files and download

def test_missing_files(tmp_path, isolated):
  empty = tmp_path / "also-empty"
  empty.mkdir()
  with pytest.raises(DataError) as err:
    load_fashion_mnist("train", data_dir=str(empty))
  msg = assert_one_line(err)
  assert "apt-get install dataset-fashion-mnist" in msg
  assert "download=True" in msg
  assert str(empty) in msg and str(isolated) in msg


def test_download_unreachable(tmp_path, isolated, monkeypatch):
  # Port 9 (discard) on loopback is closed: the connection is refused at once.
  monkeypatch.setattr(fm, "BASE_URL", "http://127.0.0.1:9/")
  target = tmp_path / "dl"
  start = time.monotonic()
  with pytest.raises(DataError) as err:
    load_fashion_mnist("test", data_dir=str(target), download=True)
  assert time.monotonic() - start < 10
  msg = assert_one_line(err)
  assert "http://127.0.0.1:9/train-images-idx3-ubyte.gz" in msg
  assert "refused" in msg.lower() and "network" in msg
  # Nothing (not even a partial temp file) is left behind.
  assert os.listdir(target) == []


def test_download_not_needed_when_present(tmp_path, isolated, monkeypatch):
  monkeypatch.setattr(fm, "BASE_URL", "http://127.0.0.1:9/")
  write_split(tmp_path, "t10k", *small_split(2, seed=5), compress=False)
  x, _ = load_fashion_mnist("test", data_dir=str(tmp_path), download=True)
  assert x.shape == (2, 28, 28)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):

  def log_message(self, *args) -> None:
    pass


@pytest.fixture
def loopback_mirror(tmp_path, monkeypatch):
  """Serves a directory of small .gz files on 127.0.0.1 as the mirror."""
  served = tmp_path / "served"
  served.mkdir()
  for prefix, seed in (("train", 6), ("t10k", 7)):
    write_split(served, prefix, *small_split(3, seed), compress=True)
  handler = functools.partial(_QuietHandler, directory=str(served))
  server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
  thread = threading.Thread(target=server.serve_forever,
                            kwargs={"poll_interval": 0.05}, daemon=True)
  thread.start()
  monkeypatch.setattr(
      fm, "BASE_URL", f"http://127.0.0.1:{server.server_address[1]}/")
  monkeypatch.setattr(fm, "_MD5", {
      p.name: hashlib.md5(p.read_bytes()).hexdigest()
      for p in served.iterdir()})
  yield served
  server.shutdown()
  server.server_close()


def test_download_from_loopback_mirror(tmp_path, isolated, loopback_mirror,
                                      monkeypatch):
  import keras  # pylint: disable=import-outside-toplevel
  calls = []
  real_get_file = keras.utils.get_file

  def spy(**kwargs):
    calls.append(kwargs)
    return real_get_file(**kwargs)

  monkeypatch.setattr(keras.utils, "get_file", spy)
  target = tmp_path / "dl"
  x, y = load_fashion_mnist("test", data_dir=str(target), download=True)
  want_x, want_y = small_split(3, 7)
  np.testing.assert_array_equal(x, want_x)
  np.testing.assert_array_equal(y, want_y)
  # All four files are fetched, under their final names only.
  assert sorted(os.listdir(target)) == sorted(os.listdir(loopback_mirror))
  # Through keras.utils.get_file, each with its checksum, into data_dir.
  assert sorted(c["fname"] for c in calls) == sorted(fm._MD5)
  for c in calls:
    assert c["origin"] == fm.BASE_URL + c["fname"]
    assert c["file_hash"] == fm._MD5[c["fname"]]
    assert c["hash_algorithm"] == "md5"
    assert os.path.dirname(c["cache_dir"]) == str(target)
  # A second call finds the files and downloads nothing.
  calls.clear()
  load_fashion_mnist("train", data_dir=str(target), download=True)
  assert not calls


def test_download_checksum_mismatch(tmp_path, isolated, loopback_mirror,
                                    monkeypatch):
  monkeypatch.setitem(fm._MD5, "train-images-idx3-ubyte.gz", "0" * 32)
  target = tmp_path / "dl"
  with pytest.raises(DataError) as err:
    load_fashion_mnist("train", data_dir=str(target), download=True)
  msg = assert_one_line(err)
  assert f"{fm.BASE_URL}train-images-idx3-ubyte.gz" in msg and "MD5" in msg
  served = loopback_mirror / "train-images-idx3-ubyte.gz"
  assert hashlib.md5(served.read_bytes()).hexdigest() in msg
  assert "0" * 32 in msg and str(target) in msg
  # No file that failed its check is kept, under any name.
  assert "train-images-idx3-ubyte.gz" not in os.listdir(target)
  assert not [f for f in os.listdir(target) if f.startswith(".partial")]


def test_download_missing_on_the_mirror(tmp_path, isolated, loopback_mirror):
  (loopback_mirror / "t10k-labels-idx1-ubyte.gz").unlink()
  target = tmp_path / "dl"
  with pytest.raises(DataError) as err:
    load_fashion_mnist("test", data_dir=str(target), download=True)
  msg = assert_one_line(err)
  assert f"{fm.BASE_URL}t10k-labels-idx1-ubyte.gz" in msg and "404" in msg
  # The files fetched before the failure are kept, and complete.
  assert "t10k-labels-idx1-ubyte.gz" not in os.listdir(target)
  assert not [f for f in os.listdir(target) if f.startswith(".partial")]


def test_loading_without_download_imports_no_tensorflow(tmp_path):
  """The NumPy-only loader stays NumPy-only; Keras comes in to download."""
  write_split(tmp_path, "t10k", *small_split(2, seed=8), compress=True)
  code = ("import sys; from cfal.data import load_fashion_mnist; "
          f"load_fashion_mnist('test', data_dir={str(tmp_path)!r}); "
          "print(sorted(m for m in ('keras', 'tensorflow') "
          "if m in sys.modules))")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True,
                       text=True, timeout=120, check=True).stdout
  assert out.strip() == "[]"
