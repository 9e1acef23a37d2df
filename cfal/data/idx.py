"""Reader for the IDX binary format used by MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic number `00 00 <dtype code> <ndim>`, followed by
`ndim` big-endian uint32 dimension sizes, followed by the row-major payload
in big-endian byte order. Files may be gzip-compressed; compression is
detected from the gzip magic bytes, never from the file name.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from cfal.data.errors import DataError

__all__ = ["read_idx", "IDX_DTYPES"]

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

_GZIP_MAGIC = b"\x1f\x8b"


def _read_bytes(path: str) -> bytes:
  """Returns the (decompressed) contents of `path`."""
  try:
    with open(path, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise DataError(f"{path}: cannot read IDX file ({e.strerror or e})") from e
  if raw[:2] != _GZIP_MAGIC:
    return raw
  try:
    return gzip.decompress(raw)
  except (EOFError, OSError, zlib.error) as e:
    reason = str(e).strip() or type(e).__name__
    raise DataError(
        f"{path}: corrupt or truncated gzip stream ({reason})") from e


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
  """Reads an IDX file (raw or gzip-compressed) into a numpy array.

  Args:
    path: Path to the file.

  Returns:
    An array with the shape given in the header and the native-endian
    equivalent of the header's dtype (e.g. `uint8` for code 0x08).

  Raises:
    DataError: If the file cannot be read, is not IDX, uses an unknown dtype
      code, or its payload size does not match the header dimensions.
  """
  path = os.fspath(path)
  data = _read_bytes(path)
  if len(data) < 4:
    raise DataError(
        f"{path}: file too short for an IDX header ({len(data)} bytes)")
  if data[0] != 0 or data[1] != 0:
    raise DataError(
        f"{path}: bad IDX magic number 0x{data[:4].hex()} "
        "(expected 0x0000 followed by dtype and ndim bytes)")
  code, ndim = data[2], data[3]
  if code not in IDX_DTYPES:
    raise DataError(f"{path}: unknown IDX dtype code 0x{code:02x}")
  header_len = 4 + 4 * ndim
  if len(data) < header_len:
    raise DataError(
        f"{path}: truncated IDX header (ndim={ndim} needs {header_len} "
        f"bytes, file has {len(data)})")
  dims = tuple(int(d) for d in np.frombuffer(data, ">u4", ndim, offset=4))
  dtype = IDX_DTYPES[code]
  expected = math.prod(dims) * dtype.itemsize
  actual = len(data) - header_len
  if actual != expected:
    what = "truncated" if actual < expected else "trailing data in"
    raise DataError(
        f"{path}: {what} IDX payload (header dims {list(dims)} of "
        f"{dtype.name} need {expected} bytes, found {actual})")
  array = np.frombuffer(data, dtype, math.prod(dims), offset=header_len)
  return array.reshape(dims).astype(dtype.newbyteorder("="), copy=True)


def check_image_split(images: np.ndarray, labels: np.ndarray,
                      images_where: str, labels_where: str,
                      num_classes: int = 10,
                      ) -> tuple[np.ndarray, np.ndarray]:
  """Validates a 28x28 digit-style split: uint8 images, labels in [0, C).

  Returns the images and the labels as int32; any problem is one
  `DataError` line naming the file.
  """
  if images.dtype != np.uint8 or images.shape[1:] != (28, 28):
    raise DataError(
        f"{images_where}: expected uint8 images of shape [N, 28, 28], got "
        f"{images.dtype.name} {list(images.shape)}")
  if labels.dtype.kind not in "iu" or labels.ndim != 1:
    raise DataError(
        f"{labels_where}: expected integer labels of shape [N], got "
        f"{labels.dtype.name} {list(labels.shape)}")
  if labels.shape[0] != images.shape[0]:
    raise DataError(
        f"{labels_where}: {labels.shape[0]} labels for {images.shape[0]} "
        f"images in {images_where}")
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    bad = labels.min() if labels.min() < 0 else labels.max()
    raise DataError(
        f"{labels_where}: label {int(bad)} out of range "
        f"0..{num_classes - 1}")
  return images, labels.astype(np.int32)
