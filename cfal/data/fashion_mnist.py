"""Fashion-MNIST loader that finds local copies and never downloads implicitly.

Files are looked up, in order, in: the `data_dir` argument,
`$CFAL_DATA_DIR`, the Debian package location (`apt-get install
dataset-fashion-mnist`), and the Keras cache. Each of the four standard
files may be gzipped or raw. `download=True` fetches the files from the
official mirror.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from http.client import HTTPException

import numpy as np

from cfal.data.errors import DataError
from cfal.data.idx import check_image_split, read_idx
from cfal.data.search import find_file, unique_dirs

__all__ = ["FASHION_MNIST_CLASSES", "load_fashion_mnist"]

FASHION_MNIST_CLASSES: tuple[str, ...] = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)

# Where the Debian package `dataset-fashion-mnist` installs the files.
SYSTEM_DATA_DIR = "/usr/share/datasets/fashion-mnist"
# Where keras.datasets.fashion_mnist caches them (`~` expanded at call time).
KERAS_CACHE_DIR = os.path.join("~", ".keras", "datasets", "fashion-mnist")
ENV_VAR = "CFAL_DATA_DIR"

# The official mirror. Its S3 *website* endpoint serves plain HTTP only, so
# downloads are checked against the MD5 sums published in the dataset README.
BASE_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_TIMEOUT_S = 60.0

_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_MD5 = {
    "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
}
_NUM_CLASSES = len(FASHION_MNIST_CLASSES)


def _search_dirs(data_dir: str | None) -> list[str]:
  """Candidate directories in search order, without duplicates."""
  return unique_dirs([data_dir, os.environ.get(ENV_VAR), SYSTEM_DATA_DIR,
                      os.path.expanduser(KERAS_CACHE_DIR)])


def _find_split(split: str, dirs: list[str]) -> tuple[str, str] | None:
  """First directory holding both files of `split`."""
  for d in dirs:
    paths = [find_file(d, name) for name in _FILES[split]]
    if all(paths):
      return paths[0], paths[1]
  return None


def _download_file(url: str, dest: str, md5: str) -> None:
  """Fetches `url` to `dest` atomically, verifying its MD5 sum."""
  directory = os.path.dirname(dest) or "."
  fd, tmp = tempfile.mkstemp(prefix=".partial-", dir=directory)
  try:
    digest = hashlib.md5(usedforsecurity=False)
    try:
      with os.fdopen(fd, "wb") as out, \
          urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as resp:
        while chunk := resp.read(1 << 20):
          digest.update(chunk)
          out.write(chunk)
    except urllib.error.URLError as e:
      reason = getattr(e, "reason", e)
      raise DataError(f"download of {url} failed: {reason}") from e
    except (OSError, HTTPException) as e:
      raise DataError(
          f"download of {url} failed: {str(e) or type(e).__name__}"
      ) from e
    if digest.hexdigest() != md5:
      raise DataError(
          f"download of {url} failed: MD5 {digest.hexdigest()} does not "
          f"match the published {md5}")
    os.replace(tmp, dest)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def _download(data_dir: str | None) -> str:
  """Downloads the four files missing from the target directory."""
  target = data_dir or os.path.expanduser(KERAS_CACHE_DIR)
  try:
    os.makedirs(target, exist_ok=True)
  except OSError as e:
    raise DataError(
        f"cannot create download directory {target}: "
        f"{e.strerror or e}") from e
  for names in _FILES.values():
    for name in names:
      if find_file(target, name) is None:
        _download_file(BASE_URL + name + ".gz",
                       os.path.join(target, name + ".gz"),
                       _MD5[name + ".gz"])
  return target


def load_fashion_mnist(
    split: str,
    data_dir: str | None = None,
    download: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of Fashion-MNIST from local IDX files.

  Args:
    split: `"train"` (60000 examples) or `"test"` (10000 examples).
    data_dir: Directory searched first; also where `download=True` writes.
    download: If the files are not found locally, fetch them from the
      official mirror into `data_dir` (default: the Keras cache).

  Returns:
    `(images, labels)`: uint8 `[N, 28, 28]` and int32 `[N]` in 0..9.

  Raises:
    ValueError: If `split` is not `"train"` or `"test"`.
    DataError: If the files are missing (and `download` is False), cannot
      be downloaded, or are malformed.
  """
  if split not in _FILES:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  dirs = _search_dirs(data_dir)
  found = _find_split(split, dirs)
  if found is None and download:
    found = _find_split(split, [_download(data_dir)])
  if found is None:
    raise DataError(
        f"Fashion-MNIST {split} files ({', '.join(_FILES[split])}, "
        f"optionally .gz) not found in {', '.join(dirs)}; install them "
        "with `apt-get install dataset-fashion-mnist`, or pass "
        f"download=True, or fetch them from {BASE_URL} into --data_dir "
        f"(or ${ENV_VAR})")
  images_path, labels_path = found
  return check_image_split(read_idx(images_path), read_idx(labels_path),
                           images_path, labels_path, _NUM_CLASSES)
