"""Backbones: Keras functional models from images to embeddings.

Every backbone maps float32 images `[N, H, W, C]` in [0, 1] to float32
embeddings `[N, embedding_dim]` (float32 even under a mixed-precision
global policy) and is called directly, `model(images, training=...)`,
inside an explicit GradientTape loop.
"""

from __future__ import annotations

from typing import Callable

import keras

from cfal.backbones.cct import (PositionEmbedding, SelfAttention,
                                SequencePooling, StochasticDepth, build_cct)
from cfal.backbones.prelu_cnn import build_prelu_cnn
from cfal.backbones.resnet import build_resnet
from cfal.backbones.seed_cnn import build_seed_cnn

# Registry name -> builder, used by build_backbone and the tests.
BACKBONES: dict[str, Callable[..., keras.Model]] = {
    "seed_cnn": build_seed_cnn,
    "prelu_cnn": build_prelu_cnn,
    "resnet": build_resnet,
    "cct": build_cct,
}


def build_backbone(name: str, *, input_shape: tuple[int, int, int],
                   embedding_dim: int, seed: int | None = None,
                   **options) -> keras.Model:
  """Builds the backbone registered as `name`.

  Building with a seed neither reads nor advances any global random state;
  without one, Keras draws the initializer and dropout seeds from Python's
  `random` module. The layers follow the global dtype policy in force when
  the model is built, except the float32 embedding layer(s) at the end.

  Args:
    name: one of `BACKBONES`: "seed_cnn", "prelu_cnn", "resnet", "cct".
    input_shape: `(height, width, channels)` of one image.
    embedding_dim: embedding size D.
    seed: makes the initial weights (and the dropout patterns) reproducible.
    **options: the backbone's own options; see its `build_*` function.

  Raises:
    ValueError: unknown name, or an input shape, embedding size or option
      value the backbone cannot take (always a one-line message).
  """
  try:
    builder = BACKBONES[name]
  except (KeyError, TypeError):
    raise ValueError(f"unknown backbone {name!r}; valid names: "
                     f"{', '.join(BACKBONES)}") from None
  return builder(input_shape=input_shape, embedding_dim=embedding_dim,
                 seed=seed, **options)


__all__ = [
    "BACKBONES", "PositionEmbedding", "SelfAttention", "SequencePooling",
    "StochasticDepth", "build_backbone", "build_cct", "build_prelu_cnn",
    "build_resnet", "build_seed_cnn",
]
