"""Backbones: Keras functional models from images to embeddings.

Every backbone maps float32 images `[N, H, W, C]` in [0, 1] to float32
embeddings `[N, embedding_dim]` (float32 even under a mixed-precision
global policy) and is called directly, `model(images, training=...)`,
inside an explicit GradientTape loop.

`registry.py` declares the backbones and their options without importing
TensorFlow; the names below load Keras on first use, so reading the
declarations (train.py's flag checks) stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "BACKBONES": "cfal.backbones.factory",
    "build_backbone": "cfal.backbones.factory",
    "ImagePreprocessing": "cfal.backbones.applications",
    "application_body": "cfal.backbones.applications",
    "batchnorm_layers": "cfal.backbones.applications",
    "build_application": "cfal.backbones.applications",
    "build_cct": "cfal.backbones.cct",
    "load_pretrained": "cfal.backbones.pretrained",
    "PositionEmbedding": "cfal.backbones.cct",
    "SelfAttention": "cfal.backbones.cct",
    "SequencePooling": "cfal.backbones.cct",
    "StochasticDepth": "cfal.backbones.cct",
    "build_notebook_cnn": "cfal.backbones.notebook_cnn",
    "build_prelu_cnn": "cfal.backbones.prelu_cnn",
    "build_resnet": "cfal.backbones.resnet",
    "build_seed_cnn": "cfal.backbones.seed_cnn",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
  """Imports the names in `_LAZY` on first access."""
  if name in _LAZY:
    return getattr(importlib.import_module(_LAZY[name]), name)
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
