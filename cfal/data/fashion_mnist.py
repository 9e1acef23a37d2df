"""Fashion-MNIST loader that finds local copies and never downloads implicitly.

Files are looked up, in order, in: the `data_dir` argument,
`$CFAL_DATA_DIR`, the Debian package location (`apt-get install
dataset-fashion-mnist`), and the Keras cache. Each of the four standard
files may be gzipped or raw. `download=True` fetches the files from the
official mirror with `keras.utils.get_file`, checking each one's published
MD5 sum.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error

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


def _failure(error: BaseException) -> str:
  """Why a `get_file` download failed, on one line.

  `get_file` re-raises URL errors as a bare `Exception("URL fetch failure
  on <url>: <errno> -- <reason>")`; the URLError it replaced says it
  better ("[Errno 111] Connection refused", "HTTP Error 404: Not Found").
  """
  cause = error.__cause__ or error.__context__
  if isinstance(cause, urllib.error.URLError):
    error = cause
    if not isinstance(cause, urllib.error.HTTPError):
      error = getattr(cause, "reason", cause)
  return " ".join(str(error).split()) or type(error).__name__


def _fetch(name: str, partial: str, target: str) -> None:
  """Downloads `name` into the folder `partial`, checks it, moves it to
  `target`.

  `get_file` writes straight to its destination, so a download killed
  halfway would leave a truncated file under the real name; and it keeps a
  file whose checksum failed. Downloading into `partial` (inside `target`,
  removed by the caller) means `target` only ever holds verified files.
  """
  from keras.utils import get_file  # pylint: disable=import-outside-toplevel
  url = BASE_URL + name
  md5 = _MD5[name]
  try:
    path = get_file(fname=name, origin=url, file_hash=md5,
                    hash_algorithm="md5", cache_dir=partial, cache_subdir="")
  except ValueError as e:
    if "hash" not in str(e):
      raise
    got = os.path.join(partial, name)
    got = _md5_of(got) if os.path.isfile(got) else "unknown"
    raise DataError(
        f"download of {url} failed: its MD5 {got} does not match the "
        f"published {md5} (a corrupted or changed file); retry, or fetch "
        f"the files from the mirror yourself into {target}") from e
  # get_file raises bare Exceptions for network failures; any failure
  # here is a failed download.
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f"download of {url} failed: {_failure(e)}; check the network "
        "connection (or proxy), or fetch the files from the mirror "
        f"yourself into {target}") from e
  os.replace(path, os.path.join(target, name))


def _md5_of(path: str) -> str:
  digest = hashlib.md5(usedforsecurity=False)
  with open(path, "rb") as f:
    while chunk := f.read(1 << 20):
      digest.update(chunk)
  return digest.hexdigest()


def _download(data_dir: str | None) -> str:
  """Downloads the files missing from the target directory."""
  target = data_dir or os.path.expanduser(KERAS_CACHE_DIR)
  try:
    os.makedirs(target, exist_ok=True)
    partial = tempfile.mkdtemp(prefix=".partial-", dir=target)
  except OSError as e:
    raise DataError(
        f"cannot create download directory {target}: "
        f"{e.strerror or e}") from e
  try:
    for names in _FILES.values():
      for name in names:
        if find_file(target, name) is None:
          _fetch(name + ".gz", partial, target)
  finally:
    shutil.rmtree(partial, ignore_errors=True)
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
    download: If the files are not found locally, fetch the missing ones
      from the official mirror into `data_dir` (default: the Keras cache)
      with `keras.utils.get_file`, checking their MD5 sums. Files land
      under their final names only once verified.

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
